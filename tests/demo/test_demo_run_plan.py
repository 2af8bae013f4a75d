"""The demo's plan: which sets, IPCs, distillation seeds, evaluation seeds and students the quick, default
(`make demo`) and full (`demo --full`) runs make, and how their rows are keyed for paired claims."""

from __future__ import annotations

import contextlib
import json
from collections import Counter
from pathlib import Path

import pytest

import pipeline.demo.run as demo
import pipeline.diver.run as diver_run
import pipeline.edits.run as edits_run
import tuning.evaluate as te
from pipeline import report
from pipeline.config import EvalConfig
from pipeline.core import ray_setup
from pipeline.demo.recognition import Judge, Recognition
from pipeline.demo.run import (
    STAGE1_OF,
    SetSpec,
    demo_plan,
    diver_seed_config,
    edits_seed_config,
    eval_config,
    evaluate_demo,
    method_config,
    planned_rows,
    tag_rows,
)
from pipeline.errors import ConfigError
from tuning import baselines


def _names(plan) -> list[str]:
    return [s.name for s in plan.sets()]


def test_make_demo_runs_the_headline_ipc_1_with_three_evaluation_seeds():
    """IPC 10 as well would not fit make demo's 12 minutes on 2 cores (DEMO_IPCS's estimate): it runs in
    --full."""
    plan = demo_plan()
    assert plan.ipcs == (1,) and plan.distill_seeds == (0,) and plan.eval_seeds >= 3
    assert plan.students == ("convnet", "resnet18", "lenet") and not plan.ablations
    assert _names(plan) == ["random_real_ipc1", "dm_ipc1", "diver_ipc1", "edits_ipc1"]
    assert {s.stage1 for s in plan.sets() if s.method == "diver"} == {"dm"}
    for ipc in plan.ipcs:
        assert eval_config(plan, ipc).repeats == plan.eval_seeds


def test_quick_demo_is_one_ipc_one_seed_of_each_method():
    plan = demo_plan(quick=True)
    assert plan.ipcs == (1,) and plan.eval_seeds == 1 and plan.distill_seeds == (0,)
    assert _names(plan) == ["random_real_ipc1", "dm_ipc1", "diver_ipc1", "edits_ipc1"]
    assert eval_config(plan, 1, quick=True).epochs == 4


def test_full_demo_distils_every_method_twice_pairs_six_seeds_and_adds_gradient_matching():
    plan = demo_plan(full=True)
    assert (plan.eval_seeds * len(plan.distill_seeds) >= 5 and len(plan.distill_seeds) >= 2
            and plan.ipcs == (1, 10))
    assert plan.students == ("convnet", "resnet18", "lenet") and plan.stage1 == {"dm": (1, 10), "gm": (1,)}
    assert not plan.ablations and plan.baselines == ("random_real",)
    per = Counter((s.method, s.ipc) for s in plan.sets())
    assert per == {(m, ipc): 2 for m in ("random_real", "dm", "diver", "edits") for ipc in (1, 10)} | {
        ("gm", 1): 2, ("diver_gm", 1): 2}


def test_ablations_need_full(tmp_path):
    with pytest.raises(ConfigError, match="--ablations adds to --full"):
        demo_plan(ablations=True)
    with pytest.raises(ConfigError, match="run `semdistill demo --full --ablations`"):
        demo.run_demo(tmp_path / "out", ablations=True)
    assert not (tmp_path / "out").exists()


def test_full_demo_with_ablations_adds_the_coresets_full_real_and_the_ablations_at_seed_0():
    plan = demo_plan(full=True, ablations=True)
    specs = plan.sets()
    assert len({s.name for s in specs}) == len(specs)  # one folder and key per set
    per = Counter((s.method, s.ipc) for s in specs)
    for method in ("random_real", "dm", "diver", "edits"):
        assert per[(method, 1)] == per[(method, 10)] == len(plan.distill_seeds), method
    assert per[("herding", 1)] == per[("k_center", 10)] == 1  # coresets: not a claim's set, seed 0 only
    assert per[("gm", 1)] == per[("diver_gm", 1)] == len(plan.distill_seeds) and ("gm", 10) not in per
    assert per[("full_real", None)] == 1
    for ablation in ("diver_gamma0", "edits_no_text"):  # the ablations: distillation seed 0 only, both IPCs
        assert sorted((s.ipc, s.distill_seed) for s in specs if s.method == ablation) == [(1, 0), (10, 0)]
    assert {s.method: s.stage1 for s in specs if s.stage1} == STAGE1_OF == {
        "diver": "dm", "diver_gm": "gm", "diver_gamma0": "dm"}


def test_set_names_carry_the_ipc_and_a_nonzero_distillation_seed():
    assert SetSpec("dm", 1, 0).name == "dm_ipc1" and SetSpec("diver", 10, 1).name == "diver_ipc10_d1"
    assert SetSpec("full_real", None, 0).name == "full_real"


