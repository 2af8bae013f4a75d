"""EDITS actors on the tiny zoo: captioner, CLIP, VAE prototypes, and what the SD stage receives."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import Config
from pipeline.edits import prompts
from pipeline.edits.state import Artefacts


def _images(n: int, size: int = 32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_captioner_names_the_class_and_respects_the_token_cap(zoo_dir):
    from actors.captioner import Captioner

    cap = Captioner("zoo:vlm", {"3": "handwritten digit three"}, max_tokens=12,
                    count_tokenizer_ref="zoo:clip")
    assert cap.style == "prefix"  # the zoo BLIP has no chat template
    batch = {"path": np.array(["p0", "p1", "bad"], dtype=object),
             "class_id": np.array(["3", "3", "3"], dtype=object),
             "image": _images(3), "error": np.array(["", "", "cannot decode: x"], dtype=object)}
    out = cap(batch)
    assert out["error"].tolist() == ["", "", "cannot decode: x"] and out["caption"][2] == ""
    for c in out["caption"][:2]:
        assert c.startswith("a photo of handwritten digit three")
        assert len(cap.count_tok(c)["input_ids"]) <= 12
    assert "image" not in out  # pixels never travel back to the driver


def test_captions_do_not_depend_on_the_ray_batch(zoo_dir):
    """Fixed micro-batches + prompts padded to the longest class prompt: one call of 7 rows == 7 calls of
    1."""
    from actors.captioner import Captioner

    names = {"0": "zero", "1": "handwritten digit one with a long name"}
    cap = Captioner("zoo:vlm", names, max_tokens=12, micro_batch=3)
    long_len = len(cap.processor.tokenizer(cap._prompts([names["1"]]))["input_ids"][0])
    assert cap.pad_to is not None and cap.pad_to >= long_len
    classes = np.array(["0", "1", "0", "0", "1", "1", "0"], dtype=object)
    batch = {"path": np.array([f"p{i}" for i in range(7)], dtype=object), "class_id": classes,
             "image": _images(7), "error": np.array([""] * 7, dtype=object)}
    together = cap(batch)["caption"].tolist()
    alone = [cap({k: v[i:i + 1] for k, v in batch.items()})["caption"][0] for i in range(7)]
    assert together == alone
    assert all(c.startswith("a photo of " + names[k]) for c, k in zip(together, classes))


def test_clip_embedder_returns_projected_features(zoo_dir):
    from actors.clip_embedder import ClipEmbedder, as_features

    # the default, raw_cls: tests/edits/test_edits_fidelity.py
    emb = ClipEmbedder("zoo:clip", image_feature="pooled")
    batch = {"path": np.array(["a", "b"], dtype=object),
             "caption": np.array(["a digit", "two"], dtype=object),
             "class_id": np.array(["0", "0"], dtype=object), "image": _images(2),
             "error": np.array(["", ""], dtype=object)}
    out = emb(batch)
    assert out["img_feat"].shape == (2, 32) and out["txt_feat"].shape == (2, 32) and "image" not in out
    # the same numbers as CLIPModel's own projected embeddings
    px = emb.processor(images=[Image.fromarray(i) for i in batch["image"]],
                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        ref = emb.model.visual_projection(emb.model.vision_model(pixel_values=px).pooler_output)
    np.testing.assert_allclose(out["img_feat"], ref.numpy(), atol=1e-5)
    assert torch.equal(as_features(SimpleNamespace(pooler_output=torch.ones(1))), torch.ones(1))
    assert torch.equal(as_features(torch.zeros(2)), torch.zeros(2))


def test_vae_latents_and_prototype_average(zoo_dir):
    from actors.vae import VaeEncoder
    from pipeline.core.pixels import u8_hwc_to_signed_chw
    from pipeline.edits.prototype import average_latents

    enc = VaeEncoder("zoo:sd", subfolder="vae")
    imgs = _images(3)
    out = enc({"path": np.array(["a", "b", "c"], dtype=object), "image": imgs,
               "error": np.array(["", "", ""], dtype=object)})
    lat = out["latent"]
    assert lat.shape == (3, 4, 16, 16)  # the zoo VAE downsamples by 2
    with torch.no_grad():
        ref = enc.vae.encode(u8_hwc_to_signed_chw(imgs)).latent_dist.mode() * enc.vae.config.scaling_factor
    np.testing.assert_allclose(lat, ref.numpy(), atol=1e-5)
    proto = average_latents(lat)
    np.testing.assert_allclose(proto, (lat[0] + lat[1] + lat[2]) / 3, atol=1e-6)
    assert proto.shape == (4, 16, 16)
    with pytest.raises(ValueError):
        average_latents(np.zeros((0, 4, 2, 2)))


class _RecordingPipe:
    """Stands in for StableDiffusionImg2ImgPipeline and records what each call receives."""

    def __init__(self):
        self.calls = []
        self.device = torch.device("cpu")

    def __call__(self, **kw):
        self.calls.append(kw)
        ims = [Image.new("RGB", (16, 16), (i * 40, 0, 0)) for i in range(len(kw["prompt"]))]
        return SimpleNamespace(images=ims)


def test_sd_stage_receives_each_clusters_latent_and_prompt(tmp_path):
    from actors.sd import SDGenerator
    from pipeline.core.seeds import image_seed
    from pipeline.edits.generate import build_rows
    from pipeline.edits.prototype import latent_file

    cfg = Config.model_validate({"edits": {"seed": 3}, "data": {"image_size": 24}})
    run = SimpleNamespace(cfg=cfg, paths=Artefacts(tmp_path))
    run.paths.latents.mkdir(parents=True)
    clusters = [{"key": "a_000", "class_id": "a", "label": 0, "cluster": 0},
                {"key": "a_001", "class_id": "a", "label": 0, "cluster": 1},
                {"key": "b_000", "class_id": "b", "label": 1, "cluster": 0}]
    saved = {}
    for i, cl in enumerate(clusters):
        saved[cl["key"]] = torch.full((4, 2, 2), float(i)) + torch.arange(4.0).view(4, 1, 1)
        torch.save({"latent": saved[cl["key"]]}, latent_file(run, cl["key"]))
    texts = {cl["key"]: {"text": f"prototype text of {cl['key']}"} for cl in clusters}
    rows = build_rows(run, clusters, texts)
    assert [r["seed"] for r in rows] == [image_seed(3, "a", 0), image_seed(3, "a", 1), image_seed(3, "b", 0)]
    rows = rows[::-1]  # any order: each row carries its own latent, prompt and seed
    pipe = _RecordingPipe()
    gen = SDGenerator("unused", {"strength": 0.6, "guidance_scale": 7.5, "negative_prompt": "cartoon",
                                 "num_inference_steps": 9, "image_size": 24}, pipe=pipe)
    batch = {k: np.array([r[k] for r in rows], dtype=object) for k in ("key", "prompt")}
    batch["latent"] = np.stack([r["latent"] for r in rows])
    batch["seed"] = np.array([r["seed"] for r in rows])
    out = gen(batch)
    (call,) = pipe.calls
    for i, r in enumerate(rows):
        assert torch.equal(call["image"][i], saved[r["key"]])
        assert call["prompt"][i] == f"prototype text of {r['key']}"
        assert call["generator"][i].initial_seed() == r["seed"]
    assert call["negative_prompt"] == ["cartoon"] * 3 and call["strength"] == 0.6
    assert call["guidance_scale"] == 7.5 and call["num_inference_steps"] == 9
    assert out["key"].tolist() == [r["key"] for r in rows] and out["image"].shape == (3, 24, 24, 3)


def test_sd_img2img_seeds_are_per_image(zoo_dir):
    from actors.sd import GenerateSettings, img2img, load_img2img_pipeline

    pipe = load_img2img_pipeline("zoo:sd")
    settings = GenerateSettings(num_inference_steps=4, image_size=32)
    lat = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    both = img2img(pipe, lat, ["digit one", "digit two"], [11, 12], settings)
    second = img2img(pipe, lat[1:], ["digit two"], [12], settings)
    assert both[0].shape == (32, 32, 3) and both[0].dtype == np.uint8
    np.testing.assert_allclose(both[1].astype(int), second[0].astype(int), atol=2)  # batch-independent
    other = img2img(pipe, lat[1:], ["digit two"], [13], settings)
    assert np.abs(other[0].astype(int) - second[0].astype(int)).mean() > 1  # the seed matters
    assert prompts.words_for_tokens(77) == 55
