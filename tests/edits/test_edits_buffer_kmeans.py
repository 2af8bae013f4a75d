"""The cluster stage's k-means is scikit-learn's ``KMeans`` with the authors' arguments, and its scheduler
(many classes per Ray task) returns each class's own result."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.cluster import KMeans
from threadpoolctl import threadpool_limits

from pipeline.config import EditsConfig, RayConfig
from pipeline.edits import buffer


def _blobs(seed: int, n: int = 400, d: int = 48, blobs: int = 8, spread: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(blobs, d))[rng.integers(blobs, size=n)] + spread * rng.normal(size=(n, d))
    return (x * rng.uniform(5, 20, size=(n, 1))).astype(np.float32)  # raw-projection-like norms


def _sklearn(x: np.ndarray, k: int, seed: int, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
             init: str = "k-means++") -> KMeans:
    with threadpool_limits(limits=1, user_api="openmp"):
        return KMeans(n_clusters=k, random_state=seed, n_init=n_init, max_iter=max_iter, tol=tol,
                      init=init).fit(x.astype(np.float64))


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("init", ["k-means++", "random"])
def test_stage_centres_and_labels_equal_sklearn_for_the_same_seed(seed, init):
    x = _blobs(seed)
    s = buffer.ClusterSettings.from_edits(EditsConfig(ipc=8, seed=seed, kmeans_init=init))
    c, a = buffer.kmeans_class("n01440764", x, s)
    ref = _sklearn(x, 8, seed, init=init)
    np.testing.assert_array_equal(a, ref.labels_)
    np.testing.assert_array_equal(c, ref.cluster_centers_)
    assert c.dtype == np.float64 and a.dtype == np.int64


def test_settings_map_onto_sklearns_arguments():
    x = _blobs(7, n=120)
    s = buffer.ClusterSettings.from_edits(EditsConfig(ipc=5, seed=3, kmeans_nredo=2, kmeans_niter=4,
                                                      kmeans_tol=0.0))
    c, a = buffer.kmeans_class("c", x, s)
    ref = _sklearn(x, 5, 3, n_init=2, max_iter=4, tol=0.0)
    np.testing.assert_array_equal(a, ref.labels_)
    np.testing.assert_array_equal(c, ref.cluster_centers_)


def test_every_class_is_seeded_with_the_runs_seed():
    x = _blobs(2, n=100)
    s = buffer.ClusterSettings.from_edits(EditsConfig(ipc=6, seed=11))
    ca, aa = buffer.kmeans_class("n01440764", x, s)
    cb, ab = buffer.kmeans_class("n02102040", x, s)
    np.testing.assert_array_equal(aa, ab)
    np.testing.assert_array_equal(ca, cb)
    ref = _sklearn(x, 6, 11)  # the authors' random_state=args.seed, the same for every class
    np.testing.assert_array_equal(aa, ref.labels_)


def test_kmeans_rejects_bad_k_and_init():
    x = _blobs(0, n=5)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        buffer.kmeans(x, 6, seed=0)
    with pytest.raises(ValueError, match="edits.kmeans_init"):
        buffer.kmeans(x, 2, seed=0, init="greedy")


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
