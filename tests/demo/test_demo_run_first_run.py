"""First runs and the terminal: a demo config writes its own data; only stage lines and bars reach the
terminal."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.config import load_config

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("method", ["edits", "diver"])
def test_run_config_writes_the_demo_digits_before_the_runner(method, tmp_path, monkeypatch):
    """`semdistill run configs/demo_<method>.yaml` on a fresh checkout: data/digits is written, then the run
    starts."""
    import pipeline.run as run_mod

    root = tmp_path / "fresh" / "data" / "digits"
    cfg = load_config(REPO / "configs" / f"demo_{method}.yaml",
                      [f"data.root={root / 'train'}", f"data.val_root={root / 'val'}",
                       f"data.class_names={root / 'class_names.json'}", f"output.dir={tmp_path / 'out'}"])
    seen: dict[str, bool] = {}
    def fake_runner(c, from_stage=None):
        return seen.update(train=Path(c.data.root).is_dir()) or {"output": "x"}

    monkeypatch.setattr(run_mod, "method_runner", lambda m: fake_runner if m == method else None)
    run_mod.run_config(cfg)
    assert seen == {"train": True}
    assert sorted(p.name for p in (root / "train").iterdir()) == [str(c) for c in range(10)]
    assert len(list((root / "val" / "3").glob("*.png"))) > 20 and (root / "class_names.json").is_file()


def test_a_real_config_with_a_missing_root_is_left_to_the_reader(tmp_path):
    from pipeline.core.digits import ensure_demo_data

    cfg = load_config(REPO / "configs" / "demo_edits.yaml",
                      [f"data.root={tmp_path / 'imagenet' / 'train'}", "models.sd=some/hub-model"])
    assert ensure_demo_data(cfg, log=lambda _m: None) is False
    assert not (tmp_path / "imagenet").exists()


QUIET = """
import os, sys, warnings
from pipeline.core.console import quiet_terminal, stage, progress
with quiet_terminal(sys.argv[1]):
    print("library chatter")
    os.system("echo child process noise; echo child stderr 1>&2")
    warnings.warn("dtype is deprecated")
    stage("[1/2] first stage")
    for i in range(1, 4):
        progress("work", i, 3)
    stage("[2/2] second stage")
print("after the block")
"""


def test_quiet_terminal_shows_stage_lines_and_bars_only(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-c", QUIET, str(tmp_path / "logs")], capture_output=True,
                          text=True, env=env, timeout=120, check=True)
    term = proc.stdout + proc.stderr
    assert "[1/2] first stage" in term and "[2/2] second stage" in term and "after the block" in term
    assert "3/3" in term  # the tqdm bar of the stage
    for noise in ("library chatter", "child process noise", "child stderr", "deprecated"):
        assert noise not in term
    log = (tmp_path / "logs" / "run.log").read_text()
    for line in ("library chatter", "child process noise", "child stderr", "dtype is deprecated",
                 "[1/2] first stage"):
        assert line in log


def test_outside_a_quiet_block_stage_prints_and_progress_is_silent(capsys):
    from pipeline.core.console import progress, stage

    stage("a stage")
    progress("bar", 1, 2)
    assert capsys.readouterr().out == "a stage\n"


def test_demo_ray_session_keeps_worker_output_off_the_terminal(tmp_path):
    from pipeline.demo.run import method_config

    cfg = method_config("diver", tmp_path / "out", tmp_path / "data", quick=False, logs=tmp_path / "logs")
    assert cfg.ray.log_to_driver is False and cfg.ray.logs_dir == str(tmp_path / "logs")
    assert method_config("diver", tmp_path / "out", tmp_path / "data", quick=False).ray.log_to_driver is True
