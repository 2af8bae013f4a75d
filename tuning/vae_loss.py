"""The VAE training step shared by the demo DiT's VAE and the SD fine-tune's demo VAE phase.

Loss: reconstruction MSE of ``decode(mean + std * eps)`` against the input, plus
``kl_weight`` times the posterior's mean KL to N(0, I) (the ``AutoencoderKL`` objective
without the perceptual and GAN terms, enough for the tiny random-init demo VAEs).
The noise ``eps`` is drawn by the caller from its own generator, so the RNG order is its own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F


class AutoencodeLoss(torch.nn.Module):
    """``forward(x, eps) -> (loss, mse)`` for a diffusers ``AutoencoderKL``; a module so DDP can wrap it."""

    def __init__(self, vae: Any, kl_weight: float) -> None:
        super().__init__()
        self.vae = vae
        self.kl_weight = float(kl_weight)

    def forward(self, x: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        post = self.vae.encode(x).latent_dist
        rec = self.vae.decode(post.mean + post.std * eps).sample
        mse = F.mse_loss(rec, x)
        return mse + self.kl_weight * post.kl().mean(), mse


def latent_noise(vae: Any, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Standard normal noise of the latent shape of ``x`` (``[B, latent_channels, H / f, W / f]``), on the
    CPU."""
    factor = 2 ** (len(vae.config.block_out_channels) - 1)
    shape = (x.shape[0], vae.config.latent_channels, x.shape[-2] // factor, x.shape[-1] // factor)
    return torch.randn(shape, generator=generator)


def vae_step(model: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor,
             eps: torch.Tensor) -> torch.Tensor:
    """One optimiser step of ``model`` (an ``AutoencodeLoss``, maybe DDP-wrapped); returns the detached
    MSE."""
    loss, mse = model(x, eps)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return mse.detach()
