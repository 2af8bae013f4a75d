"""Our steps against the authors' released code."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.hygiene import clean_llm_output
from pipeline.edits import prompts

DINGO = "dingo, warrigal, warragal, Canis dingo"  # ImageNet's name table, synonyms comma-separated


# ---- 13. synonym class names -----------------------------------------------------------------


def test_any_synonym_counts_as_a_mention_and_only_the_first_is_prepended():
    assert prompts.synonyms(DINGO) == ["dingo", "warrigal", "warragal", "Canis dingo"]
    assert prompts.mentions("a warrigal trotting on red sand", DINGO)
    assert prompts.mentions("a Canis  dingo at dusk", DINGO)
    assert not prompts.mentions("a wild dog at dusk", DINGO)
    assert prompts.ensure_class_name("a warrigal on sand", DINGO) == "a warrigal on sand"
    assert prompts.ensure_class_name("a wild dog at dusk", DINGO) == "dingo: a wild dog at dusk"
    out = prompts.clean_generated("A wild dog at dusk.", DINGO, max_tokens=77)
    assert out == "dingo: A wild dog at dusk."
    assert prompts.clean_generated("  ", DINGO, max_tokens=77) == "dingo"  # fallback: the first name only
    assert prompts.caption_prefix(DINGO) == "a photo of dingo,"


def test_instructions_say_that_one_of_the_names_is_enough():
    cap = prompts.caption_instruction(DINGO)
    assert "use one of these exact names" in cap and cap.endswith(f'Class name: "{DINGO}"')
    user = prompts.summary_messages(DINGO, ["a dingo"], 77)[1]["content"]
    assert "keep one of the exact class names" in user


# ---- 17. LLM output cleanup drops preambles ------------------------------------------------------


@pytest.mark.parametrize("raw", [
    "Here is a representative description of the beagle:\n\nA beagle with a tricolour coat sniffs the grass.",
    "Sure! Here's a representative description: A beagle with a tricolour coat sniffs the grass.",
    "Certainly.\n\nA beagle with a tricolour coat sniffs the grass.",
    ("assistant: Sure, here is the description of \"beagle\":\n**A beagle with a tricolour coat sniffs the "
     "grass.**"),
])
def test_clean_output_drops_the_preamble_and_keeps_the_description(raw):
    assert clean_llm_output(raw) == "A beagle with a tricolour coat sniffs the grass."


def test_clean_output_keeps_names_that_look_like_fillers():
    assert clean_llm_output("Great Dane lying on a sofa") == "Great Dane lying on a sofa"
    assert (clean_llm_output("This is a beagle: small and tricolour")
            == "This is a beagle: small and tricolour")


# ---- 18. the LLM seeds every row with its own seed -------------------------------------------------


def test_sampled_text_depends_on_the_row_seed_not_on_the_batch(zoo_dir):
    from actors.llm import TransformersChat

    chat = TransformersChat("zoo:llm", device="cpu", pad_to=64)
    a = [{"role": "user", "content": "Describe a tench."}]
    b = [{"role": "user", "content": "Describe a dingo in the desert."}]
    together = chat.generate([a, b], 12, temperature=1.0, seeds=[1, 2])
    alone_b = chat.generate([b], 12, temperature=1.0, seeds=[2])
    alone_a = chat.generate([a], 12, temperature=1.0, seeds=[1])
    assert together == [alone_a[0], alone_b[0]]
    assert chat.generate([b], 12, temperature=1.0, seeds=[3]) != alone_b  # it does sample
    state = torch.random.get_rng_state()
    chat.generate([a], 4, temperature=1.0, seeds=[5])
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's RNG is left alone


# ---- 14. CLIP image feature: the projected raw CLS token --------------------------------------------


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_clip_image_feature_is_the_projected_raw_cls_token_by_default(zoo_dir):
    from PIL import Image

    from actors.clip_embedder import ClipEmbedder
    from pipeline.config import Config

    emb = ClipEmbedder("zoo:clip")
    batch = {"path": np.array(["a", "b"], dtype=object), "caption": np.array(["a", "b"], dtype=object),
             "image": _images(2), "error": np.array(["", ""], dtype=object)}
    got = emb(batch)["img_feat"]
    px = emb.processor(images=[Image.fromarray(i) for i in batch["image"]],
                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        hidden = emb.model.vision_model(pixel_values=px).last_hidden_state[:, 0]
        raw = emb.model.visual_projection(hidden).numpy()
        pooled = emb.model.visual_projection(emb.model.vision_model.post_layernorm(hidden)).numpy()
    np.testing.assert_allclose(got, raw, atol=1e-5)
    assert np.abs(got - pooled).max() > 1e-3  # post_layernorm is not applied
    assert Config().edits.clip_image_feature == "raw_cls"
    np.testing.assert_allclose(ClipEmbedder("zoo:clip", image_feature="pooled")(batch)["img_feat"], pooled,
                               atol=1e-5)


# ---- 16. resizing: squash for CLIP (224) and the VAE (512, LANCZOS) ---------------------------------


def _bands(path) -> np.ndarray:
    """A 60x20 image: red, green and blue vertical bands of 20 px."""
    from PIL import Image

    arr = np.zeros((20, 60, 3), np.uint8)
    arr[:, :20, 0] = arr[:, 20:40, 1] = arr[:, 40:, 2] = 255
    Image.fromarray(arr).save(path)
    return arr


def test_clip_and_vae_inputs_are_squashed_not_cropped(tmp_path):
    from PIL import Image

    from pipeline.config import Config
    from pipeline.core.read import decode_batch
    from pipeline.edits.embed import decode_kwargs as clip_kwargs
    from pipeline.edits.prototype import decode_kwargs as vae_kwargs

    arr = _bands(tmp_path / "bands.png")
    batch = {"path": np.array([str(tmp_path / "bands.png")], dtype=object)}
    e = Config().edits
    clip = decode_batch(batch, **clip_kwargs(e))["image"][0]
    assert clip.shape == (224, 224, 3)
    assert clip[112, 10].tolist() == [255, 0, 0] and clip[112, 213].tolist() == [0, 0, 255]  # all bands kept
    # the authors' loader: bilinear
    expect = np.asarray(Image.fromarray(arr).resize((224, 224), Image.BILINEAR))
    np.testing.assert_array_equal(clip, expect)
    vae = decode_batch(batch, **vae_kwargs(e))["image"][0]
    np.testing.assert_array_equal(vae, np.asarray(Image.fromarray(arr).resize((512, 512), Image.LANCZOS)))
    crop = decode_batch(batch, **{**clip_kwargs(e), "mode": "crop"})["image"][0]  # the setting's other value
    assert crop[112, 10].tolist() == [0, 255, 0] and crop[112, 213].tolist() == [0, 255, 0]


# ---- 15. k-means as the authors' sklearn KMeans: k-means++, n_init 10, to convergence ----------------


def _unit_blobs(seed: int, n: int = 300, d: int = 64, blobs: int = 10, spread: float = 0.6) -> np.ndarray:
    """CLIP-like features: unit vectors around ``blobs`` random directions."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(blobs, d))[rng.integers(blobs, size=n)] + spread * rng.normal(size=(n, d))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _objective(x: np.ndarray, centroids: np.ndarray, assign: np.ndarray) -> float:
    return float(((x.astype(np.float64) - np.asarray(centroids, np.float64)[assign]) ** 2).sum())


