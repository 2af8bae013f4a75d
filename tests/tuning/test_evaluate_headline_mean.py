"""The headline mean over students leaves out eval.exclude_from_mean (the stage-1 proxy), in the table and the
sweep."""

import pytest

from pipeline.config import EvalConfig
from pipeline.errors import ConfigError
from tuning.evaluate import aggregate, check_excluded, mean_top1, results_markdown

SETS = {"dm_ipc10": {"method": "dm", "ipc": 10, "dir": "x", "n_images": 100}}


def runs(acc: dict[str, float]):
    return [{"set": "dm_ipc10", "student": s, "seed": 0, "final": a, "best": a, "best_epoch": 1,
             "seconds": 1.0}
            for s, a in acc.items()]


ACC = {"convnet": 90.0, "resnet18_cifar_in": 50.0, "mobilenetv2": 40.0}


def pivot_mean(md: str) -> str:
    return next(ln for ln in md.splitlines() if ln.startswith("| d | 10 | dm |")).split("|")[-2].strip()


def test_default_excludes_the_convnet_proxy():
    cfg = EvalConfig(students=list(ACC), repeats=1)
    rows = aggregate(runs(ACC), SETS, cfg, "d")
    assert {r["student"]: r["in_mean"] for r in rows} == {"convnet": False, "resnet18_cifar_in": True,
                                                          "mobilenetv2": True}
    assert mean_top1(rows) == pytest.approx(45.0)  # (50 + 40) / 2, not (90 + 50 + 40) / 3
    md = results_markdown(rows)
    assert pivot_mean(md) == "45.00"
    assert "mean over mobilenetv2, resnet18_cifar_in (eval.exclude_from_mean leaves out convnet)" in md
    assert rows[0]["augment"] == "dsa"


def test_exclude_from_mean_is_a_setting():
    rows = aggregate(runs(ACC), SETS, EvalConfig(students=list(ACC), repeats=1, exclude_from_mean=[]), "d")
    assert mean_top1(rows) == pytest.approx(60.0) and pivot_mean(results_markdown(rows)) == "60.00"
    rows = aggregate(runs(ACC), SETS, EvalConfig(students=list(ACC), repeats=1,
                                                 exclude_from_mean=["mobilenetv2"]), "d")
    assert mean_top1(rows) == pytest.approx(70.0)


def test_only_excluded_students_fall_back_to_all_and_say_so():
    rows = aggregate(runs({"convnet": 90.0}), SETS, EvalConfig(students=["convnet"], repeats=1), "d")
    assert mean_top1(rows) == pytest.approx(90.0)  # the sweep still gets a metric
    md = results_markdown(rows)
    assert pivot_mean(md) == "90.00 †" and "every student is in eval.exclude_from_mean" in md


def test_unknown_excluded_student_is_a_config_error():
    with pytest.raises(ConfigError, match="exclude_from_mean.*convnet7"):
        check_excluded(["convnet", "convnet7"])
