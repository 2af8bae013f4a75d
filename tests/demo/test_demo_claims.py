"""The demo report's claim test (paired differences over seeds, met above two standard errors) against
hand-computed numbers."""

import math

import pytest

from pipeline.demo.claims import (
    claim_lines,
    claim_results,
    headline_by_seed,
    paired_test,
    per_class_accuracy,
    per_class_difference,
)


def _row(method: str, student: str, finals: list[float], augment: str = "dsa", ipc: int = 10,
         reported: str = "final") -> dict:
    return {"dataset": "digits", "method": method, "ipc": ipc, "student": student, "augment": augment,
            "reported": reported, "in_mean": student != "convnet",
            "runs": [{"seed": i, "final": f, "best": f + 1.0} for i, f in enumerate(finals)]}


ROWS = [
    _row("dm", "convnet", [99.0, 99.0]),  # the proxy: out of the mean
    _row("dm", "resnet18", [80.0, 82.0]), _row("dm", "mobilenetv2", [70.0, 74.0]),
    _row("diver", "convnet", [10.0, 10.0]),
    _row("diver", "resnet18", [84.0, 86.0]), _row("diver", "mobilenetv2", [76.0, 78.0]),
    # DD-Ranking's no-augmentation runs: not the headline
    _row("diver", "resnet18", [0.0, 0.0], augment="none"),
    _row("random_real", "resnet18", [90.0, 90.0]), _row("random_real", "mobilenetv2", [88.0, 90.0]),
    _row("edits", "resnet18", [91.0, 93.0]), _row("edits", "mobilenetv2", [89.0, 89.0]),
]

# three seeds at IPC 1: per-seed headlines (mean of resnet18 and mobilenetv2)
# dm [75, 78, 78], diver [80, 82, 82]: d = [5, 4, 4], mean 4.333, sample std 0.57735, SE 0.33333 -> met
# random_real [89, 90, 91], edits [92, 89, 92]: d = [3, -1, 1], mean 1, sample std 2, SE 1.15470 -> missed
THREE = [
    _row("dm", "convnet", [99.0, 99.0, 99.0], ipc=1),
    _row("dm", "resnet18", [80.0, 82.0, 84.0], ipc=1), _row("dm", "mobilenetv2", [70.0, 74.0, 72.0], ipc=1),
    _row("diver", "resnet18", [84.0, 86.0, 85.0], ipc=1), _row("diver", "mobilenetv2", [76.0, 78.0, 79.0],
                                                               ipc=1),
    _row("random_real", "resnet18", [90.0, 90.0, 90.0], ipc=1),
    _row("random_real", "mobilenetv2", [88.0, 90.0, 92.0], ipc=1),
    _row("edits", "resnet18", [93.0, 90.0, 92.0], ipc=1), _row("edits", "mobilenetv2", [91.0, 88.0, 92.0],
                                                               ipc=1),
]


def test_headline_by_seed_averages_the_unseen_students_of_each_seed():
    assert headline_by_seed(ROWS, "dm") == [75.0, 78.0]  # (80 + 70) / 2, (82 + 74) / 2
    assert headline_by_seed(ROWS, "diver") == [80.0, 82.0]
    assert headline_by_seed(ROWS, "missing") == []


def test_paired_test_against_hand_computed_standard_errors():
    met = paired_test({0: 80.0, 1: 82.0, 2: 82.0}, {0: 75.0, 1: 78.0, 2: 78.0})
    assert met["n"] == 3 and met["verdict"] == "met"
    assert met["mean_diff"] == pytest.approx(13 / 3) and met["se"] == pytest.approx(1 / 3)
    # seed 7: unpaired
    missed = paired_test({0: 92.0, 1: 89.0, 2: 92.0, 7: 50.0}, {0: 89.0, 1: 90.0, 2: 91.0})
    assert missed["n"] == 3 and missed["verdict"] == "missed"
    assert missed["mean_diff"] == pytest.approx(1.0) and missed["se"] == pytest.approx(2 / math.sqrt(3))
    two = paired_test({0: 90.0, 1: 91.0}, {0: 80.0, 1: 80.0})
    assert two["verdict"] == "not tested" and two["n"] == 2 and two["mean_diff"] == pytest.approx(10.5)


def test_claim_lines_say_met_or_missed_with_the_numbers():
    lines = claim_lines(THREE)
    assert lines == [
        ("IPC 1: EDITS above random real: missed (mean paired difference +1.00 points over n = 3 seeds, SE "
        "1.15; met when above 2 SE = 2.31)."),
        ("IPC 1: DIVER above its stage-1 input (DM): met (mean paired difference +4.33 points over n = 3 "
        "seeds, SE 0.33; met when above 2 SE = 0.67)."),
    ]
    # two seeds: no verdict, the difference still shown; edits (90 + 91) / 2 = 90.5 against 89.5 -> +1.00
    assert claim_lines(ROWS) == [
        "IPC 10: EDITS above random real: not tested: 2 seeds < 3 (mean paired difference +1.00 points).",
        ("IPC 10: DIVER above its stage-1 input (DM): not tested: 2 seeds < 3 (mean paired difference +4.50 "
        "points)."),
    ]
    assert claim_lines([r for r in ROWS if r["method"] in ("dm", "random_real")]) == []


