"""Coreset baselines (herding, k-center) and full_real: selection rules checked by hand, sets written, wired
into eval."""

import json

import numpy as np
import pytest

from pipeline.config import EvalConfig
from pipeline.errors import ConfigError, DataError
from tuning.baselines import build_baseline, coreset, full_real, herding_select, k_center_select
from tuning.evaluate import baseline_sets, load_distilled, set_ipc


def test_herding_by_hand():
    # 1-D points 0, 1, 2, 10: mean 3.25. Step 1: |3.25 - x| -> 2 (1.25). Step 2: |3.25 - (2 + x) / 2| -> 1 is
    # 1.75,
    # 0 is 2.25, 10 is 2.75 -> 1. Step 3: (3 + x) / 3 vs 3.25 -> 10 (1.083) beats 0 (2.25).
    f = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert herding_select(f, 3) == [2, 1, 3]


def test_k_center_by_hand():
    # mean 3.25 -> nearest is 2; farthest from {2} is 10; farthest from {2, 10} is 0 (distance 2 vs 1 for the
    # point 1)
    f = np.array([[0.0], [1.0], [2.0], [10.0]])
    assert k_center_select(f, 3) == [2, 3, 0]


@pytest.fixture(scope="module")
def coresets(demo_root, tmp_path_factory):
    out = tmp_path_factory.mktemp("coresets")
    for name, method in (("h1", "herding"), ("h2", "herding"), ("k1", "k_center")):
        coreset(demo_root / "train", out / name, ipc=3, method=method, seed=0)
    return out


def _src(d):
    return [e["source"] for e in json.loads((d / "manifest.json").read_text())["images"]]


def test_coresets_are_written_deterministically_and_differ(coresets):
    for name, method in (("h1", "herding"), ("k1", "k_center")):
        man = json.loads((coresets / name / "manifest.json").read_text())
        assert man["method"] == method and man["complete"] and len(man["images"]) == 30
        x, _, meta = load_distilled(coresets / name, [str(c) for c in range(10)])
        assert x.shape[0] == 30 and meta["ipc"] == 3 and meta["method"] == method
    assert _src(coresets / "h1") == _src(coresets / "h2")  # same seed, same features, same picks
    assert sorted(_src(coresets / "h1")) != sorted(_src(coresets / "k1"))


def test_full_real_and_wiring(demo_root, tmp_path):
    res = full_real(demo_root / "train")
    assert res["output"] == str(demo_root / "train") and res["images"] > 100
    ev = EvalConfig(baselines=["random_real", "k_center", "full_real"], image_size=32)
    sets, methods = baseline_sets(ev, demo_root / "train", tmp_path, ipc=2, log=lambda _m: None)
    assert methods == {"random_real_ipc2": "random_real", "k_center_ipc2": "k_center",
                       "full_real": "full_real"}
    assert set_ipc(sets["k_center_ipc2"]) == 2 and sets["full_real"] == str(demo_root / "train")
    with pytest.raises(ConfigError, match="data.root"):
        baseline_sets(ev, None, tmp_path, ipc=2)
    with pytest.raises(ConfigError, match="unknown coreset"):
        build_baseline("kmeans", demo_root / "train", tmp_path / "x", 2)
    with pytest.raises(DataError, match="fewer than ipc"):
        coreset(demo_root / "train", tmp_path / "big", ipc=100000, method="herding")
