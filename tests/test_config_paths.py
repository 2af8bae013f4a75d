"""Config paths are resolved once, against the caller's working directory, when a config is loaded."""

from pathlib import Path

import pytest
import yaml

from pipeline.config import load_config
from pipeline.errors import ConfigError
from pipeline.run import distilled_set


def _write(tmp_path: Path, raw: dict) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def test_relative_paths_become_absolute_against_the_cwd(tmp_path, monkeypatch):
    here = tmp_path / "project"
    (here / "models" / "my_vae").mkdir(parents=True)
    monkeypatch.chdir(here)
    cfg_file = _write(here, {
        "data": {"root": "data/train", "val_root": "./data/val", "class_names": "data/names.json"},
        "models": {"vae": "models/my_vae", "sd": "./sd_missing", "dit": "zoo:dit",
                   "clip": "openai/clip-vit-large-patch14"},
        "diver": {"input": "runs/demo/diver/ipc10/stage1"},
        "edits": {"finetune": {"storage_path": "s3://bucket/ckpt", "output": "ft"}},
        "output": {"dir": "runs/out"},
    })
    cfg = load_config(cfg_file.name)
    monkeypatch.chdir(tmp_path)  # a Tune trial runs elsewhere: the values must not depend on its cwd
    assert cfg.data.root == str(here / "data" / "train")
    assert cfg.data.val_root == str(here / "data" / "val")
    assert cfg.data.class_names == str(here / "data" / "names.json")
    assert cfg.diver.input == str(here / "runs" / "demo" / "diver" / "ipc10" / "stage1")
    assert cfg.output.dir == str(here / "runs" / "out")
    assert cfg.edits.finetune.output == str(here / "ft")
    assert cfg.models.vae == str(here / "models" / "my_vae")  # an existing local folder
    assert cfg.models.sd == str(here / "sd_missing")  # meant as a path: ./
    assert cfg.models.dit == "zoo:dit" and cfg.models.clip == "openai/clip-vit-large-patch14"
    assert cfg.edits.finetune.storage_path == "s3://bucket/ckpt"


def test_overrides_are_resolved_too_and_submit_keeps_them_relative(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg_file = _write(tmp_path, {"data": {"root": "d"}})
    assert load_config(cfg_file, ["output.dir=o"]).output.dir == str(tmp_path / "o")
    kept = load_config(cfg_file, ["output.dir=o"], resolve=False)
    assert kept.output.dir == "o" and kept.data.root == "d"


def test_a_sweep_trial_evaluates_the_recovered_set_not_the_run_root(tmp_path):
    summary = {"method": "diver", "output": str(tmp_path),
               "sets": {"stage1": {"recovered": str(tmp_path / "stage1" / "diver")}}}
    assert distilled_set(summary) == str(tmp_path / "stage1" / "diver")
    assert distilled_set({"method": "edits",
                          "output": str(tmp_path / "distilled")}) == str(tmp_path / "distilled")
    two = {"output": str(tmp_path), "sets": {"ipc1": {"recovered": "a"}, "ipc10": {"recovered": "b"}}}
    with pytest.raises(ConfigError, match="ipc1, ipc10"):
        distilled_set(two)
