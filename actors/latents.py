"""VAE latents <-> images in [0, 1] (pure torch; the models are passed in)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pipeline.core.pixels import signed_to_unit, unit_to_signed


def resized_unit_to_signed(images: torch.Tensor, resolution: int) -> torch.Tensor:
    """Float ``[B, 3, H, W]`` in [0, 1] -> bicubic-resized to ``resolution`` (antialiased), clamped, in [-1,
    1]."""
    x = images.float()
    if x.shape[-1] != resolution or x.shape[-2] != resolution:
        x = F.interpolate(x, size=(resolution, resolution), mode="bicubic", align_corners=False,
                          antialias=True)
    return unit_to_signed(x.clamp(0, 1))


@torch.no_grad()
def encode_images(vae, images: torch.Tensor, resolution: int, latent_mode: str = "mode",
                  noise: torch.Tensor | None = None) -> torch.Tensor:
    """VAE latents ``z_d`` (scaled by the VAE's ``scaling_factor``), float32 on the VAE's device.

    ``latent_mode = sample`` draws ``mean + std * noise`` with the caller's per-image ``noise``
    (shape of the latents), never from the global RNG.
    """
    p = next(vae.parameters())
    x = resized_unit_to_signed(images, resolution).to(device=p.device, dtype=p.dtype)
    dist = vae.encode(x).latent_dist
    if latent_mode == "mode":
        z = dist.mode()
    elif latent_mode == "sample":
        if noise is None:
            raise ValueError("latent_mode=sample needs per-image noise (seeded like the inheritance noise)")
        z = dist.mean.float() + dist.std.float() * noise.to(device=p.device, dtype=torch.float32)
    else:
        raise ValueError(f"unknown latent_mode {latent_mode!r} (mode | sample)")
    return z.float() * float(vae.config.scaling_factor)


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """Latents -> images in [0, 1], ``[B, 3, H, W]`` float32 on the CPU, resized to ``size``."""
    p = next(vae.parameters())
    x = vae.decode((z / float(vae.config.scaling_factor)).to(device=p.device, dtype=p.dtype)).sample.float()
    x = signed_to_unit(x).cpu()
    if size is not None and tuple(x.shape[-2:]) != tuple(size):
        x = F.interpolate(x, size=size, mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    return x
