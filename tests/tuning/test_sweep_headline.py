"""The sweep's score: ASHA rungs judged on the headline mean (never the proxy alone), soft-label trials given
their train split, two seeds per trial by default with the std shown, and the demo sweep on the demo's
protocol."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.config import SweepConfig, config_from_dict, load_config
from pipeline.run import distil_one_set
from tuning.sweep import headline_first, run_sweep, run_trial, seed_headlines, trial_metrics

REPO = Path(__file__).resolve().parents[2]
ACC = {"convnet": 90.0, "resnet18": 50.0, "mobilenetv2": 40.0}  # the proxy far above the unseen students


def _row(student: str, seeds: list[float]) -> dict:
    return {"student": student, "top1_mean": round(sum(seeds) / len(seeds), 2), "top1_std": 1.0,
            "in_mean": student != "convnet", "reported": "final",
            "runs": [{"seed": i, "final": a, "best": a + 5} for i, a in enumerate(seeds)]}


def test_trial_metrics_are_the_headline_mean_and_its_std_over_seeds():
    rows = [_row("convnet", [90.0, 0.0]), _row("resnet18", [50.0, 54.0]), _row("mobilenetv2", [40.0, 42.0])]
    # per seed, over the unseen students only: seed 0 (50 + 40) / 2 = 45, seed 1 (54 + 42) / 2 = 48
    assert seed_headlines(rows) == {0: 45.0, 1: 48.0}
    m = trial_metrics(rows)
    assert m["mean_top1"] == pytest.approx(46.5) and m["mean_top1_std"] == pytest.approx(1.5)
    assert m["seeds"] == 2 and m["students_done"] == 3 and m["top1/convnet"] == 45.0
    best = [{**r, "reported": "best"} for r in rows]  # a preset that reports best: its runs' best
    assert seed_headlines(best) == {0: 50.0, 1: 53.0}


def test_headline_students_train_first():
    assert headline_first(["convnet", "resnet18", "mobilenetv2"], ["convnet"]) == ["resnet18", "mobilenetv2",
                                                                                  "convnet"]
    assert headline_first(["convnet"], ["convnet"]) == ["convnet"]


def test_sweep_repeats_default_to_two():
    assert SweepConfig().repeats == 2


def _fake_trial(monkeypatch, tmp_path, scheduler: str, protocol: str = "hard") -> tuple[list, list]:
    """``run_trial`` with Tune and the evaluation replaced: returns (reports, evaluate_sets calls)."""
    import ray.tune

    import tuning.evaluate

    reports, calls = [], []

    class Ctx:
        def get_trial_id(self) -> str:
            return "t0"

    def fake_eval(sets, val_root, cfg, out_dir, train_root=None, **kw):
        calls.append({"students": list(cfg.students), "train_root": train_root, "protocol": cfg.protocol,
                      "repeats": cfg.repeats, "batch_size": cfg.batch_size})
        return [_row(s, [ACC[s] - 1, ACC[s] + 1]) for s in cfg.students]

    monkeypatch.setattr(ray.tune, "report", lambda metrics, **kw: reports.append(dict(metrics)))
    monkeypatch.setattr(ray.tune, "get_context", lambda: Ctx())
    monkeypatch.setattr(tuning.evaluate, "evaluate_sets", fake_eval)
    base = config_from_dict({
        "method": "diver", "data": {"root": str(tmp_path / "split" / "train"),
                                    "val_root": str(tmp_path / "held")},
        "eval": {"students": ["convnet", "resnet18", "mobilenetv2"], "protocol": protocol, "batch_size": 16},
        "sweep": {"params": {"diver.gamma": [0.0, 0.1]}, "scheduler": scheduler},
        "output": {"dir": str(tmp_path)}})
    run_trial({"p0": 0.1}, base.model_dump(mode="json"), ["diver.gamma"], str(tmp_path / "trials"),
              lambda cfg: str(tmp_path / "set"))
    return reports, calls


def test_asha_rungs_see_the_headline_mean_never_the_proxy_alone(monkeypatch, tmp_path):
    reports, calls = _fake_trial(monkeypatch, tmp_path, "asha")
    assert [c["students"] for c in calls] == [["resnet18"], ["mobilenetv2"], ["convnet"]]
    assert [r["students_done"] for r in reports] == [1, 2, 3]
    # rung 1 is ResNet-18's 50, not the proxy's 90; the proxy never moves the metric
    assert [r["mean_top1"] for r in reports] == [50.0, 45.0, 45.0]
    assert reports[-1]["top1/convnet"] == 90.0 and reports[-1]["mean_top1_std"] == pytest.approx(1.0)
    assert all(c["repeats"] == 2 and c["batch_size"] == 16 for c in calls)  # sweep.repeats; the eval's batch


def test_without_asha_one_evaluation_and_soft_labels_get_the_train_split(monkeypatch, tmp_path):
    reports, calls = _fake_trial(monkeypatch, tmp_path, "none", protocol="soft")
    assert len(calls) == 1 and calls[0]["students"] == ["resnet18", "mobilenetv2", "convnet"]
    assert calls[0]["train_root"] == str(tmp_path / "split" / "train") and calls[0]["protocol"] == "soft"
    assert len(reports) == 1 and reports[0]["mean_top1"] == 45.0 and reports[0]["students_done"] == 3


def _tiny(demo_root, out, **eval_extra) -> dict:
    return {"name": "t", "method": "none",
            "data": {"root": str(demo_root / "train"), "val_root": str(demo_root / "val"), "image_size": 32},
            "eval": {"students": ["convnet"], "student_kwargs": {"convnet": {"width": 8}}, "epochs": 1,
                     **eval_extra},
            "sweep": {"params": {"eval.lr": [0.0, 0.02]}, "trial_cpus": 1, "repeats": 1, "baseline_ipc": 2},
            "output": {"dir": str(out)}}


def test_a_soft_label_sweep_trains_its_teacher_and_finishes(demo_root, ray_local, tmp_path):
    """Soft labels need a teacher trained on the real train split; every trial used to fail without it."""
    raw = _tiny(demo_root, tmp_path, protocol="soft", teacher_epochs=1, temperature=4.0)
    raw["sweep"]["params"] = {"eval.lr": [0.02]}
    summary = run_sweep(config_from_dict(raw), distil_one_set, log=lambda _m: None)
    assert [t["error"] for t in summary["trials"]] == [None]
    assert 0.0 <= summary["best"]["mean_top1"] <= 100.0


def test_a_soft_label_sweep_without_train_data_stops_before_any_trial(demo_root, tmp_path):
    from pipeline.errors import ConfigError

    raw = _tiny(demo_root, tmp_path, protocol="soft")
    raw["data"]["root"] = None
    raw["sweep"]["holdout_fraction"] = 0.0
    with pytest.raises(ConfigError, match=r"eval.protocol soft .* data.root .* eval.teacher_checkpoint"):
        run_sweep(config_from_dict(raw), distil_one_set, log=lambda _m: None)


def test_semdistill_sweep_prints_one_line_per_trial_and_logs_the_rest(demo_root, tmp_path):
    """The command's terminal: the logs line, the header, one line per trial, the best; Ray's and Tune's
    output in <output.dir>/logs/run.log, Ray's session logs linked beside it."""
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(_tiny(demo_root, tmp_path / "out")))
    exe = Path(sys.executable).parent / "semdistill"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.run([str(exe), "sweep", "sweep.yaml"], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=900, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    print(proc.stdout)
    lines = [ln for ln in proc.stdout.replace("\r", "\n").splitlines() if ln.strip()]
    text = [ln for ln in lines if "sweep trials" not in ln]  # the progress bar's redraws
    logs = tmp_path / "out" / "logs"
    assert text[0] == f"logs: {logs}"
    assert text[1].startswith("sweep t: 2 trial(s) of none over eval.lr, 1 student(s) x 1 seed(s) each, "
                              "scored on a holdout of 10%")
    trial_lines = sorted(text[2:4])
    assert [ln.split(":")[0] for ln in trial_lines] == ["  trial 1/2 eval.lr=0.0",
                                                        "  trial 2/2 eval.lr=0.02"] or (
        [ln.split(":")[0] for ln in trial_lines] == ["  trial 1/2 eval.lr=0.02", "  trial 2/2 eval.lr=0.0"])
    assert all(" mean top-1 " in ln and "+- 0.00 over 1 seed(s) (convnet " in ln for ln in trial_lines)
    saved = json.loads((tmp_path / "out" / "sweep" / "sweep_results.json").read_text())
    best = saved["best"]
    assert text[4] == (f"best: eval.lr={best['params']['eval.lr']}, mean top-1 {best['mean_top1']:.2f} +- "
                       f"0.00; results: {tmp_path / 'out' / 'sweep' / 'sweep.md'}") and len(text) == 5, text
    assert proc.stderr.strip() == ""
    assert all(t["seeds"] == 1 and t["mean_top1_std"] == 0.0 for t in saved["trials"])
    log = (logs / "run.log").read_text()
    assert "Trial status" in log or "trial" in log.lower()
    assert (logs / "ray_session").exists()


def test_demo_sweep_evaluates_with_the_demo_protocol_and_the_demo_recovery():
    """configs/demo_sweep.yaml trains its students as the demo does at IPC 1 (DEMO_EVAL with the IPC's epochs
    and batch) and recovers as configs/demo_diver.yaml does; only the input, the stage-1 section and the
    threads differ."""
    from pipeline.demo.run import DEMO_EVAL, DEMO_EVAL_BY_IPC

    raw = yaml.safe_load((REPO / "configs" / "demo_sweep.yaml").read_text())
    assert "ipc1/stage1" in raw["diver"]["input"]
    assert raw["eval"] == {k: v for k, v in {**DEMO_EVAL,
                                             **DEMO_EVAL_BY_IPC[1]}.items() if k != "cpus_per_job"}
    cfg = load_config(REPO / "configs" / "demo_sweep.yaml")
    assert cfg.sweep.repeats == DEMO_EVAL["repeats"] and cfg.sweep.scheduler == "none"
    demo = load_config(REPO / "configs" / "demo_diver.yaml")
    skip = {"input", "stage1", "torch_threads"}
    assert {k: v for k, v in cfg.diver.model_dump().items() if k not in skip} == (
        {k: v for k, v in demo.diver.model_dump().items() if k not in skip})
    assert cfg.models.dit == demo.models.dit
