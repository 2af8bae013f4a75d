"""Training pieces shared by the demo models' recipes (demo DiT, demo SD, captioner, CLIP).

Pure torch on tensors the caller owns; every random draw stays with the caller's generator,
so a recipe's RNG order (and its shipped checkpoint) does not depend on this module.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine down to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


def min_snr_epsilon_loss(pred: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor, gamma: float) -> torch.Tensor:
    """Mean epsilon MSE, each sample weighted by ``min(SNR, gamma) / SNR`` (Min-SNR, Hang et al. 2023; off at 0).

    ``alpha_bar``: the samples' cumulative alphas, shaped ``[B, 1, 1, 1]``.
    """
    per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    if gamma > 0:
        snr = alpha_bar.view(-1) / (1 - alpha_bar.view(-1))
        per_sample = per_sample * snr.clamp(max=gamma) / snr
    return per_sample.mean()


def clipped_step(opt: torch.optim.Optimizer, params, loss: torch.Tensor, max_norm: float = 1.0) -> None:
    """Backward, clip the gradient norm to ``max_norm``, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    opt.step()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA of ``model`` into ``ema`` with the warm-up ramp ``min(max_decay, (1 + step) / (10 + step))``."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