def test_distillation_seed_shifts_each_methods_own_seed(tmp_path):
    out, data = tmp_path / "out", tmp_path / "data"
    base = method_config("diver", out, data, quick=False, ipcs=(1, 10))
    dm1 = diver_seed_config(base, out, "dm", (1, 10), 1)
    assert dm1.diver.stage1.seed == base.diver.stage1.seed + 1 and dm1.diver.seed == base.diver.seed + 1
    assert dm1.diver.stage1.ipcs == [1, 10] and dm1.output.dir == str(out / "diver_d1")
    assert diver_seed_config(base, out, "dm", (1, 10), 0).output.dir == str(out / "diver")
    gm = diver_seed_config(base, out, "gm", (1,), 0)
    s1 = gm.diver.stage1
    assert (s1.method, s1.ipcs, s1.init, s1.lr_img, s1.outer_loop,
            s1.inner_loop) == ("gm", [1], "noise", None,
                                                                                        None, None)
    assert (s1.net_width, s1.net_depth) == (64, 3) and gm.output.dir == str(out / "diver_gm")  # DM's proxy

    e_base = method_config("edits", out, data, quick=False)
    first = edits_seed_config(e_base, out, 1, 0)
    assert (first.edits.ipc == 1 and first.edits.seed == e_base.edits.seed
            and first.output.dir == str(out / "edits_ipc1"))
    (out / "edits_ipc1" / "artefacts" / "captions").mkdir(parents=True)
    later = edits_seed_config(e_base, out, 10, 1, first=first)
    assert later.edits.ipc == 10 and later.edits.seed == e_base.edits.seed + 1
    assert later.output.dir == str(out / "edits_ipc10_d1")
    assert later.edits.finetune.output == str(out / "edits_ipc1" / "finetuned_sd")  # one fine-tune for all
    assert (out / "edits_ipc10_d1" / "artefacts" / "captions").is_dir()  # captions and features reused


def test_rows_are_keyed_by_distillation_seed_so_seeds_do_not_overwrite(monkeypatch, tmp_path):
    from pipeline.config import EvalConfig

    specs = {s.name: s for s in (SetSpec("dm", 1, 0), SetSpec("dm", 1, 1),
                                 SetSpec("diver", 1, 1, stage1="dm"))}
    sets = {n: tmp_path / n for n in specs}
    for d in sets.values():
        d.mkdir()

    def fake_eval(todo, val, ev, out, methods=None, **kw):
        return [{"dataset": "digits", "method": methods[n], "ipc": 1, "student": "resnet18",
                 "student_kwargs": {},
                 "protocol": "hard", "augment": ev.augment, "top1_mean": 50.0, "top1_std": 0.0, "repeats": 3,
                 "in_mean": True, "distilled": str(d), "runs": [{"seed": s, "final": 50.0} for s in range(3)]}
                for n, d in todo.items()]

    monkeypatch.setattr(te, "evaluate_sets", fake_eval)
    rows = evaluate_demo(sets, tmp_path, tmp_path, EvalConfig(students=["resnet18"], repeats=3), None,
                         specs=specs)
    got = sorted((r["method"], r["distill_seed"], r.get("stage1")) for r in rows)
    assert got == [("diver", 1, "dm"), ("dm", 0, None), ("dm", 1, None)]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert sorted((r["method"], r["distill_seed"]) for r in saved) == [("diver", 1), ("dm", 0), ("dm", 1)]
    stale = {**saved[0], "method": "edits", "distill_seed": 0}  # a row of another plan's set
    assert planned_rows(saved + [stale], specs) == saved


def test_tag_rows_matches_rows_to_sets_by_folder():
    specs = {"gm_ipc1_d1": SetSpec("gm", 1, 1), "diver_gm_ipc1_d1": SetSpec("diver_gm", 1, 1, stage1="gm")}
    sets = {n: Path("/x") / n for n in specs}
    rows = tag_rows([{"distilled": "/x/diver_gm_ipc1_d1"}, {"distilled": "/elsewhere"}], sets, specs)
    assert rows == [{"distilled": "/x/diver_gm_ipc1_d1", "distill_seed": 1, "stage1": "gm"},
                    {"distilled": "/elsewhere"}]


