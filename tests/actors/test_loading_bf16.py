"""Every zoo actor loads and runs in bfloat16 on CPU through the loaders the stages use.

diffusers 0.42 honours ``dtype=`` in ``DiffusionPipeline.from_pretrained`` and
``ModelMixin.from_pretrained`` (``torch_dtype=`` is its deprecated alias), so the loaders pass ``dtype=``;
this test is the proof that the half-precision path really gets half-precision weights.
"""

from __future__ import annotations

import numpy as np
import torch

BF16 = torch.bfloat16


def _dtypes(module: torch.nn.Module) -> set[torch.dtype]:
    return {p.dtype for p in module.parameters()}


def _images(n: int, size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


def test_clip_vae_sd_dit_llm_load_and_run_in_bfloat16_on_cpu(zoo_dir):
    from actors.clip_embedder import ClipEmbedder
    from actors.dit import load_dit
    from actors.llm import TransformersChat
    from actors.sd import SDGenerator
    from actors.vae import VaeEncoder

    clip = ClipEmbedder("zoo:clip", dtype="bfloat16", device="cpu")
    assert _dtypes(clip.model) == {BF16}
    out = clip({"path": np.array(["a"], dtype=object), "caption": np.array(["a digit"], dtype=object),
                "image": _images(1, 32), "error": np.array([""], dtype=object)})
    assert out["img_feat"].dtype == np.float32 and np.isfinite(out["img_feat"]).all()
    assert np.isfinite(out["txt_feat"]).all()

    vae = VaeEncoder("zoo:sd", subfolder="vae", dtype="bfloat16", device="cpu")
    assert _dtypes(vae.vae) == {BF16}
    lat = vae({"path": np.array(["a"], dtype=object), "image": _images(1, 32),
               "error": np.array([""], dtype=object)})["latent"]
    assert lat.dtype == np.float32 and lat.shape == (1, 4, 16, 16) and np.isfinite(lat).all()

    sd = SDGenerator("zoo:sd", {"num_inference_steps": 2, "image_size": 16}, dtype="bfloat16", device="cpu")
    for part in (sd.pipe.unet, sd.pipe.vae, sd.pipe.text_encoder):
        assert _dtypes(part) == {BF16}
    img = sd({"key": np.array(["k"], dtype=object), "latent": [lat[0]],
              "prompt": np.array(["a digit"], dtype=object), "seed": np.array([1])})["image"]
    assert img.dtype == np.uint8 and img.shape == (1, 16, 16, 3)

    transformer, dit_vae, _ = load_dit("zoo:dit", dtype="bfloat16", device="cpu")
    assert _dtypes(transformer) == {BF16} and _dtypes(dit_vae) == {BF16}
    cfg = transformer.config
    z = torch.zeros(1, cfg.in_channels, cfg.sample_size, cfg.sample_size, dtype=BF16)
    with torch.no_grad():
        pred = transformer(z, timestep=torch.tensor([10]), class_labels=torch.tensor([3])).sample
    assert pred.dtype == BF16 and torch.isfinite(pred.float()).all()

    chat = TransformersChat("zoo:llm", dtype="bfloat16", device="cpu")
    assert _dtypes(chat.model) == {BF16}
    text = chat.generate([[{"role": "user", "content": "Describe a tench."}]], 4)
    assert len(text) == 1 and isinstance(text[0], str)


def _channels_last(module: torch.nn.Module) -> bool:
    ws = [m.weight for m in module.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[1] > 1
          and m.weight.shape[2] * m.weight.shape[3] > 1]
    return (bool(ws)
            and all(w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous() for w in ws))


def test_bfloat16_with_channels_last_runs_through_sd_vae_and_dit_actors(zoo_dir):
    """The CUDA defaults' code path (bf16 weights, NHWC convolutions, SDPA) on the CPU."""
    from actors.dit import DiTRecoverActor
    from actors.sd import SDGenerator
    from actors.vae import VaeEncoder

    vae = VaeEncoder("zoo:sd", subfolder="vae", dtype="bfloat16", device="cpu", channels_last=True)
    assert _dtypes(vae.vae) == {BF16} and _channels_last(vae.vae)
    lat = vae({"path": np.array(["a"], dtype=object), "image": _images(1, 32),
               "error": np.array([""], dtype=object)})["latent"]
    assert lat.dtype == np.float32 and lat.shape == (1, 4, 16, 16) and np.isfinite(lat).all()

    sd = SDGenerator("zoo:sd", {"num_inference_steps": 2, "image_size": 16}, dtype="bfloat16", device="cpu",
                     channels_last=True)
    assert _channels_last(sd.pipe.unet) and _channels_last(sd.pipe.vae) and _dtypes(sd.pipe.unet) == {BF16}
    img = sd({"key": np.array(["k"], dtype=object), "latent": [lat[0]],
              "prompt": np.array(["a digit"], dtype=object), "seed": np.array([1])})["image"]
    assert img.dtype == np.uint8 and img.shape == (1, 16, 16, 3) and img.std() > 0

    dit = DiTRecoverActor("zoo:dit", {"num_inference_steps": 4, "start_step": 2, "fusion_window": (3, 2)},
                          resolution=32, dtype="bfloat16", device="cpu", channels_last=True)
    assert _dtypes(dit.transformer) == {BF16} and _channels_last(dit.vae)
    out = dit({"image": _images(2, 32), "dit_class": np.array([1, 3]), "seed": np.array([5, 6]),
               "key": np.array(["a", "b"])})["recovered"]
    assert out.dtype == np.uint8 and out.shape == (2, 32, 32, 3) and out.std() > 0
