"""`semdistill plan`: counts from the config, costs from the table, hand-computed totals."""

from __future__ import annotations

import json

import pytest

from cluster.costs import COSTS, LOAD_SECONDS, load_measured
from cluster.plan import CPUS_PER_GPU, dataset_size, format_plan, make_plan
from pipeline.cli import main as cli_main
from pipeline.config import config_from_dict
from pipeline.errors import ConfigError

NONE = "/nonexistent/semdistill/data"


def _by_stage(plan):
    return {s.stage: s for s in plan.stages}


def test_edits_counts_and_hand_computed_hours(tmp_path):
    cfg = config_from_dict({"method": "edits", "data": {"root": NONE},
                            "models": {"vlm_backend": "vllm", "llm_backend": "vllm"},
                            "edits": {"ipc": 10, "k_image": 5, "num_inference_steps": 50, "strength": 0.7}})
    plan = make_plan(cfg, gpus=4, images=130_000, classes=100, cost_files=[str(tmp_path / "none.json")])
    st = _by_stage(plan)
    assert list(st) == ["caption", "embed", "cluster", "vae", "llm", "generate"]
    assert st["caption"].items == 130_000 and st["embed"].items == 130_000
    assert st["cluster"].items == 100 and st["cluster"].workers == 4 * CPUS_PER_GPU
    assert st["vae"].items == 100 * 10 * 5
    assert st["llm"].items == 1000
    assert st["generate"].items == 1000 * 35  # 50 steps x strength 0.7 per image
    c = COSTS["caption.vllm"].seconds
    assert st["caption"].gpu_hours == pytest.approx((130_000 * c + LOAD_SECONDS["caption"] * 4) / 3600)
    assert st["caption"].wall_seconds == pytest.approx(LOAD_SECONDS["caption"] + 130_000 * c / 4)
    g = COSTS["generate.step"].seconds
    assert st["generate"].wall_seconds == pytest.approx(LOAD_SECONDS["generate"] + 35_000 * g / 4)
    assert st["cluster"].gpu_hours == 0.0
    assert plan.gpu_hours == pytest.approx(sum(s.gpu_hours for s in plan.stages))
    # twice the GPUs: the work part of the wall time halves, GPU hours of work stay
    plan8 = make_plan(cfg, gpus=8, images=130_000, classes=100, cost_files=[str(tmp_path / "none.json")])
    w4, w8 = st["caption"].wall_seconds - 90, _by_stage(plan8)["caption"].wall_seconds - 90
    assert w8 == pytest.approx(w4 / 2)


def test_backend_choice_changes_the_cost_row():
    base = {"method": "edits", "data": {"root": NONE}}
    tf = make_plan(config_from_dict(base), 1, 1000, 10)
    vl = make_plan(config_from_dict({**base, "models": {"vlm_backend": "vllm", "llm_backend": "openai"}}), 1,
                   1000, 10)
    assert _by_stage(tf)["caption"].seconds_per_unit == COSTS["caption.transformers"].seconds
    assert _by_stage(vl)["caption"].seconds_per_unit == COSTS["caption.vllm"].seconds
    assert _by_stage(vl)["llm"].resource == "external" and _by_stage(vl)["llm"].gpu_hours == 0.0


def test_diver_steps_and_paper_cost():
    cfg = config_from_dict({"method": "diver", "data": {"root": NONE},
                            "diver": {"num_inference_steps": 50, "start_step": 25}})
    plan = make_plan(cfg, gpus=2, images=10_000, classes=1000)
    (rec,) = plan.stages
    assert rec.items == 10_000 * 25 and rec.source in ("paper", "measured")
    # paper: 2.48 s/image over 50 steps -> 25 steps cost 1.24 s/image
    if rec.source == "paper":
        assert rec.seconds_per_unit * 25 == pytest.approx(1.24)
    inv = make_plan(config_from_dict({"method": "diver", "data": {"root": NONE},
                                      "diver": {"inheritance": "ddim_inversion"}}), 2, 10_000, 1000)
    assert inv.stages[0].items == 2 * rec.items
    dm = make_plan(config_from_dict({"method": "diver", "data": {"root": NONE},
                                     "diver": {"stage1": {"ipc": 1, "iterations": 100}}}), 1, None, 10)
    st = _by_stage(dm)
    assert st["stage1_dm"].items == 100 * 10 and st["recover"].items == 10 * 1 * 25


def test_measured_costs_replace_estimates(tmp_path):
    f = tmp_path / "gpu.json"
    f.write_text(json.dumps({"device": "NVIDIA H200", "costs": {"recover.step": 0.01, "bogus": 3,
                                                                "embed": -1}}))
    table, used = load_measured([f])
    assert used == [str(f)]
    assert table["recover.step"].seconds == 0.01 and table["recover.step"].source == "measured"
    assert table["recover.step"].device == "NVIDIA H200"
    assert table["embed"] == COSTS["embed"]  # non-positive values are ignored
    cfg = config_from_dict({"method": "diver", "data": {"root": NONE}})
    plan = make_plan(cfg, 1, 100, 10, cost_files=[str(f)])
    assert plan.stages[0].wall_seconds == pytest.approx(LOAD_SECONDS["recover"] + 100 * 25 * 0.01)
    assert "measured rows from" in format_plan(plan)


def test_dataset_is_counted_when_readable(demo_root):
    cfg = config_from_dict({"method": "edits", "data": {"root": str(demo_root / "train")}})
    n, c, src = dataset_size(cfg, None, None)
    assert (n, c) == (1438, 10) and "counted" in src
    n, c, src = dataset_size(config_from_dict({"data": {"root": NONE}}), None, None)
    assert (n, c) == (1_281_167, 1000) and "ImageNet-1K" in src
    n, c, _ = dataset_size(config_from_dict({"data": {"root": NONE, "classes": ["a", "b"],
                                                      "max_per_class": 7}}),
                           None, None)
    assert (n, c) == (14, 2)


def test_bad_inputs():
    with pytest.raises(ConfigError, match="--gpus"):
        make_plan(config_from_dict({"method": "diver"}), 0)
    with pytest.raises(ConfigError, match="method"):
        make_plan(config_from_dict({"method": "none"}), 1)


def test_cli_plan_text_and_json(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method: edits\ndata: {{root: {NONE}}}\n")
    assert cli_main(["plan", str(cfg), "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    assert "1,281,167 real images" in out and "caption" in out and "total" in out
    assert cli_main(["plan", str(cfg), "edits.ipc=1", "--gpus", "8", "--json", "--images", "1000",
                     "--classes", "10"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["images"] == 1000 and d["classes"] == 10 and d["gpus"] == 8
    gen = next(s for s in d["stages"] if s["stage"] == "generate")
    assert gen["items"] == 10 * 1 * 35
    assert d["total_gpu_hours"] == pytest.approx(sum(s["gpu_hours"] for s in d["stages"]))