def _fake_pipeline(monkeypatch, tmp_path):
    """Every heavy step of the demo replaced by a fake that makes an empty folder; returns the evaluations
    asked."""
    asked: list[tuple[list[str], int, int, str]] = []

    def folder(p: Path) -> str:
        p.mkdir(parents=True, exist_ok=True)
        return str(p)

    def fake_diver(cfg):
        out = Path(cfg.output.dir)
        if cfg.diver.stage1 is None:  # the gamma-0 ablation from a given set
            return {"sets": {"input": {"stage1": cfg.diver.input, "recovered": folder(out / "diver")}}}
        return {"sets": {f"ipc{k}": {"stage1": folder(out / f"ipc{k}" / "stage1"),
                                     "recovered": folder(out / f"ipc{k}" / "diver")}
                         for k in cfg.diver.stage1.ipcs}}

    def fake_eval(todo, val, ev, out, methods=None, **kw):
        asked.append((sorted(todo), ev.epochs, ev.repeats, ev.augment))
        return [{"dataset": "digits", "method": methods[n], "ipc": int(n.split("_ipc")[1].split("_")[0])
                 if "_ipc" in n else 146, "student": st, "student_kwargs": {}, "protocol": "hard",
                 "augment": ev.augment, "in_mean": st != "convnet", "top1_mean": 50.0, "top1_std": 0.0,
                 "repeats": ev.repeats, "distilled": str(d),
                 "runs": [{"seed": ev.seed + r, "final": 50.0} for r in range(ev.repeats)]}
                for n, d in todo.items() for st in ev.students]

    monkeypatch.setattr(demo, "prepare_demo", lambda out: {"data": folder(tmp_path / "data"), "zoo": "z"})
    monkeypatch.setattr(baselines, "build_baseline",
                        lambda name, real, out, ipc, seed=0, **kw: {"output": folder(Path(out))})
    monkeypatch.setattr(ray_setup, "ray_session", lambda cfg: contextlib.nullcontext())
    monkeypatch.setattr(diver_run, "run_diver", fake_diver)
    monkeypatch.setattr(edits_run, "run_edits", lambda cfg,
                        log=None: {"output": folder(Path(cfg.output.dir) / "d")})
    monkeypatch.setattr(te, "evaluate_sets", fake_eval)
    monkeypatch.setattr(report, "write_report", lambda out, rows,
                        **kw: {"report_html": str(out / "report.html")})
    monkeypatch.setattr(demo, "cached_judge", lambda data, folder: Judge(None, ["0"], 99.0))
    monkeypatch.setattr(demo, "recognise", lambda judge, set_dir: Recognition(100.0, {"0": 100.0}, 99.5, 1))
    return asked


def test_make_demo_evaluates_the_plans_sets_at_ipc_1_with_its_settings(monkeypatch, tmp_path):
    asked = _fake_pipeline(monkeypatch, tmp_path)
    summary = demo._run_demo(tmp_path / "out", quick=False, full=False, logs=tmp_path / "logs")
    assert asked == [(sorted(_names(demo_plan())), demo.DEMO_EVAL_BY_IPC[1]["epochs"], 3, "dsa")]
    assert set(summary["set_specs"]) == set(_names(demo_plan())) and not summary["skipped"]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert {(r["method"], r["ipc"], r["distill_seed"]) for r in rows} == {
        (m, 1, 0) for m in ("random_real", "dm", "diver", "edits")}
    assert {r["stage1"] for r in rows if r["method"] == "diver"} == {"dm"}


def test_full_demo_evaluates_both_ipcs_both_distillation_seeds_and_ars_at_seed_0(monkeypatch, tmp_path):
    asked = _fake_pipeline(monkeypatch, tmp_path)
    plan = demo_plan(full=True, ablations=True)
    summary = demo._run_demo(tmp_path / "out", quick=False, full=True, logs=tmp_path / "logs", ablations=True)
    assert set(summary["set_specs"]) == set(_names(plan)) and not summary["skipped"]
    by_ipc = {1: [n for n in _names(plan) if "_ipc1" in n and "_ipc10" not in n],
              10: [n for n in _names(plan) if "_ipc10" in n]}
    seed0 = {k: [n for n in v if not n.endswith("_d1")] for k, v in by_ipc.items()}
    assert asked == [(sorted(by_ipc[1]), demo.DEMO_EVAL_BY_IPC[1]["epochs"], 3, "dsa"),
                     (sorted(seed0[1]), demo.DEMO_EVAL_BY_IPC[1]["epochs"], 3, "none"),
                     (sorted(by_ipc[10]), 20, 3, "dsa"), (sorted(seed0[10]), 20, 3, "none"),
                     (["full_real"], 20, 3, "dsa")]
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    keys = Counter((r["method"], r["ipc"], r["distill_seed"], r["augment"]) for r in rows)
    assert keys[("gm", 1, 1, "dsa")] == keys[("diver_gm", 1, 0, "dsa")] == 3  # 3 students
    assert {r["stage1"] for r in rows if r["method"] == "diver_gm"} == {"gm"}
    assert all(len(r["runs"]) == 3 for r in rows)


def test_the_demo_normalises_every_set_with_the_real_train_split(monkeypatch, tmp_path):
    seen: dict = {}

    def fake_eval(todo, val, ev, out, **kw):
        seen.update(kw, val=val)
        return []

    monkeypatch.setattr(te, "evaluate_sets", fake_eval)
    (tmp_path / "dm").mkdir()
    evaluate_demo({"dm": tmp_path / "dm"}, tmp_path / "data", tmp_path,
                  EvalConfig(students=["resnet18"], repeats=1), None)
    assert seen["train_root"] == tmp_path / "data" / "train" and seen["val"] == tmp_path / "data" / "val"
