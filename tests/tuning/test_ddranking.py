"""DD-Ranking scores (LRS, ARS) against values computed by hand from the paper's definitions."""

import math

import pytest

from tuning.ddranking import aug_robust_score, label_robust_score, scores, scores_markdown
from tuning.evaluate import results_markdown

ST = "resnet18_cifar_in"


def row(method, top1, ipc=10, protocol="hard", augment="dsa", student=ST, **kw):
    return {"dataset": "d", "method": method, "ipc": ipc, "student": student, "protocol": protocol,
            "augment": augment, "top1_mean": top1, "top1_std": 0.0, "repeats": 1, "student_kwargs": kw}


def test_label_robust_score_by_hand():
    # HLR = 0.80 - 0.50 = 0.30, IOR = 0.50 - 0.30 = 0.20, alpha = 0.5 * 0.20 - 0.5 * 0.30 = -0.05
    # LRS = (e^-0.05 - e^-1) / (e - e^-1) = (0.951229 - 0.367879) / 2.350402 = 0.248192
    got = label_robust_score(80.0, 50.0, 50.0, 30.0)
    assert got["hlr"] == pytest.approx(30.0) and got["ior"] == pytest.approx(20.0)
    assert got["lrs"] == pytest.approx(24.8192, abs=1e-3)
    # the extremes: alpha = -1 -> 0, alpha = +1 -> 100 (lam = 1 keeps only IOR)
    assert label_robust_score(100.0, 0.0, 0.0, 100.0)["lrs"] == pytest.approx(0.0, abs=1e-9)
    assert label_robust_score(100.0, 100.0, 100.0, 0.0, lam=1.0)["lrs"] == pytest.approx(100.0)


def test_aug_robust_score_by_hand():
    # with aug 0.50 - 0.30 = 0.20, without 0.40 - 0.35 = 0.05, beta = 0.125
    # ARS = (e^0.125 - e^-1) / (e - e^-1) = (1.133148 - 0.367879) / 2.350402 = 0.325591
    got = aug_robust_score(50.0, 30.0, 40.0, 35.0)
    assert got["aug_gain"] == pytest.approx(20.0) and got["plain_gain"] == pytest.approx(5.0)
    assert got["ars"] == pytest.approx(32.5591, abs=1e-3)
    assert aug_robust_score(50.0, 30.0, 40.0, 35.0, lam=0.0)["ars"] == pytest.approx(
        100 * (math.exp(0.05) - math.exp(-1)) / (math.e - math.exp(-1)))


def table():
    return [row("diver", 50.0), row("diver", 40.0, augment="none"), row("random_real", 30.0),
            row("random_real", 35.0, augment="none"), row("full_real", 80.0, ipc=500),
            row("diver", 60.0, protocol="soft"), row("random_real", 50.0, protocol="soft"),
            row("diver", 45.0, student="mobilenetv2"), row("random_real", 20.0, student="mobilenetv2")]


def test_scores_from_table_rows():
    got = {(e["method"], e["student"], e["protocol"]): e for e in scores(table())}
    hard = got[("diver", ST, "hard")]
    assert hard["lrs"] == pytest.approx(24.8192, abs=1e-3) and hard["ars"] == pytest.approx(32.5591, abs=1e-3)
    # soft labels: IOR from the soft rows (0.60 - 0.50), HLR from the hard-label row (0.80 - 0.50):
    # alpha = 0.05 - 0.15 = -0.10 -> (e^-0.1 - e^-1) / (e - e^-1) = 0.228454; no `augment: none` soft rows ->
    # no ARS
    soft = got[("diver", ST, "soft")]
    assert soft["ior"] == pytest.approx(10.0) and soft["lrs"] == pytest.approx(22.8454, abs=1e-3)
    assert "ars" not in soft
    # mobilenetv2 has no full_real and no `augment: none` rows: nothing to score
    assert ("diver", "mobilenetv2", "hard") not in got
    assert not any(e["method"] in ("random_real", "full_real") for e in got.values())


