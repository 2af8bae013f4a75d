"""The README's command-line block, run exactly as written, in order, from a fresh working directory."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FAST = 3  # --help, data demo, data check: seconds; the rest trains and distils (slow)


def readme_commands() -> list[str]:
    text = (REPO / "README.md").read_text()
    block = text.split("## The command line", 1)[1].split("```", 2)[1]
    return [line.split("  #")[0].strip() for line in block.splitlines() if line.startswith("semdistill")]


def run_in(cwd: Path, command: str, env: dict[str, str], timeout: int) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "semdistill"
    return subprocess.run([str(exe), *command.split()[1:]], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, check=False)


@pytest.fixture
def fresh(tmp_path):
    shutil.copytree(REPO / "configs", tmp_path / "configs")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "SEMDISTILL_ZOO_DIR": str(tmp_path / "zoo")}
    return tmp_path, env


def test_the_block_lists_the_commands_it_promises():
    commands = readme_commands()
    assert commands[0] == "semdistill --help" and len(commands) == 10
    assert not [c for c in commands if "..." in c or re.search(r"[A-Z]{3,}", c)]  # no placeholders


def test_the_first_commands_run_as_written(fresh):
    cwd, env = fresh
    for command in readme_commands()[:FAST]:
        proc = run_in(cwd, command, env, timeout=300)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    assert len(list((cwd / "data" / "digits" / "train").rglob("*.png"))) > 1000


@pytest.mark.slow
def test_every_command_runs_as_written(fresh):
    cwd, env = fresh
    for command in readme_commands():
        proc = run_in(cwd, command, env, timeout=3600)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert (cwd / "runs" / "d1" / "ipc10" / "diver" / "manifest.json").is_file()
    assert list((cwd / "exports" / "d1" / "data").glob("*.parquet"))
    assert (cwd / "runs" / "demo_edits" / "distilled" / "manifest.json").is_file()
    assert list((cwd / "exports" / "prototypes" / "data").glob("*.parquet"))