@pytest.mark.parametrize("seed", range(6))
def test_kmeans_objective_is_no_worse_than_sklearn(seed):
    from sklearn.cluster import KMeans

    from pipeline.config import Config
    from pipeline.edits.buffer import ClusterSettings, kmeans

    x = _unit_blobs(seed)
    c, a = kmeans(x, 10, seed=1)
    ref = KMeans(n_clusters=10, n_init=10, max_iter=300, tol=1e-4, random_state=0).fit(x)
    ours, theirs = _objective(x, c, a), _objective(x, ref.cluster_centers_, ref.labels_)
    assert ours <= theirs * (1 + 1e-6), (ours, theirs)  # random starts + 20 iterations: up to 20% worse here
    np.testing.assert_array_equal(a, np.argmin(((x[:, None] - c[None]) ** 2).sum(-1), 1))  # labels = nearest
    s = ClusterSettings.from_edits(Config().edits).as_dict()  # the stage runs the same defaults
    assert (s["init"], s["nredo"], s["niter"], s["tol"],
            s["lof_neighbors"]) == ("k-means++", 10, 300, 1e-4, 10)


def test_kmeans_is_seeded():
    from pipeline.edits.buffer import kmeans

    x = _unit_blobs(3)
    c1, a1 = kmeans(x, 10, seed=4)
    c2, a2 = kmeans(x, 10, seed=4)
    np.testing.assert_array_equal(c1, c2)
    np.testing.assert_array_equal(a1, a2)
    assert len(np.unique(a1)) == 10


# ---- 20. the ImageWoof config is the authors' ImageNet-1K subset -------------------------------------


def test_imagewoof_config_reads_the_imagenet_1k_subset():
    from pathlib import Path

    from pipeline.config import load_config

    cfg = load_config(Path(__file__).resolve().parents[2] / "configs" / "edits_imagewoof.yaml")
    assert cfg.data.root.endswith("imagenet/train") and cfg.data.val_root.endswith("imagenet/val")
    assert cfg.data.classes == ["n02086240", "n02087394", "n02088364", "n02089973", "n02093754",
                                "n02096294", "n02099601", "n02105641", "n02111889", "n02115641"]
    assert cfg.data.max_per_class is None  # every train image of the 10 classes
    e = cfg.edits
    assert (e.kmeans_init, e.kmeans_niter, e.resize_mode,
            e.clip_image_feature) == ("k-means++", 300, "squash",
                                                                                     "raw_cls")