def test_scores_in_results_markdown():
    md = results_markdown(table())
    assert "DD-Ranking" in md
    line = next(ln for ln in md.splitlines() if ln.startswith("| d | 10 | diver | resnet18_cifar_in | hard | "
                                                              "dsa |"))
    assert line.endswith("| 30.00 | 20.00 | 24.82 | 32.56 |")
    assert "DD-Ranking" not in results_markdown([row("diver", 50.0)])  # no reference rows, no section


def seeded(method, finals, augment="dsa", preset="demo", **kw):
    """A row with its per-seed runs (seed i -> finals[i])."""
    r = row(method, sum(finals) / len(finals), augment=augment)
    return {**r, "preset": preset, "reported": "final", **kw,
            "runs": [{"seed": i, "final": f, "best": f + 5.0} for i, f in enumerate(finals)]}


def test_scores_are_per_seed_with_mean_and_std():
    rows = [seeded("full_real", [80.0, 80.0]), seeded("diver", [50.0, 60.0]),
            seeded("random_real", [30.0, 30.0]),
            seeded("diver", [40.0, 44.0], augment="none"), seeded("random_real", [35.0, 35.0],
                                                                  augment="none")]
    e = scores(rows)[0]
    # seed 0: HLR 0.30, IOR 0.20 -> LRS 24.8192; seed 1: HLR 0.20, IOR 0.30, alpha 0.05 ->
    # (e^0.05 - e^-1) / (e - e^-1) = 29.0755; mean 26.9473, population std 2.1282 (the means would give 26.89)
    assert e["n_lrs"] == 2 and e["lrs"] == pytest.approx(26.9473,
                                                         abs=1e-3) and e["lrs_std"] == pytest.approx(2.1282,
                                                                                                            abs=1e-3)
    assert (e["hlr"] == pytest.approx(25.0) and e["hlr_std"] == pytest.approx(5.0)
            and e["ior_std"] == pytest.approx(5.0))
    # ARS seed 0: beta = 0.5 * 0.20 + 0.5 * 0.05 -> 32.5591; seed 1: 0.5 * 0.30 + 0.5 * 0.09 -> 36.0547
    assert e["n_ars"] == 2 and e["ars"] == pytest.approx(34.3069,
                                                         abs=1e-3) and e["ars_std"] == pytest.approx(1.7478,
                                                                                                           abs=1e-3)
    assert e["random_draws"] == "one"
    md = "\n".join(scores_markdown([e]))
    assert "| 2 / 2 | one | 25.00 ± 5.00 | 25.00 ± 5.00 | 26.95 ± 2.13 | 34.31 ± 1.75 |" in md
    assert "top-1 = final" in md and "no lr search" in md and "one draw for every seed" in md


def test_scores_name_a_fresh_random_draw_per_seed_and_never_mix_presets():
    rnd = seeded("random_real", [30.0, 30.0], draws={"0": "rr/seed0", "1": "rr/seed1"})
    rows = [seeded("full_real", [80.0, 80.0]), seeded("diver", [50.0, 60.0]), rnd]
    e = scores(rows)[0]
    assert e["random_draws"] == "per seed" and "a fresh draw per seed" in "\n".join(scores_markdown([e]))
    other = [seeded("full_real", [80.0, 80.0]), seeded("diver", [50.0, 60.0], preset="edits"), rnd]
    assert scores(other) == []  # random real and full real of another preset are no reference
    best = [{**r, "reported": "best (selected on the test split)"} for r in rows]
    got = scores(best)[0]  # each run's best: +5 on every set -> the same HLR and IOR per seed as final
    assert got["reported"] == "best (selected on the test split)" and got["lrs"] == pytest.approx(e["lrs"])
    assert "top-1 = best (selected on the test split)" in "\n".join(scores_markdown([got]))