def test_claims_at_each_ipc_that_ran():
    results = claim_results(THREE + ROWS)
    assert [(r["ipc"], r["a"], r["verdict"]) for r in results] == [
        (1, "edits", "missed"), (1, "diver", "met"), (10, "edits", "not tested"), (10, "diver", "not tested")]


def test_demo_full_needs_five_seeds_before_a_claim_is_tested():
    """THREE's DIVER claim is met at 3 seeds in make demo; demo --full asks for 5 paired seeds."""
    full = claim_results(THREE, min_seeds=5)
    assert [(r["a"], r["n"], r["verdict"]) for r in full] == [("edits", 3, "not tested"),
                                                              ("diver", 3, "not tested")]
    assert "not tested: 3 seeds < 5" in claim_lines(THREE, min_seeds=5)[0]


def test_claims_read_the_best_of_presets_that_report_best():
    """Rows of a best-reporting preset carry the label "best (selected on the test split)", which is no key
    of a run; the claim reads each run's best (here final + 1, so every headline moves by one point)."""
    best = [{**r, "reported": "best (selected on the test split)"} for r in THREE]
    assert claim_lines(best) == claim_lines(THREE)  # both sets move alike: the same differences
    assert headline_by_seed(best, "dm", ipc=1) == [76.0, 79.0, 79.0]


def test_the_ars_pass_leaves_out_the_full_real_set_but_the_table_keeps_its_rows(monkeypatch, tmp_path):
    """DD-Ranking's ARS never trains on the full set: the no-augmentation pass evaluates every set but
    full_real, and the rows it returns still hold full_real's augmented row (LRS needs it)."""
    import tuning.evaluate as te
    from pipeline.config import EvalConfig
    from pipeline.demo.run import ars_sets, evaluate_demo

    sets = {n: tmp_path / n for n in ("random_real", "full_real", "dm", "diver")}
    for d in sets.values():
        d.mkdir()
    asked: list[list[str]] = []

    def fake_eval(todo, val, ev, out, **kw):
        asked.append(sorted(todo))
        return [{"dataset": "digits", "method": n, "ipc": 10, "student": "resnet18", "student_kwargs": {},
                 "protocol": "hard", "augment": ev.augment, "top1_mean": 50.0, "top1_std": 0.0, "repeats": 1,
                 "in_mean": True} for n in todo]

    monkeypatch.setattr(te, "evaluate_sets", fake_eval)
    ev = EvalConfig(students=["resnet18"], repeats=1)
    evaluate_demo(sets, tmp_path, tmp_path, ev, None)
    rows = evaluate_demo(ars_sets(sets), tmp_path, tmp_path, ev.model_copy(update={"augment": "none"}), None,
                         tag="_noaug", shown=sets)
    assert asked == [["diver", "dm", "full_real", "random_real"], ["diver", "dm", "random_real"]]
    assert {(r["method"], r["augment"]) for r in rows} == {
        ("random_real", "dsa"), ("full_real", "dsa"), ("dm", "dsa"), ("diver", "dsa"),
        ("random_real", "none"), ("dm", "none"), ("diver", "none")}


def _per_class_row(method: str, student: str, per_class: list[list[float]], augment: str = "dsa") -> dict:
    return {**_row(method, student, [sum(p) / len(p) for p in per_class], augment=augment, ipc=1),
            "runs": [{"seed": i, "final": sum(p) / len(p), "final_per_class": p} for i,
                     p in enumerate(per_class)]}


def test_per_class_differences_average_the_unseen_students_runs_and_name_the_classes_that_move():
    rows = [
        _per_class_row("dm", "convnet", [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]]),  # the proxy: left out
        _per_class_row("dm", "resnet18", [[90.0, 80.0, 70.0], [90.0, 60.0, 70.0]]),
        _per_class_row("dm", "lenet", [[80.0, 70.0, 50.0], [80.0, 70.0, 50.0]]),
        _per_class_row("diver", "resnet18", [[95.0, 40.0, 70.0], [95.0, 40.0, 70.0]]),
        _per_class_row("diver", "lenet", [[85.0, 50.0, 60.0], [85.0, 50.0, 60.0]]),
        # not the headline
        _per_class_row("diver", "lenet", [[0.0, 0.0, 0.0], [0.0, 0.0, 0.0]], augment="none"),
    ]
    # dm per class: [85, 70, 60]; diver: [90, 45, 65] -> diver - dm = [+5, -25, +5]
    assert per_class_accuracy(rows, "dm", 1) == pytest.approx([85.0, 70.0, 60.0])
    assert per_class_difference(rows, "diver", "dm", 1) == pytest.approx([5.0, -25.0, 5.0])
    lines = claim_lines(rows)
    per_class = [line for line in lines if "per class index" in line]
    assert (len(per_class) == 1 and "0 +5.0, 1 -25.0, 2 +5.0" in per_class[0]
            and "most lost in class 1 (-25.0)" in per_class[0])
    assert per_class_difference(rows, "edits", "random_real", 1) is None  # no such rows
    old = [{**r, "runs": [{k: v for k,
                           v in run.items() if k != "final_per_class"} for run in r["runs"]]} for r in rows]
    assert per_class_accuracy(old, "dm",
                              1) is None and not any("per class" in line for line in claim_lines(old))
