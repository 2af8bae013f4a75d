"""Issue 6 "done when": a run with fault injection on produces the same images as one without,
and the same config and seed give byte-identical outputs whatever the pool and batch sizes.

DIVER on the zoo DiT (6 tiny images, 3 reverse steps) through the real runner
(``pipeline.diver.run_diver``): Ray Data actor pool, retries, manifest writer, verify.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.config import config_from_dict
from pipeline.faults import injected_faults
from pipeline.verify import verify_set
from pipeline.write import read_manifest


@pytest.fixture(scope="module")
def stage1_pt(tmp_path_factory) -> Path:
    """A classical distilled set as a ``.pt``: 3 classes x 2 images, 32 px, values in [0, 1]."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("stage1") / "set.pt"
    torch.save({"images": torch.rand(6, 3, 32, 32, generator=g), "labels": torch.tensor([0, 0, 1, 1, 2, 2]),
                "classes": ["3", "5", "7"]}, path)
    return path


def _diver(stage1_pt: Path, zoo_dir: Path, out: Path, pool: int, batch: int, **debug) -> dict[str, bytes]:
    from pipeline.diver import run_diver

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
