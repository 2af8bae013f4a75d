"""Evaluation end to end: random real IPC 10 on the demo digits learns on Ray Train; CLI; results files."""

import json

import numpy as np
import pytest

from pipeline.cli import main
from pipeline.config import EvalConfig
from pipeline.errors import DataError
from tuning.baselines import random_real
from tuning.evaluate import evaluate_sets, load_distilled, merge_rows, results_markdown, write_results


@pytest.fixture(scope="module")
def rr_set(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("rr") / "random_real"
    random_real(demo_root / "train", out, ipc=10, seed=0)
    return out


def test_random_real_baseline(rr_set, demo_root, tmp_path):
    man = json.loads((rr_set / "manifest.json").read_text())
    assert man["method"] == "random_real" and man["complete"]
    counts = {}
    for e in man["images"]:
        counts[e["class_id"]] = counts.get(e["class_id"], 0) + 1
    assert counts == {str(c): 10 for c in range(10)}
    again = random_real(demo_root / "train", tmp_path / "again", ipc=10, seed=0)
    random_real(demo_root / "train", tmp_path / "other", ipc=10, seed=1)

    def src(d):
        return sorted(e["source"] for e in json.loads((d / "manifest.json").read_text())["images"])

    assert src(rr_set) == src(tmp_path / "again") and src(rr_set) != src(tmp_path / "other")
    assert again["images"] == 100
    x, y, meta = load_distilled(rr_set, [str(c) for c in range(10)])
    assert x.shape == (100, 32, 32, 3) and sorted(set(y.tolist())) == list(range(10))
    assert meta == {"method": "random_real", "ipc": 10, "image_size": 32}
    with pytest.raises(DataError, match="classes the real set lacks"):
        load_distilled(rr_set, [str(c) for c in range(5)])


def test_hard_label_run_on_ray_train_learns(rr_set, demo_root, ray_local, tmp_path):
    cfg = EvalConfig(students=["convnet"], epochs=8, repeats=2, eval_every=4, cpus_per_job=0.5,
                     student_kwargs={"convnet": {"width": 32}})
    rows = evaluate_sets({"rr": rr_set}, demo_root / "val", cfg, tmp_path)
    assert len(rows) == 1
    row = rows[0]
    assert {k: row[k] for k in ("dataset", "method", "ipc", "student", "repeats")} == (
        {"dataset": demo_root.name, "method": "random_real", "ipc": 10, "student": "convnet", "repeats": 2})
    finals = [r["final"] for r in row["runs"]]
    assert row["top1_mean"] == pytest.approx(np.mean(finals), abs=0.01)
    assert row["top1_std"] == pytest.approx(np.std(finals), abs=0.01)
    assert row["top1_mean"] > 50.0, row  # chance is 10%
    assert all(r["best"] >= r["final"] for r in row["runs"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved[0]["top1_mean"] == row["top1_mean"]
    assert "random_real" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "results.csv").read_text().startswith("dataset,method,ipc,student")
    # both (student, seed) runs ran inside one Ray Train run under the output folder (start-up paid once)
    assert sorted(p.name for p in (tmp_path / "ray_train").iterdir() if p.is_dir()) == ["eval-packed"]
    assert [r["seed"] for r in row["runs"]] == [0, 1]


def test_unpacked_runs_get_one_trainer_each(rr_set, demo_root, ray_local, tmp_path):
    cfg = EvalConfig(students=["convnet"], epochs=2, repeats=2, cpus_per_job=0.5, pack_runs=False,
                     student_kwargs={"convnet": {"width": 16}})
    rows = evaluate_sets({"rr": rr_set}, demo_root / "val", cfg, tmp_path)
    assert rows[0]["repeats"] == 2
    assert sorted(p.name for p in (tmp_path / "ray_train").iterdir() if p.is_dir()) == (
        ["rr-convnet-s0", "rr-convnet-s1"])


def test_packed_workers_fill_the_cores_once():
    from tuning.evaluate import packed_workers

    assert packed_workers(24, EvalConfig(cpus_per_job=1.0), 2.0) == 2  # 2 cores, 1 thread each
    assert packed_workers(24, EvalConfig(cpus_per_job=0.5), 2.0) == 2  # a worker runs >= 1 thread
    assert packed_workers(24, EvalConfig(cpus_per_job=2.0), 16.0) == 8  # 2 threads each
    assert packed_workers(1, EvalConfig(cpus_per_job=1.0), 16.0) == 1  # never more workers than runs
    assert packed_workers(24, EvalConfig(cpus_per_job=1.0, max_concurrent=3), 2.0) == 3


def test_eval_cli_local_backend(rr_set, demo_root, tmp_path, capsys):
    rc = main(["eval", "--distilled", str(rr_set), "--real", str(demo_root / "val"), "--students", "convnet",
               "--out", str(tmp_path), "eval.backend=local", "eval.epochs=2", "eval.repeats=1",
               "eval.student_kwargs={convnet: {width: 16}}"])
    assert rc == 0
    out = capsys.readouterr().out
    assert "convnet (width=16)" in out and "random_real" in out
    rows = json.loads((tmp_path / "results.json").read_text())
    assert rows[0]["student_kwargs"] == {"width": 16} and rows[0]["repeats"] == 1 and rows[0]["epochs"] == 2
    assert main(["eval", "--distilled", str(rr_set), "--real", str(demo_root / "val"), "--students", "nope",
                 "eval.backend=local"]) == 2


def test_results_merge_and_markdown(tmp_path):
    base = {"dataset": "d", "ipc": 10, "protocol": "hard", "repeats": 2, "top1_std": 1.0, "best_mean": 0.0}
    old = [{**base, "method": "a", "student": "convnet", "top1_mean": 10.0},
           {**base, "method": "b", "student": "convnet", "top1_mean": 20.0}]
    new = [{**base, "method": "a", "student": "convnet", "top1_mean": 30.0},
           {**base, "method": "a", "student": "resnet18", "top1_mean": 40.0}]
    write_results(old, tmp_path)
    rows = write_results(new, tmp_path)
    assert sorted((r["method"], r["student"], r["top1_mean"]) for r in rows) == (
        [("a", "convnet", 30.0), ("a", "resnet18", 40.0), ("b", "convnet", 20.0)])
    assert merge_rows(old, []) == old
    md = results_markdown(rows)
    assert "| d | 10 | a | 30.00 ± 1.00 | 40.00 ± 1.00 | 35.00 |" in md  # pivot row, mean over students
    assert "| d | 10 | b | 20.00 ± 1.00 | - | 20.00 |" in md


@pytest.mark.slow
def test_ddp_two_workers_per_job(rr_set, demo_root, ray_local, tmp_path):
    """num_workers=2: one TorchTrainer job trains with DDP (gloo on CPU), each rank on half of every epoch."""
    cfg = EvalConfig(students=["convnet"], epochs=6, repeats=1, num_workers=2, cpus_per_job=0.5,
                     student_kwargs={"convnet": {"width": 32}})
    rows = evaluate_sets({"rr": rr_set}, demo_root / "val", cfg, tmp_path)
    assert rows[0]["repeats"] == 1 and rows[0]["top1_mean"] > 40.0


def test_sets_from_run_summaries(tmp_path):
    from tuning.evaluate import sets_from_summary

    stage1 = tmp_path / "ipc10" / "stage1"
    stage1.mkdir(parents=True)
    (stage1 / "manifest.json").write_text(json.dumps({"method": "dm", "images": []}))
    diver = {"method": "diver", "output": str(tmp_path),
             "sets": {"ipc10": {"stage1": str(stage1), "recovered": str(tmp_path / "ipc10" / "diver")},
                      "input": {"stage1": str(tmp_path / "external.pt"),
                                "recovered": str(tmp_path / "diver")}}}
    sets, methods = sets_from_summary(diver)
    assert sets == {"dm_ipc10": str(stage1), "diver_ipc10": str(tmp_path / "ipc10" / "diver"),
                    "diver_input": str(tmp_path / "diver")}
    assert methods == {"dm_ipc10": "dm", "diver_ipc10": "diver", "diver_input": "diver"}
    assert sets_from_summary({"method": "edits", "output": "x/distilled"}) == ({"edits": "x/distilled"},
                                                                              {"edits": "edits"})


def test_run_ends_with_evaluation(rr_set, demo_root, tmp_path, monkeypatch):
    """`semdistill run` with an eval section evaluates what the method wrote, into output.dir."""
    import pipeline.run as run_mod

    monkeypatch.setattr(run_mod, "run_config",
                        lambda cfg, from_stage=None, log=None: {"method": "edits", "output": str(rr_set)})
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"method: edits\ndata:\n  root: {demo_root / 'train'}\n  val_root: {demo_root / 'val'}\n"
                   f"output:\n  dir: {tmp_path / 'out'}\neval:\n  students: [convnet]\n  epochs: 2\n"
                   "  repeats: 1\n"
                   "  backend: local\n  student_kwargs: {convnet: {width: 8}}\n")
    assert main(["run", str(cfg)]) == 0
    rows = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["method"], r["student"], r["ipc"]) for r in rows] == [("edits", "convnet", 10)]
