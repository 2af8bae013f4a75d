"""EDITS math: GSQ against a hand-computed example, LSA against brute force, sklearn k-means, LOF, policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.config import EditsConfig
from pipeline.edits.buffer import ClusterSettings, clusters_for, kmeans, lof_filter, process_class
from pipeline.edits.gsq import gsq_fuse, l2_normalize, softmax
from pipeline.edits.lsa import rank_by_distance, select
from pipeline.errors import DataError

# ---- GSQ ---------------------------------------------------------------------------------------


def test_gsq_matches_hand_computed_example():
    img = np.array([[1.0, 0.0]])
    txt = np.array([[1.0, 0.0], [0.0, 1.0]])
    # logits = [1, 0] / tau with tau = 1 -> w = [e, 1] / (e + 1)
    w0, w1 = math.e / (math.e + 1), 1 / (math.e + 1)
    fused = np.array([1 + w0, w1])
    expected = fused / math.hypot(*fused)  # [1.731059, 0.268941] / 1.751825
    out = gsq_fuse(img, txt, tau=1.0, fusion="sum", normalize=True)
    np.testing.assert_allclose(out[0], expected, atol=1e-6)
    np.testing.assert_allclose(out[0], [0.988146, 0.153521], atol=1e-5)


def test_gsq_concat_and_unnormalised_variants():
    img = np.array([[3.0, 4.0]])  # norm 5: normalised to [0.6, 0.8]
    txt = np.array([[0.0, 2.0]])  # one caption: w = [1] whatever tau
    raw = gsq_fuse(img, txt, tau=0.5, fusion="sum", normalize=False)
    np.testing.assert_allclose(raw[0], [3.0, 6.0])  # plain sum, no normalisation
    cat = gsq_fuse(img, txt, tau=0.5, fusion="concat", normalize=True)
    expected = np.array([0.6, 0.8, 0.0, 1.0]) / math.sqrt(2.0)
    np.testing.assert_allclose(cat[0], expected, atol=1e-6)
    assert cat.shape == (1, 4) and cat.dtype == np.float32


def test_gsq_small_tau_picks_the_nearest_caption():
    rng = np.random.default_rng(0)
    img = l2_normalize(rng.normal(size=(6, 8)))
    txt = l2_normalize(rng.normal(size=(5, 8)))
    out = gsq_fuse(img, txt, tau=1e-4, fusion="sum", normalize=True)
    nearest = txt[np.argmax(img @ txt.T, axis=1)]
    np.testing.assert_allclose(out, l2_normalize(img + nearest), atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)


def test_gsq_rejects_bad_input_and_softmax_is_stable():
    with pytest.raises(ValueError, match="tau"):
        gsq_fuse(np.ones((1, 2)), np.ones((1, 2)), tau=0)
    with pytest.raises(ValueError, match="same D"):
        gsq_fuse(np.ones((1, 2)), np.ones((1, 3)))
    with pytest.raises(ValueError, match="fusion"):
        gsq_fuse(np.ones((1, 2)), np.ones((1, 2)), fusion="mean")
    p = softmax(np.array([[1000.0, 999.0]]))  # exp(1000) would overflow without the max shift
    np.testing.assert_allclose(p, [[1 / (1 + math.exp(-1)), 1 / (1 + math.e)]])


# ---- LSA ---------------------------------------------------------------------------------------


def test_lsa_selection_equals_brute_force():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(60, 5))
    centroids = rng.normal(size=(4, 5))
    assign = np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), axis=1)
    sel = select(x, assign, centroids, k_image=5, k_text=3)
    for c, s in enumerate(sel):
        members = [i for i in range(len(x)) if assign[i] == c]
        brute = sorted(members, key=lambda i: (float(np.sum((x[i] - centroids[c]) ** 2)), i))
        assert s.members == brute and not s.empty
        assert s.image_members == brute[:5] and s.text_members == brute[:3]
        np.testing.assert_allclose(s.distances, [np.sum((x[i] - centroids[c]) ** 2) for i in brute])


def test_lsa_ties_break_by_index_and_empty_cluster_borrows_nearest():
    x = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [5.0, 5.0]])
    ranked, d = rank_by_distance(x, np.zeros(2), np.array([2, 0, 1]))
    assert ranked.tolist() == [0, 1, 2] and d.tolist() == [1.0, 1.0, 1.0]
    assign = np.array([0, 0, 0, -1])  # row 3 is an outlier; cluster 1 got no members
    sel = select(x, assign, np.array([[0.0, 0.0], [4.0, 4.0]]), k_image=2, k_text=1,
                 candidates=np.array([0, 1, 2]))
    assert sel[1].empty and sel[1].members == []
    # nearest clustered rows, never the outlier
    assert sel[1].image_members == [0, 1] and sel[1].text_members == [0]


# ---- k-means, LOF, small classes ---------------------------------------------------------------


def _blobs(seed: int = 0, n: int = 30) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = np.array([[10, 0, 0], [0, 10, 0], [0, 0, 10]], dtype=np.float32)  # apart also after L2 norm
    labels = np.repeat(np.arange(3), n)
    return (centers[labels] + rng.normal(scale=0.3, size=(3 * n, 3))).astype(np.float32), labels


def test_kmeans_counts_recovery_and_determinism():
    x, labels = _blobs()
    c1, a1 = kmeans(x, 3, seed=7, n_init=3, max_iter=20)
    c2, a2 = kmeans(x, 3, seed=7, n_init=3, max_iter=20)
    assert c1.shape == (3, 3) and a1.shape == (90,)
    assert sorted(np.unique(a1).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(a1, a2)
    np.testing.assert_array_equal(c1, c2)
    # each true blob maps to exactly one cluster (a permutation), each of size 30
    mapping = {int(t): set(a1[labels == t].tolist()) for t in range(3)}
    assert all(len(v) == 1 for v in mapping.values()) and len(set.union(*mapping.values())) == 3
    assert sorted(np.bincount(a1).tolist()) == [30, 30, 30]
    for k in (1, 2, 5):
        _, a = kmeans(x, k, seed=1, n_init=1)
        assert len(np.unique(a)) == k
    with pytest.raises(ValueError, match="1 <= k <= n"):
        kmeans(x[:2], 3, seed=0)


def test_lof_removes_a_planted_outlier_but_keeps_enough():
    x, _ = _blobs(n=20)
    x = np.concatenate([x, [[100.0, 100.0, 100.0]]]).astype(np.float32)
    keep = lof_filter(x, contamination=0.02, n_neighbors=10)
    assert not keep[-1] and keep[:-1].sum() >= 58
    assert lof_filter(x, 0.0).all()
    keep = lof_filter(x, contamination=0.4, n_neighbors=10, min_keep=55)
    assert keep.sum() == 55 and not keep[-1]  # the most outlying stays out


def test_small_class_policy():
    assert clusters_for(12, 10, "error") == (10, None)
    with pytest.raises(DataError, match=r"class 'n01' has 3 usable images, fewer than ipc=10.*shrink"):
        clusters_for(3, 10, "error", "n01")
    with pytest.warns(UserWarning, match="using 3 clusters"):
        k, msg = clusters_for(3, 10, "shrink", "n01")
    assert k == 3 and "shrink" in msg
    with pytest.raises(DataError, match="no usable images"):
        clusters_for(0, 10, "shrink", "n01")


def test_cluster_settings_come_only_from_the_edits_section():
    with pytest.raises(TypeError):
        ClusterSettings(ipc=3)  # no defaults of its own: they would shadow the config's
    e = EditsConfig(ipc=7, seed=1, tau=0.5, fusion="concat", feature_normalize=False, contamination=0.1,
                    lof_neighbors=9, small_class_policy="shrink", kmeans_niter=3, kmeans_nredo=4,
                    kmeans_tol=1e-3, kmeans_init="random", k_image=2, k_text=6)
    assert ClusterSettings.from_edits(e).as_dict() == {
        "ipc": 7, "seed": 1, "tau": 0.5, "fusion": "concat", "normalize": False, "contamination": 0.1,
        "lof_neighbors": 9, "policy": "shrink", "niter": 3, "nredo": 4, "tol": 1e-3, "init": "random",
        "k_image": 2, "k_text": 6}


def test_process_class_end_to_end_on_blobs():
    x, labels = _blobs(n=10)
    txt = x + 0.01
    s = ClusterSettings.from_edits(EditsConfig(ipc=3, k_image=4, k_text=2, kmeans_nredo=2, seed=5))
    res = process_class("c", x, txt, s)
    assert res["k"] == 3 and res["fused"].shape == (30, 6) and res["keep"].all()  # concat: [img, W . txt]
    sizes = sorted(len(c["members"]) for c in res["selections"])
    assert sizes == [10, 10, 10]
    for c in res["selections"]:
        assert len(c["image_members"]) == 4 and len(c["text_members"]) == 2
        assert len({int(labels[i]) for i in c["members"]}) == 1  # a cluster is one blob
    again = process_class("c", x, txt, s)
    assert [c["members"] for c in again["selections"]] == [c["members"] for c in res["selections"]]
    with pytest.warns(UserWarning):
        small = process_class("c", x[:2], txt[:2], ClusterSettings.from_edits(
            EditsConfig(ipc=3, small_class_policy="shrink", k_image=1, k_text=1)))
    assert small["k"] == 2 and len(small["selections"]) == 2 and "shrink" in small["warning"]


def test_min_snr_weights_match_the_formula():
    """Fine-tune loss weights min(SNR, gamma) / SNR from the linear-beta schedule, by hand."""
    from diffusers import DDPMScheduler

    from tuning.finetune_sd import min_snr_weights

    sched = DDPMScheduler(num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear")
    betas = np.linspace(1e-4, 0.02, 1000)
    t = torch.tensor([0, 50, 999])
    ab = np.cumprod(1 - betas)[[0, 50, 999]]
    snr = ab / (1 - ab)
    expected = np.minimum(snr, 5.0) / snr
    got = min_snr_weights(sched, t, 5.0).numpy()
    assert np.allclose(got, expected, rtol=1e-3)  # the scheduler keeps alphas_cumprod in float32
    # clipped / not clipped
    assert got[0] == pytest.approx(5.0 / snr[0], rel=1e-3) and got[2] == pytest.approx(1.0)
    v = DDPMScheduler(num_train_timesteps=1000, prediction_type="v_prediction")
    assert np.allclose(min_snr_weights(v, t, 5.0).numpy(), np.minimum(snr, 5.0) / (snr + 1), rtol=1e-3)
