"""VAE encoder for image prototypes (EDITS step 6): ``latent_dist.mode() * scaling_factor``.

``subfolder="vae"`` loads the VAE of a diffusers pipeline folder (``edits.vae_source=sd``:
the generator's own VAE, so prototype latents live in the space its UNet was trained on).
"""

from __future__ import annotations

import numpy as np
import torch

from actors.gpu_defaults import ChannelsLast, apply_channels_last, use_sdpa_processors
from actors.loading import load_pretrained, pick_device, pick_dtype, set_torch_threads
from pipeline.core.faults import FaultInjector
from pipeline.core.pixels import u8_hwc_to_signed_chw


class VaeEncoder:
    """Ray Data actor: ``image`` -> ``latent`` (float32 ``[B, C, h, w]``, scaled), image dropped."""

    def __init__(self, model_ref: str, zoo_dir: str | None = None, subfolder: str | None = None,
                 dtype: str = "auto", faults: dict | None = None, device: str | None = None,
                 micro_batch: int | None = None, torch_threads: int | None = None,
                 channels_last: ChannelsLast = "auto") -> None:
        # heavy: diffusers (not loaded when this module is imported)
        from diffusers import AutoencoderKL

        set_torch_threads(torch_threads)

        self.micro_batch = micro_batch  # fixed model batch: latents do not depend on the Ray batch

        self.device = pick_device(device)
        self.dtype = pick_dtype(dtype, self.device)
        kw = {"subfolder": subfolder} if subfolder else {}
        self.vae = load_pretrained("vae", model_ref, AutoencoderKL.from_pretrained, zoo_dir,
                                   dtype=self.dtype, **kw).to(self.device).eval()
        use_sdpa_processors(self.vae)
        apply_channels_last(self.vae, channels_last, self.device)  # models.channels_last (auto: on CUDA)
        self.scaling = float(self.vae.config.scaling_factor)
        self.faults = FaultInjector.from_kwargs(faults)

    @torch.no_grad()
    def encode(self, images: np.ndarray) -> np.ndarray:
        x = u8_hwc_to_signed_chw(images).to(self.device, self.dtype)
        return (self.vae.encode(x).latent_dist.mode() * self.scaling).float().cpu().numpy()

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        errors = np.asarray(batch.get("error", [""] * len(batch["path"])), dtype=object)
        ok = np.flatnonzero([not e for e in errors])
        lat = None
        if len(ok):
            from pipeline.core.batching import run_fixed

            enc = run_fixed(self.encode, [np.asarray(batch["image"])[ok]], self.micro_batch)
            lat = np.zeros((len(errors), *enc.shape[1:]), dtype=np.float32)
            lat[ok] = enc
        else:
            lat = np.zeros((len(errors), 1), dtype=np.float32)
        self.faults.maybe_fail(batch["path"])
        out = {k: v for k, v in batch.items() if k != "image"}
        out["latent"] = lat
        out["error"] = errors
        return out
