"""A run with fault injection on produces the same images as one without,
and the same config and seed give byte-identical outputs whatever the pool and batch sizes.

DIVER on the zoo DiT (6 tiny images, 3 reverse steps) through the real runner
(``pipeline.diver.run.run_diver``): Ray Data actor pool, retries, manifest writer, verify.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.checks.verify import verify_set
from pipeline.config import config_from_dict
from pipeline.core.faults import injected_faults
from pipeline.core.write import read_manifest


def _diver(stage1_pt: Path, zoo_dir: Path, out: Path, pool: int, batch: int, **debug) -> dict[str, bytes]:
    from pipeline.diver.run import run_diver

    cfg = config_from_dict({
        "method": "diver",
        "models": {"dit": "zoo:dit", "zoo_dir": str(zoo_dir), "dtype": "float32"},
        "diver": {"input": str(stage1_pt), "resolution": 32, "num_inference_steps": 4, "start_step": 1,
                  "fusion_window": [3, 1], "gamma": 0.1, "seed": 42, "side_by_side": False},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {"recover": pool},
                "batch_sizes": {"recover": batch}, "micro_batch_sizes": {"recover": 2},
                "max_restarts": 3, "max_task_retries": 3},
        "output": {"dir": str(out)},
        "debug": debug,
    })
    summary = run_diver(cfg)
    assert summary["output"] == str(out)
    rep = verify_set(out / "diver")
    assert rep["ok"], rep["problems"]
    man = read_manifest(out / "diver")
    return {e["key"]: (out / "diver" / e["file"]).read_bytes() for e in man["images"]}


def test_faults_pool_and_batch_size_do_not_change_diver_outputs(stage1_pt, zoo_dir, tmp_path, ray_local):
    clean = _diver(stage1_pt, zoo_dir, tmp_path / "clean", pool=1, batch=4)
    assert len(clean) == 6 and len(set(clean.values())) == 6
    raised = _diver(stage1_pt, zoo_dir, tmp_path / "raise", pool=2, batch=3,
                    fail_every_n_batches=1, fault_mode="raise")
    assert injected_faults(tmp_path / "raise" / ".faults"), "no fault was injected"
    assert raised == clean
    died = _diver(stage1_pt, zoo_dir, tmp_path / "exit", pool=1, batch=2,
                  fail_every_n_batches=2, fault_mode="exit")
    assert injected_faults(tmp_path / "exit" / ".faults"), "no actor was killed"
    assert died == clean


def _edits(demo_root: Path, zoo_dir: Path, out: Path, pool: int, batch: int, **debug) -> dict[str, object]:
    from pipeline.edits.run import run_edits

    roles = ("caption", "embed", "vae", "llm", "generate")
    cfg = config_from_dict({
        "method": "edits",
        "data": {"root": str(demo_root / "train"), "class_names": str(demo_root / "class_names.json"),
                 "classes": ["0", "1"], "max_per_class": 6, "image_size": 32},
        "models": {r: f"zoo:{r}" for r in ("vlm", "clip", "vae", "sd", "llm")} | {"zoo_dir": str(zoo_dir)},
        "edits": {"ipc": 2, "k_image": 2, "k_text": 2, "num_inference_steps": 3, "caption_max_tokens": 12,
                  "max_tokens": 20, "vae_resolution": 32, "feature_image_size": 32, "caption_image_size": 32},
        "ray": {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {r: pool for r in roles},
                "batch_sizes": {r: batch for r in roles}, "max_restarts": 3, "max_task_retries": 3},
        "output": {"dir": str(out)},
        "debug": debug,
    })
    summary = run_edits(cfg, log=lambda _m: None)
    rep = verify_set(summary["output"])
    assert rep["ok"], rep["problems"]
    man = read_manifest(summary["output"])
    return {e["key"]: ((Path(summary["output"]) / e["file"]).read_bytes(), e.get("prototype_text"))
            for e in man["images"]}


@pytest.mark.slow
def test_faults_pool_and_batch_size_do_not_change_edits_outputs(demo_root, zoo_dir, tmp_path, ray_local):
    """EDITS end to end (caption, embed, cluster, prototype, generate), 3 runs: ~5 min on 2 cores."""
    clean = _edits(demo_root, zoo_dir, tmp_path / "clean", pool=1, batch=4)
    assert len(clean) == 4
    faulty = _edits(demo_root, zoo_dir, tmp_path / "faulty", pool=1, batch=4, fail_every_n_batches=1)
    assert injected_faults(tmp_path / "faulty" / ".faults"), "no fault was injected"
    assert faulty == clean
    other = _edits(demo_root, zoo_dir, tmp_path / "other", pool=2, batch=3)
    assert other == clean
