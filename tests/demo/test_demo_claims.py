"""The demo report's claim lines against hand-computed headlines."""

from pipeline.demo.claims import claim_lines, headline_by_seed


def _row(method: str, student: str, finals: list[float], augment: str = "dsa") -> dict:
    return {"method": method, "student": student, "augment": augment, "reported": "final",
            "in_mean": student != "convnet",
            "runs": [{"seed": i, "final": f, "best": f + 1.0} for i, f in enumerate(finals)]}


ROWS = [
    _row("dm", "convnet", [99.0, 99.0]),  # the proxy: out of the mean
    _row("dm", "resnet18", [80.0, 82.0]), _row("dm", "mobilenetv2", [70.0, 74.0]),
    _row("diver", "convnet", [10.0, 10.0]),
    _row("diver", "resnet18", [84.0, 86.0]), _row("diver", "mobilenetv2", [76.0, 78.0]),
    _row("diver", "resnet18", [0.0, 0.0], augment="none"),  # DD-Ranking's no-augmentation runs: not the headline
    _row("random_real", "resnet18", [90.0, 90.0]), _row("random_real", "mobilenetv2", [88.0, 90.0]),
    _row("edits", "resnet18", [91.0, 93.0]), _row("edits", "mobilenetv2", [89.0, 89.0]),
]


def test_headline_by_seed_averages_the_unseen_students_of_each_seed():
    assert headline_by_seed(ROWS, "dm") == [75.0, 78.0]  # (80 + 70) / 2, (82 + 74) / 2
    assert headline_by_seed(ROWS, "diver") == [80.0, 82.0]
    assert headline_by_seed(ROWS, "missing") == []


def test_claim_lines_say_met_or_missed_with_the_numbers():
    lines = claim_lines(ROWS)
    # gain 81 - 76.5 = +4.50; std of [75, 78] is 1.50 and of [80, 82] 1.00 -> 1.50
    assert lines[0] == ("target met: DIVER beats its stage-1 DM input on the unseen-architecture mean by more than "
                        "the seeds' standard deviation (gain +4.50 points, std 1.50).")
    # edits (90 + 91) / 2 = 90.5 against random real (89 + 90) / 2 = 89.5
    assert lines[1] == ("target met: full EDITS at or above random real on the unseen-architecture mean "
                        "(90.50 against 89.50, +1.00 points).")
    worse = [r for r in ROWS if r["method"] != "edits"] + [_row("edits", "resnet18", [50.0, 52.0]),
                                                          _row("edits", "mobilenetv2", [40.0, 40.0])]
    close = [r for r in worse if r["method"] != "diver"] + [_row("diver", "resnet18", [81.0, 87.0]),
                                                            _row("diver", "mobilenetv2", [70.0, 74.0])]
    missed = claim_lines(close)
    # diver per seed [75.5, 80.5]: gain 78 - 76.5 = +1.50, std 2.50 -> missed; edits 45.5 vs 89.5
    assert missed[0].startswith("target missed:") and "(gain +1.50 points, std 2.50)" in missed[0]
    assert missed[1] == ("target missed: full EDITS at or above random real on the unseen-architecture mean "
                         "(45.50 against 89.50, -44.00 points).")
    assert claim_lines([r for r in ROWS if r["method"] in ("dm", "random_real")]) == []


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
