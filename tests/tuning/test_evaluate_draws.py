"""Random real drawn afresh per evaluation seed (DD-Ranking's random reference): one folder per seed, each
trained at its own seed only, one table row whose runs come from the draws."""

from __future__ import annotations

import pytest

from pipeline.config import EvalConfig
from pipeline.errors import DataError
from tuning.evaluate import aggregate, baseline_sets, make_jobs, set_parts


def test_per_seed_draws_run_each_draw_at_its_own_seed_into_one_row():
    ev = EvalConfig(students=["resnet18"], repeats=2, seed=3)
    parts = set_parts({"dm": "sets/dm", "random_real": {3: "rr/seed3", 4: "rr/seed4"}}, ev)
    assert parts == {"dm": ("dm", "sets/dm", None), "random_real@seed3": ("random_real", "rr/seed3", [3]),
                     "random_real@seed4": ("random_real", "rr/seed4", [4])}
    loaded = {key: {"method": name, "ipc": 10, "dir": str(d), "n_images": 100, "num_classes": 10, "row": name,
                    **({"seeds": seeds} if seeds else {})} for key, (name, d, seeds) in parts.items()}
    jobs = make_jobs(loaded, ev)
    assert [(j["set"], j["seed"]) for j in jobs] == [("dm", 3), ("dm", 4), ("random_real@seed3", 3),
                                                     ("random_real@seed4", 4)]
    runs = [{"set": j["set"], "student": j["student"], "seed": j["seed"], "final": f, "best": f,
             "reported": f, "best_epoch": 1, "seconds": 1.0} for j, f in zip(jobs, [50.0, 52.0, 30.0, 34.0])]
    rows = aggregate(runs, loaded, ev, "digits")
    rr = next(r for r in rows if r["method"] == "random_real")
    # (30 + 34) / 2, population std
    assert len(rows) == 2 and rr["top1_mean"] == 32.0 and rr["top1_std"] == 2.0
    assert [run["seed"] for run in rr["runs"]] == [3, 4] and rr["draws"] == {"3": "rr/seed3", "4": "rr/seed4"}
    assert "draws" not in next(r for r in rows if r["method"] == "dm")
    with pytest.raises(DataError, match=r"'random_real' has draws for seeds \[0, 1\].*seeds \[3, 4\]"):
        set_parts({"random_real": {0: "a", 1: "b"}}, ev)


def test_baselines_draw_random_real_afresh_per_seed(demo_root, tmp_path):
    from pipeline.core.write import read_manifest

    ev = EvalConfig(baselines=["random_real"], image_size=32, repeats=2, seed=0)
    sets, methods = baseline_sets(ev, demo_root / "train", tmp_path, ipc=2, log=lambda _m: None)
    assert methods == {"random_real_ipc2": "random_real"} and sorted(sets["random_real_ipc2"]) == [0, 1]
    picks = [sorted(e["source"] for e in read_manifest(sets["random_real_ipc2"][s])["images"])
             for s in (0, 1)]
    assert len(picks[0]) == 20 and picks[0] != picks[1]  # two seeds, two draws of 2 images x 10 classes


def test_evaluate_sets_trains_each_draw_at_its_seed(demo_root, tmp_path):
    from tuning.evaluate import evaluate_sets, random_real_draws

    draws = random_real_draws(demo_root / "train", tmp_path / "rr", ipc=1, seeds=[0, 1], size=32)
    ev = EvalConfig(students=["convnet"], epochs=1, repeats=2, backend="local", batch_size=8,
                    student_kwargs={"convnet": {"width": 8}})
    rows = evaluate_sets({"random_real": draws}, demo_root / "val", ev, tmp_path / "out",
                         methods={"random_real": "random_real"}, log=lambda _m: None)
    assert len(rows) == 1 and [run["seed"] for run in rows[0]["runs"]] == [0, 1]
    assert rows[0]["draws"] == {"0": draws[0], "1": draws[1]} and rows[0]["images"] == 10
    assert rows[0]["recipe"]["seeds"] == "0, 1"
