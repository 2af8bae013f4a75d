"""The EDITS cluster stage's defaults reproduce the authors' released per-class computation.

Reference: einsteinxia/EDITS ``distillation/gen_prototype.py`` @ 9983f5a (``prototype_kmeans_ours``,
``initialize_km_models``, ``find_cluster_samples``), restated here by hand in numpy and sklearn:
raw CLIP features, ``W = softmax(I . T^T / tau)`` row-wise, fused = ``[I, W . T]``, ``KMeans(n_clusters=ipc,
random_state=seed, n_init=10)`` on the fused vectors as float64, each cluster's members ranked by Euclidean
distance to its centre, the ``k_image`` / ``k_text`` nearest kept.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans

from pipeline.cli import main
from pipeline.config import EditsConfig
from pipeline.edits.buffer import ClusterSettings, process_class

REPO = Path(__file__).resolve().parents[2]


def _class_features(seed: int, n: int = 40, d: int = 16, modes: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Raw CLIP-like projections: norms 5..20 (not unit vectors), captions near their images."""
    rng = np.random.default_rng(seed)
    img = rng.normal(size=(modes, d))[rng.integers(modes, size=n)] + 0.6 * rng.normal(size=(n, d))
    img *= rng.uniform(5, 20, size=(n, 1))
    txt = 0.5 * img + 4.0 * rng.normal(size=(n, d))
    return img.astype(np.float32), txt.astype(np.float32)


def _authors_by_hand(img: np.ndarray, txt: np.ndarray, ipc: int, seed: int, tau: float, k_image: int,
                     k_text: int) -> dict:
    sim = img @ txt.T / tau  # float32, as their CLIP outputs
    w = np.exp(sim - sim.max(axis=1, keepdims=True))
    w = w / w.sum(axis=1, keepdims=True)
    fused = np.concatenate([img, w @ txt], axis=1)
    x = np.array(fused.tolist())  # their features reach KMeans through Python lists: float64
    km = KMeans(n_clusters=ipc, random_state=seed, n_init=10).fit(x)
    image, text = [], []
    for c in range(ipc):
        members = np.flatnonzero(km.labels_ == c)
        dist = np.linalg.norm(x[members] - km.cluster_centers_[c], axis=1)
        ranked = members[np.argsort(dist, kind="stable")]
        image.append(ranked[:k_image].tolist())
        text.append(ranked[:k_text].tolist())
    return {"fused": fused, "labels": km.labels_, "centres": km.cluster_centers_, "image": image,
            "text": text}


@pytest.mark.parametrize("class_seed", [0, 1, 2])
def test_stage_defaults_equal_the_authors_formula(class_seed):
    e = EditsConfig()  # the defaults, nothing set
    img, txt = _class_features(class_seed)
    ref = _authors_by_hand(img, txt, ipc=e.ipc, seed=e.seed, tau=e.tau, k_image=e.k_image, k_text=e.k_text)
    got = process_class(f"class{class_seed}", img, txt, ClusterSettings.from_edits(e))
    assert got["fused"].shape == ref["fused"].shape == (40, 32)  # concat: [I, W . T]
    np.testing.assert_allclose(got["fused"], ref["fused"], rtol=1e-5, atol=1e-5)  # raw: never normalised
    assert got["keep"].all()  # contamination 0: no LocalOutlierFactor
    np.testing.assert_array_equal(got["assign"], ref["labels"])
    np.testing.assert_allclose(got["centroids"], ref["centres"], rtol=1e-5, atol=1e-5)
    assert [s["image_members"] for s in got["selections"]] == ref["image"]
    assert [s["text_members"] for s in got["selections"]] == ref["text"]


def test_the_defaults_are_the_authors_settings():
    e = EditsConfig()
    assert (e.fusion, e.feature_normalize, e.tau, e.feature_resample, e.clip_image_feature,
            e.resize_mode) == (
        "concat", False, 0.01, "bilinear", "raw_cls", "squash")
    assert (e.contamination, e.lof_neighbors, e.kmeans_nredo, e.kmeans_init, e.k_image, e.k_text) == (
        0.0, 10, 10, "k-means++", 5, 5)


@pytest.mark.parametrize("config", ["edits_imagenet1k.yaml", "edits_imagewoof.yaml", "demo_edits.yaml"])
def test_print_config_shows_the_authors_gsq(config, capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["run", f"configs/{config}", "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  fusion: concat\n" in out and "  feature_normalize: false\n" in out
    assert "  feature_resample: bilinear\n" in out and "  tau: 0.01\n" in out
