"""bench/kmeans.py at a tiny size: its features, its inertia by hand, and its sklearn-vs-stage comparison."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.bench.bench_output import printed_ratio

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))

import kmeans


def test_kmeans_features_are_unit_vectors_and_reproducible():
    a = kmeans.class_features(3, 50, 16, 4, seed=1)
    assert a.shape == (50, 16) and a.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(a, kmeans.class_features(3, 50, 16, 4, seed=1))
    assert not np.array_equal(a, kmeans.class_features(4, 50, 16, 4, seed=1))


def test_inertia_matches_hand_computation():
    x = np.array([[0, 0], [1, 0], [10, 0]], np.float32)
    c = np.array([[0.5, 0], [10, 0]], np.float32)
    assert kmeans.inertia(x, c) == pytest.approx(0.25 + 0.25 + 0.0)


def test_kmeans_bench_small(tmp_path, capsys):
    out_json = tmp_path / "k.json"
    assert kmeans.main(["--classes", "2", "--per-class", "300", "--dim", "32", "--k", "4",
                        "--json-out", str(out_json)]) == 0
    out = capsys.readouterr().out
    ratio = printed_ratio(out)
    res = json.loads(out_json.read_text())
    assert ratio == pytest.approx(res["ratio"], rel=1e-2) and ratio > 0
    assert res["seconds"]["sklearn"] > 0 and res["seconds"]["ours"] > 0
    # same data, both near the same optimum: the speed comparison is like for like
    assert res["objective"]["ours"] == pytest.approx(res["objective"]["sklearn"], rel=1e-6)  # same optimum
    assert res["costs"]["cluster"] > 0
