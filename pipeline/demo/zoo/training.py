"""The demo zoo's one training loop (``train_steps``) and the pieces its recipes share.

Pure torch on tensors the caller owns; every random draw stays with the caller's generator
(``next_batch`` draws them), so a recipe's RNG order (and its shipped checkpoint) does not
depend on this module.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch

Batch = TypeVar("Batch")
Schedule = Callable[[int], Sequence[float]]  # step -> the lr of each of the optimiser's param groups


def lr_at(step: int, base: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine down to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def warmup_cosine(base: float, warmup: int, total: int) -> Schedule:
    """``lr_at`` as the schedule of a one-group optimiser."""
    return lambda step: [lr_at(step, base, warmup, total)]


def min_snr_epsilon_loss(pred: torch.Tensor, noise: torch.Tensor, alpha_bar: torch.Tensor,
                         gamma: float) -> torch.Tensor:
    """Mean epsilon MSE, each sample weighted by ``min(SNR, gamma) / SNR`` (Min-SNR, Hang et al. 2023;
    off at 0).

    ``alpha_bar``: the samples' cumulative alphas, shaped ``[B, 1, 1, 1]``.
    """
    per_sample = ((pred - noise) ** 2).mean(dim=(1, 2, 3))
    if gamma > 0:
        snr = alpha_bar.view(-1) / (1 - alpha_bar.view(-1))
        per_sample = per_sample * snr.clamp(max=gamma) / snr
    return per_sample.mean()


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, step: int, max_decay: float) -> None:
    """EMA of ``model`` into ``ema`` with the warm-up ramp ``min(max_decay, (1 + step) / (10 + step))``."""
    decay = min(max_decay, (1 + step) / (10 + step))
    for pe, pm in zip(ema.parameters(), model.parameters()):
        pe.lerp_(pm, 1 - decay)


class Ema:
    """A frozen copy of ``source`` (``model``) that follows it by ``ema_update`` after each step."""

    def __init__(self, source: torch.nn.Module, max_decay: float) -> None:
        self.source, self.max_decay = source, max_decay
        self.model = copy.deepcopy(source).requires_grad_(False)

    def update(self, step: int) -> None:
        ema_update(self.model, self.source, step, self.max_decay)


@dataclass
class Progress:
    """Log ``"  <name> step N  loss L  (Ts)"`` every ``every`` steps and at the last (L: the running loss)."""

    log: Callable[[str], None]
    name: str
    every: int = 250


def epoch_batches(n: int, batch: int, generator: torch.Generator) -> Callable[[], torch.Tensor]:
    """``next_batch`` for epochs: each epoch a fresh permutation of ``range(n)`` in slices of ``batch``."""

    def batches() -> Iterator[torch.Tensor]:
        while True:
            perm = torch.randperm(n, generator=generator)
            for i in range(0, n, batch):
                yield perm[i:i + batch]

    it = batches()
    return lambda: next(it)


def train_steps(next_batch: Callable[[], Batch], loss_fn: Callable[[Batch], torch.Tensor],
                optimizer: torch.optim.Optimizer, steps: int, *, schedule: Schedule | None = None,
                max_grad_norm: float | None = None, emas: Sequence[Ema] = (),
                progress: Progress | None = None) -> float | None:
    """``steps`` optimiser steps on ``loss_fn(next_batch())``; returns the running loss (0.98 smoothing).

    Each step: the schedule's lrs, the batch, the loss, backward, the gradient norm of all the
    optimiser's parameters clipped to ``max_grad_norm`` (None: not clipped), the step, then every EMA.
    """
    params = [p for group in optimizer.param_groups for p in group["params"]]
    t0, running = time.time(), None
    for step in range(steps):
        if schedule is not None:
            for group, lr in zip(optimizer.param_groups, schedule(step), strict=True):
                group["lr"] = lr
        loss = loss_fn(next_batch())
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        for ema in emas:
            ema.update(step)
        running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
        if progress is not None and (step % progress.every == 0 or step == steps - 1):
            progress.log(f"  {progress.name} step {step:5d}  loss {running:.4f}  ({time.time() - t0:.0f}s)")
    return running


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# --- learned variance: the L_vlb term of improved DDPM's hybrid loss
# (Nichol & Dhariwal 2021; DiT trains with it) ---

def normal_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
              logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (logvar2 - logvar1 - 1.0 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2
                  * torch.exp(-logvar2))


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of the standard normal CDF (the one DDPM's decoder likelihood uses)."""
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x.pow(3))))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of the 256-bin discretisation of N(mean, e^(2 log_scale)) on [-1, 1] (edge bins open),
    elementwise."""
    inv_std = torch.exp(-log_scale)
    upper = _std_normal_cdf(inv_std * (x - mean + 1.0 / 255))
    lower = _std_normal_cdf(inv_std * (x - mean - 1.0 / 255))
    tiny = 1e-12
    return torch.where(x < -0.999, torch.log(upper.clamp(min=tiny)),
                       torch.where(x > 0.999, torch.log((1.0 - lower).clamp(min=tiny)),
                                   torch.log((upper - lower).clamp(min=tiny))))


def vlb_bits_per_dim(eps: torch.Tensor, v: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                     alphas_cumprod: torch.Tensor) -> torch.Tensor:
    """Per-sample L_t of the variational bound (bits per dim) for a model predicting ``eps`` and the
    learned range ``v``.

    The model's reverse step has mean ``q_posterior_mean(x0_hat(eps), xt)`` and log variance
    ``frac * log(beta_t) + (1 - frac) * log(posterior_var_t)`` with ``frac = (v + 1) / 2``
    (posterior variance clipped at t = 0 to its t = 1 value). ``L_t`` is the KL to the true
    posterior for t > 0 and the discretised decoder NLL at t = 0. Pass ``eps.detach()`` to
    train only the variance with it (the hybrid loss's stop-gradient on the mean).
    """
    ab_all = alphas_cumprod.double()
    ab_prev_all = torch.cat([ab_all.new_ones(1), ab_all[:-1]])
    beta_all = 1.0 - ab_all / ab_prev_all
    post_var = beta_all * (1.0 - ab_prev_all) / (1.0 - ab_all)
    log_post = torch.log(torch.cat([post_var[1:2], post_var[1:]]))

    def at(table: torch.Tensor) -> torch.Tensor:
        return table[t].to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))

    ab, ab_prev, beta = at(ab_all), at(ab_prev_all), at(beta_all)
    coef_x0 = beta * ab_prev.sqrt() / (1.0 - ab)
    coef_xt = (1.0 - ab_prev) * (1.0 - beta).sqrt() / (1.0 - ab)
    true_mean = coef_x0 * x0 + coef_xt * xt
    true_logvar = at(log_post)
    x0_hat = (xt - (1.0 - ab).sqrt() * eps) / ab.sqrt()
    model_mean = coef_x0 * x0_hat + coef_xt * xt
    frac = (v + 1.0) / 2.0
    model_logvar = frac * torch.log(beta) + (1.0 - frac) * true_logvar
    dims = tuple(range(1, x0.dim()))
    kl = normal_kl(true_mean, true_logvar.expand_as(x0), model_mean,
                   model_logvar).mean(dim=dims) / math.log(2.0)
    nll = -discretized_gaussian_log_likelihood(x0, model_mean,
                                               0.5 * model_logvar).mean(dim=dims) / math.log(2.0)
    return torch.where(t.to(x0.device) == 0, nll, kl)
