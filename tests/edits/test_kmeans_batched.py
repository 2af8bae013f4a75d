"""The batched k-means (all starts at once) and the cluster stage's scheduler (many classes per Ray task)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.config import EditsConfig, RayConfig
from pipeline.edits import buffer


def _blobs(seed: int, n: int = 400, d: int = 48, blobs: int = 8, spread: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(blobs, d))[rng.integers(blobs, size=n)] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _objective(x: np.ndarray, c: np.ndarray, a: np.ndarray) -> float:
    return float(((x.astype(np.float64) - c.astype(np.float64)[a]) ** 2).sum())


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_batched_kmeans_equals_the_start_by_start_code(seed, init):
    x = _blobs(seed)
    c, a = buffer.kmeans(x, 8, seed=seed, gpu=False, init=init)
    c0, a0 = buffer._kmeans_sequential(x, 8, 300, 10, seed, False, 1e-4, init)  # the code before batching
    np.testing.assert_array_equal(a, a0)
    assert _objective(x, c, a) == pytest.approx(_objective(x, c0, a0), rel=1e-9)
    np.testing.assert_array_equal(a, np.argmin(buffer.sq_distances(x, c), axis=1))  # exact nearest, float64


def test_seeding_draws_the_same_random_numbers_as_the_sequential_seeding():
    x = _blobs(1)
    first, u = buffer._pp_draws(np.random.default_rng(3), len(x), 8, 10)
    idx = buffer._pp_init_batched(x, (x.astype(np.float64) ** 2).sum(1), 8, first, u)
    rng = np.random.default_rng(3)
    for j in range(10):
        np.testing.assert_array_equal(x[idx[j]], buffer.kmeans_pp_init(x, 8, rng))


def test_a_class_with_fewer_distinct_points_than_k_falls_back_and_still_matches():
    x = np.repeat(_blobs(2, n=3), 20, axis=0)  # 3 distinct points, k = 5: the seeding runs out of mass
    first, u = buffer._pp_draws(np.random.default_rng(0), len(x), 5, 2)
    assert buffer._pp_init_batched(x, (x.astype(np.float64) ** 2).sum(1), 5, first, u) is None
    c, a = buffer.kmeans(x, 5, nredo=2, seed=0, gpu=False)
    c0, a0 = buffer._kmeans_sequential(x, 5, 300, 2, 0, False, 1e-4, "k-means++")
    np.testing.assert_array_equal(a, a0)
    np.testing.assert_array_equal(c, c0)


def test_cluster_classes_batches_classes_per_task_and_returns_each_classes_own_result(ray_local):
    settings = buffer.ClusterSettings.from_edits(EditsConfig(ipc=4, kmeans_nredo=3, seed=5))
    classes = {f"c{i}": _blobs(10 + i, n=60, d=16) for i in range(5)}
    items = ((c, (c, x)) for c, x in classes.items())
    cfg = RayConfig(cluster_classes_per_task=2, actor_num_cpus=0.5)
    got = dict(buffer.cluster_classes(items, settings, cfg, fn=buffer.kmeans_class))
    assert sorted(got) == sorted(classes)
    for c, x in classes.items():
        ref_c, ref_a = buffer.kmeans_class(c, x, settings)
        np.testing.assert_array_equal(got[c][1], ref_a)
        np.testing.assert_array_equal(got[c][0], ref_c)
    assert RayConfig().cluster_classes_per_task == 8


def test_starts_that_tie_to_the_last_bits_keep_the_earliest_on_both_paths():
    # the same partition reached by starts 1 and 3, differing only by float32 rounding (seen: 3e-8)
    assert buffer.best_start([113.4, 77.73002, 4e3, 77.73002 * (1 - 3e-8)]) == 1
    assert buffer.best_start([5.0, 2.0, 4.0, 1.9]) == 3
    assert buffer.best_start([3.0, 2.0, 2.0 * (1 - 1e-5)]) == 2  # a real improvement wins
