"""`semdistill run` on the terminal: one line per stage and a bar; the rest in <output.dir>/logs/run.log."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# the runner is replaced by one that talks as the methods do: chatter on stdout and stderr (Ray, libraries),
# EDITS's stage lines through the log function it is given
SCRIPT = textwrap.dedent('''
    import sys
    import pipeline.run as run_mod

    def fake_run_config(cfg, from_stage=None, log=None):
        print("INFO worker.py -- Started a local Ray instance.")
        print("a library warning", file=sys.stderr)
        say = log or print
        say("[edits] caption: done in 1.0 s")
        say("edits: 3 images cached")
        sets = {"ipc1": {"images": 10, "recovered": cfg.output.dir + "/ipc1/diver"}}
        return {"method": cfg.method, "output": cfg.output.dir, "sets": sets if cfg.method == "diver" else {}}

    run_mod.run_config = fake_run_config
    from pipeline.cli import main
    sys.exit(main(sys.argv[1:]))
''')


def _run(tmp_path: Path, method: str, *extra: str) -> tuple[subprocess.CompletedProcess, Path]:
    out = tmp_path / "out"
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method: {method}\ndata:\n  root: {tmp_path / 'train'}\noutput:\n  dir: {out}\n")
    proc = subprocess.run([sys.executable, "-c", SCRIPT, "run", str(cfg), *extra], cwd=REPO, text=True,
                          capture_output=True, timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)},
                          check=False)
    assert proc.returncode == 0, proc.stderr
    return proc, out


def test_run_shows_stage_lines_and_keeps_the_rest_in_the_log(tmp_path):
    proc, out = _run(tmp_path, "edits")
    assert proc.stdout.splitlines() == [f"logs: {out / 'logs'}", "[edits] caption: done in 1.0 s",
                                        f"done: {out}"]
    assert proc.stderr == ""
    log = (out / "logs" / "run.log").read_text()
    for line in ("Started a local Ray instance", "a library warning", "edits: 3 images cached",
                 "[edits] caption: done in 1.0 s"):
        assert line in log


def test_run_names_each_diver_set_it_wrote(tmp_path):
    proc, out = _run(tmp_path, "diver")
    assert proc.stdout.splitlines()[-2:] == [f"diver ipc1: 10 images -> {out}/ipc1/diver", f"done: {out}"]


def test_run_verbose_prints_everything_and_writes_no_log(tmp_path):
    proc, out = _run(tmp_path, "edits", "--verbose")
    assert "Started a local Ray instance" in proc.stdout and "edits: 3 images cached" in proc.stdout
    assert "a library warning" in proc.stderr and proc.stdout.rstrip().endswith(f"done: {out}")
    assert not (out / "logs").exists()


def test_run_help_explains_verbose():
    proc = subprocess.run([sys.executable, "-m", "pipeline.cli", "run", "--help"], cwd=REPO, text=True,
                          capture_output=True, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)},
                          check=True)
    assert "--verbose" in proc.stdout and "logs/run.log" in proc.stdout
