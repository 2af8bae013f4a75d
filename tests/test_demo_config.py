"""`semdistill demo`: each method's settings are its demo config plus the demo's IPC and trims."""

from __future__ import annotations

from pathlib import Path

import yaml

from pipeline.demo_run import DEMO_TRIM, IPC, method_config

REPO = Path(__file__).resolve().parents[1]


def test_edits_gets_ipc_10_and_the_trims_merged_into_its_demo_config(tmp_path):
    own = yaml.safe_load((REPO / "configs" / "demo_edits.yaml").read_text())
    cfg = method_config("edits", tmp_path / "out", tmp_path / "data", quick=False)
    assert cfg.method == "edits" and cfg.edits.ipc == IPC == 10
    assert cfg.edits.num_inference_steps == DEMO_TRIM["edits"]["num_inference_steps"] == 25
    assert cfg.edits.finetune.max_steps == 160 and cfg.edits.finetune.vae_steps == 100
    assert cfg.edits.finetune.learning_rate == own["edits"]["finetune"]["learning_rate"]  # merged, not replaced
    assert cfg.ray.batch_sizes["llm"] == 20 and cfg.ray.batch_sizes["generate"] == own["ray"]["batch_sizes"]["generate"]
    assert cfg.data.root == str(tmp_path / "data" / "train") and cfg.output.dir == str(tmp_path / "out" / "edits")


def test_diver_gets_one_dm_set_at_ipc_10_and_quick_shrinks_further(tmp_path):
    cfg = method_config("diver", tmp_path / "out", tmp_path / "data", quick=False)
    assert cfg.diver.stage1.ipc == 10 and cfg.diver.stage1.iterations == 150
    quick = method_config("diver", tmp_path / "out", tmp_path / "data", quick=True)
    assert quick.diver.stage1.iterations == 20
    edits_quick = method_config("edits", tmp_path / "out", tmp_path / "data", quick=True)
    assert edits_quick.edits.num_inference_steps == 10 and edits_quick.models.llm == "zoo:llm"
