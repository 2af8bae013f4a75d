"""Ray Tune sweep: two trials finish, the better one is picked, files and plot are written."""

import json
from pathlib import Path

import pytest
import yaml

from pipeline.config import config_from_dict, load_config
from pipeline.errors import ConfigError
from pipeline.run import run_config
from tuning.sweep import apply_params, run_sweep, search_space

REPO = Path(__file__).resolve().parents[2]


def _cfg(demo_root, out, **sweep):
    return config_from_dict({
        "name": "t", "method": "none",
        "data": {"root": str(demo_root / "train"), "val_root": str(demo_root / "val"), "image_size": 32},
        "eval": {"students": ["convnet"], "student_kwargs": {"convnet": {"width": 16}}, "epochs": 4},
        "sweep": {"params": {"eval.lr": [0.0, 0.02]}, "trial_cpus": 1, **sweep},
        "output": {"dir": str(out)},
    })


def test_two_trial_sweep_picks_the_better_one(demo_root, ray_local, tmp_path):
    summary = run_sweep(_cfg(demo_root, tmp_path), run_config, log=lambda _m: None)
    trials = summary["trials"]
    assert len(trials) == 2 and all(t["error"] is None for t in trials)
    by_lr = {t["params"]["eval.lr"]: t["mean_top1"] for t in trials}
    assert by_lr[0.02] > by_lr[0.0] + 20  # lr 0 never leaves the random init (~chance)
    assert summary["best"]["params"] == {"eval.lr": 0.02}
    sweep_dir = tmp_path / "sweep"
    saved = json.loads((sweep_dir / "sweep_results.json").read_text())
    assert saved["best"]["mean_top1"] == max(by_lr.values())
    best_cfg = load_config(sweep_dir / "best_config.yaml")
    assert best_cfg.eval.lr == 0.02 and best_cfg.sweep is None
    assert (sweep_dir / "sweep.png").stat().st_size > 1000
    assert "**best**" in (sweep_dir / "sweep.md").read_text()


def test_search_space_and_param_errors(demo_root, tmp_path):
    cfg = _cfg(demo_root, tmp_path, params={"diver.gamma": [0.0, 0.1], "edits.tau": {"loguniform": [0.001, 0.1]}},
               search="random", num_samples=3)
    names, space = search_space(cfg.sweep)
    assert names == ["diver.gamma", "edits.tau"] and set(space) == {"p0", "p1"}
    assert apply_params(cfg, {"diver.gamma": 0.3, "diver.fusion_window": [45, 20]}).diver.fusion_window == (45, 20)
    with pytest.raises(ConfigError, match="random"):
        search_space(_cfg(demo_root, tmp_path, params={"edits.tau": {"uniform": [0.0, 1.0]}}).sweep)
    with pytest.raises(ConfigError, match="empty"):
        search_space(_cfg(demo_root, tmp_path, params={}).sweep)
    with pytest.raises(ConfigError, match="gama"):  # misspelt key: rejected before any trial runs
        run_sweep(_cfg(demo_root, tmp_path, params={"diver.gama": [0.1]}), run_config)
    with pytest.raises(ConfigError):
        apply_params(cfg, {"diver.start_step": 60})  # start_step must stay below num_inference_steps


def test_demo_sweep_config_is_valid():
    cfg = load_config(REPO / "configs" / "demo_sweep.yaml")
    assert cfg.sweep is not None and cfg.sweep.params
    raw = yaml.safe_load((REPO / "configs" / "demo_sweep.yaml").read_text())
    assert set(raw["sweep"]["params"]) <= {"diver.gamma", "diver.start_step", "diver.fusion_window",
                                            "edits.guidance_scale", "edits.strength", "edits.tau"}
