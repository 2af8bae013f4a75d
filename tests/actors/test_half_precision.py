"""Issue 12, item 19: every zoo actor loads and runs in bfloat16 on CPU through the loaders the stages use.

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
    img = sd({"key": np.array(["k"], dtype=object), "latent": [lat[0]], "prompt": np.array(["a digit"], dtype=object),
              "seed": np.array([1])})["image"]
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
