"""DIVER's maths: semantic inheritance, gradient-free semantic guidance and the fusion window.

``recover_latents`` is a pure function of the transformer, the scheduler (only its
``alphas_cumprod`` is used), the inherited latents and the settings, so the Ray actor
(``actors/dit.py``), the benchmark and the tests run the same loop. Plain DiT sampling is the
same loop with ``gamma = 0`` (``sample_latents``).

Index convention (read-sibling, docs/METHODS.md): DiT's respacing of the 1000 training steps to
``N = num_inference_steps``, ``t_i = round(i * 999 / (N - 1))`` for ``i = 0 .. N-1``, so index
``N-1`` is the noisiest (t = 999) and index 0 is t = 0. With N = 50: index 40 is t = 816,
index 25 is t = 510. ``start_step`` and ``fusion_window = [high, low]`` use these indices;
the default window ``[40, 25]`` guides t 816 -> 510 inclusive (``low <= i <= high``), the
later steps get CFG only.

Reverse start (inferred, ``reverse_start``): ``top`` (default) noises ``z_d`` to the level of
index ``start_step`` (t = 510) and runs DDIM over all N steps from index N-1 (t = 999);
``start_step`` runs only indices ``start_step .. 0``.

DDIM (eta 0, no clipping of x0, written here with the respaced timesteps): at index i,
``x0 = (z - sqrt(1 - ab_i) eps) / sqrt(ab_i)``, ``z' = sqrt(ab_{i-1}) x0 + sqrt(1 - ab_{i-1}) eps``
with ``ab_{-1} = 1``. Guidance, gradient-free, after the update of a step in the window:
    guidance_target = x0:  z' <- z' - gamma * sigma_i * (x0_hat - z_d)
    guidance_target = zt:  z' <- z' - gamma * sigma_i * (z_i - z_d)     (z_i: the latent before the update)
``sigma``: ``learned`` (read-sibling) DiT's learned-range std ``exp(0.5 * log_var)`` with
``log_var = frac * log(beta_i) + (1 - frac) * log(posterior_var_i)``, ``frac = (v + 1) / 2`` from
the variance channels, on the respaced schedule (DiT's ``p_mean_variance``; about 0.54 -> 0.43
in the default window); ``posterior`` sqrt of the respaced posterior variance; ``one_minus_alpha_bar``
``sqrt(1 - ab_i)`` (about 2x larger than ``learned`` in the window; no released code uses it).

CFG (``cfg_channels``): DiT's ``forward_with_cfg`` guides latent channels 0..2 only and keeps
the conditional prediction for channel 3 and the variance (``3``, default); ``all`` guides all.

Randomness: every image gets its own noise from ``torch.Generator(seed_i)`` on the CPU, with
``seed_i`` derived from (run seed, class, index in class), so a batch of 4 gives the same
images as 4 batches of 1 and a CPU run matches a GPU run's noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from pipeline.config import DiverConfig
from pipeline.core.seeds import per_image_noise

SIGMA_FALLBACK = "posterior"  # inferred: DiT's range is [posterior, beta]; the lower end where v is unknown


# The ``diver`` keys that act inside the reverse process, in the order each set's manifest records them (a
# resumed run compares that record); with the resolved ``timestep_embedding`` they travel to the actors.
RECOVER_KEYS = ("num_inference_steps", "start_step", "reverse_start", "inheritance", "gamma",
                "guidance_target",
                "fusion_window", "sigma", "cfg_scale", "cfg_channels", "null_class", "inversion_cfg_scale",
                "latent_mode")


@dataclass(frozen=True)
class RecoverSettings:
    """The reverse-process knobs of a validated ``diver`` section (``DiverConfig`` is the one place for their
    defaults and checks; its other keys stay at their defaults, so two settings are equal when their images
    would be), and ``diver.timestep_embedding`` resolved for the DiT at hand: ``diffusers`` (as loaded) or
    ``dit``, applied by the actor on load (actors/dit.py); the maths here does not depend on it."""

    diver: DiverConfig = field(default_factory=DiverConfig)
    timestep_embedding: str = "diffusers"

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RecoverSettings:
        """From ``as_dict``'s record or a ``diver`` dump; keys other than the knobs are left out."""
        knobs = DiverConfig.model_validate({k: values[k] for k in RECOVER_KEYS if k in values})
        if "timestep_embedding" in values:
            return cls(knobs, str(values["timestep_embedding"]))
        return cls(knobs)

    @classmethod
    def of(cls, **knobs: Any) -> RecoverSettings:
        """``from_mapping`` with the knobs as keywords."""
        return cls.from_mapping(knobs)

    def as_dict(self) -> dict[str, Any]:
        """The record the actors and manifests get: ``fusion_window`` a list, ``cfg_channels`` ``"3"`` |
        ``"all"``."""
        knobs = self.diver.model_dump(include=set(RECOVER_KEYS))
        record = {k: knobs[k] for k in RECOVER_KEYS}
        record["fusion_window"] = list(self.diver.fusion_window)
        record["cfg_channels"] = str(self.diver.cfg_channels)
        return {**record, "timestep_embedding": self.timestep_embedding}

    def with_sigma(self, sigma: str) -> RecoverSettings:
        """The same settings guided with ``sigma`` (one of ``DiverConfig.sigma``'s values)."""
        return replace(self, diver=self.diver.model_copy(update={"sigma": sigma}))

    def for_variance(self, usable: bool | None, why: str, warn: Callable[[str], None]) -> RecoverSettings:
        """``sigma: learned`` on a DiT without (trained) variance channels -> ``SIGMA_FALLBACK``, with one
        warning; ``usable`` and ``why`` are what ``actors.dit.variance_usable`` says of the DiT (None:
        unknown, e.g. a hub id, and kept)."""
        if self.diver.sigma != "learned" or usable is not False:
            return self
        warn(f"WARNING: diver.sigma=learned but {why}: using sigma={SIGMA_FALLBACK} instead "
             f"(set diver.sigma explicitly to silence this)")
        return self.with_sigma(SIGMA_FALLBACK)

    def in_window(self, step_index: int) -> bool:
        hi, lo = self.diver.fusion_window
        return lo <= step_index <= hi

    def first_index(self) -> int:
        """The index the reverse process starts at (``N-1`` for ``top``, else ``start_step``)."""
        d = self.diver
        return d.num_inference_steps - 1 if d.reverse_start == "top" else d.start_step


@dataclass(frozen=True)
class Schedule:
    """DiT's respaced schedule (float64): timesteps ``t_i`` and the quantities DDIM and sigma need."""

    timesteps: list[int]  # t_i, ascending in i (index 0 = t 0, index N-1 = t 999)
    alpha_bar: np.ndarray  # ab_i = alphas_cumprod[t_i]
    alpha_bar_prev: np.ndarray  # ab_{i-1}, 1.0 at i = 0
    log_beta: np.ndarray  # log of the respaced beta_i = 1 - ab_i / ab_{i-1}
    log_posterior_var: np.ndarray  # clipped: index 0 takes index 1's value (DiT)


def dit_timesteps(n: int, num_train_timesteps: int = 1000) -> list[int]:
    """DiT's ``space_timesteps(T, [n])``: ``round(i * (T - 1) / (n - 1))``, ascending in ``i``."""
    if n < 2:
        raise ValueError(f"num_inference_steps must be >= 2, got {n}")
    return [round(i * (num_train_timesteps - 1) / (n - 1)) for i in range(n)]


def respaced_schedule(scheduler, n: int) -> Schedule:
    ab_all = scheduler.alphas_cumprod.double().numpy()
    ts = dit_timesteps(n, len(ab_all))
    ab = ab_all[ts]
    prev = np.append(1.0, ab[:-1])
    betas = 1.0 - ab / prev
    post = betas * (1.0 - prev) / (1.0 - ab)
    return Schedule(ts, ab, prev, np.log(betas), np.log(np.append(post[1], post[1:])))


def image_noise(seeds: list[int] | np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise ``[len(seeds), *shape]``, one CPU generator per image."""
    return per_image_noise([int(s) for s in seeds], shape)


def null_class_of(transformer, settings: RecoverSettings) -> int:
    """The unconditional class id: the setting, else the DiT's ``num_embeds_ada_norm`` (1000 for DiT-XL/2)."""
    if settings.diver.null_class is not None:
        return int(settings.diver.null_class)
    n = getattr(transformer.config, "num_embeds_ada_norm", None)
    if n is None:
        raise ValueError("the DiT has no num_embeds_ada_norm; set diver.null_class")
    return int(n)


def has_variance_channels(transformer) -> bool:
    """Whether the DiT predicts ``[eps, v]`` (learned sigma, 2x the input channels, like DiT-XL/2)."""
    c = transformer.config
    return int(getattr(c, "out_channels", None) or c.in_channels) == 2 * int(c.in_channels)


def alpha_bar(scheduler, t: int | torch.Tensor) -> torch.Tensor:
    return scheduler.alphas_cumprod[int(t)].to(torch.float32)


@torch.no_grad()
def predict(transformer, z: torch.Tensor, t: int, labels: torch.Tensor, null_class: int, cfg_scale: float,
            cfg_channels: int | str = 3) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(eps, v) at timestep ``t`` with class-label CFG; ``v`` is the conditional variance output (or None).

    ``cfg_channels = 3`` is DiT's ``forward_with_cfg``: channels 0..2 get CFG, channel 3 and
    ``v`` keep the conditional prediction; ``"all"`` guides every latent channel.
    """
    dtype = next(transformer.parameters()).dtype
    device = next(transformer.parameters()).device
    labels = labels.to(device=device, dtype=torch.long)
    c = z.shape[1]
    use_cfg = cfg_scale > 1.0
    inp = torch.cat([z, z]) if use_cfg else z
    lab = torch.cat([labels, torch.full_like(labels, null_class)]) if use_cfg else labels
    ts = torch.full((inp.shape[0],), int(t), dtype=torch.long, device=device)
    out = transformer(inp.to(device=device, dtype=dtype), timestep=ts, class_labels=lab).sample.float()
    if use_cfg:
        cond, uncond = out.chunk(2)
        k = 3 if str(cfg_channels) == "3" else c
        eps = cond[:, :c].clone()
        eps[:, :k] = uncond[:, :k] + cfg_scale * (cond[:, :k] - uncond[:, :k])
    else:
        cond, eps = out, out[:, :c]
    v = cond[:, c:2 * c] if cond.shape[1] >= 2 * c else None
    return eps.to(z.device), (None if v is None else v.to(z.device))


def predict_eps(transformer, z: torch.Tensor, t: int | torch.Tensor, labels: torch.Tensor, null_class: int,
                cfg_scale: float, cfg_channels: int | str = 3) -> torch.Tensor:
    """Noise prediction with class-label CFG (float32); the variance output dropped."""
    return predict(transformer, z, int(t), labels, null_class, cfg_scale, cfg_channels)[0]


def guidance_sigma(settings: RecoverSettings, sched: Schedule, i: int, v: torch.Tensor | None,
                   like: torch.Tensor) -> torch.Tensor:
    """sigma_i of the guidance pull (broadcastable to ``like``), per ``settings.diver.sigma``."""
    if settings.diver.sigma == "one_minus_alpha_bar":
        return torch.tensor(float(np.sqrt(1.0 - sched.alpha_bar[i])), device=like.device)
    lo = float(sched.log_posterior_var[i])
    if settings.diver.sigma == "posterior":
        return torch.tensor(float(np.exp(0.5 * lo)), device=like.device)
    if v is None:
        raise ValueError("sigma=learned needs a DiT with variance output channels (learned sigma); "
                         "set diver.sigma to posterior or one_minus_alpha_bar")
    frac = (v.float() + 1) / 2
    log_var = frac * float(sched.log_beta[i]) + (1 - frac) * lo
    return torch.exp(0.5 * log_var)


def inherit_noise(scheduler, z_d: torch.Tensor, noise: torch.Tensor, start_step: int,
                  num_inference_steps: int = 50) -> torch.Tensor:
    """Forward-noise ``z_d`` to the level of index ``start_step``: sqrt(ab) z_d + sqrt(1 - ab) eps."""
    t = dit_timesteps(num_inference_steps, len(scheduler.alphas_cumprod))[start_step]
    ab = scheduler.alphas_cumprod.double()[t].to(z_d.device)
    return (ab.sqrt() * z_d.double() + (1 - ab).sqrt() * noise.to(z_d.device).double()).to(z_d.dtype)


@torch.no_grad()
def ddim_invert(transformer, scheduler, z_d: torch.Tensor, labels: torch.Tensor, settings: RecoverSettings,
                null_class: int) -> torch.Tensor:
    """Deterministic DDIM inversion of ``z_d`` (taken at index 0) up to index ``start_step``."""
    d = settings.diver
    sched = respaced_schedule(scheduler, d.num_inference_steps)
    z = z_d.float()
    for i in range(d.start_step):
        ab, ab_next = float(sched.alpha_bar[i]), float(sched.alpha_bar[i + 1])
        eps = predict_eps(transformer, z, sched.timesteps[i], labels, null_class, d.inversion_cfg_scale,
                          d.cfg_channels)
        x0 = (z - np.sqrt(1 - ab) * eps) / np.sqrt(ab)
        z = np.sqrt(ab_next) * x0 + np.sqrt(1 - ab_next) * eps
    return z


@torch.no_grad()
def sample_latents(transformer, scheduler, z_t: torch.Tensor, class_labels: torch.Tensor,
                   settings: RecoverSettings, z_d: torch.Tensor | None = None,
                   first_step: int | None = None) -> torch.Tensor:
    """Guided DDIM (eta 0) from ``z_t`` at index ``first_step`` (default ``settings.first_index()``) to 0.

    With ``z_d`` and ``gamma > 0`` the semantic guidance acts inside the fusion window;
    otherwise this is plain class-conditional DiT sampling with CFG.
    """
    null = null_class_of(transformer, settings)
    sched = respaced_schedule(scheduler, settings.diver.num_inference_steps)
    first = settings.first_index() if first_step is None else first_step
    z = z_t.float()
    guided = z_d is not None and settings.diver.gamma > 0
    if guided and settings.diver.sigma == "learned" and not has_variance_channels(transformer):
        raise ValueError("sigma=learned needs a DiT with variance output channels (out_channels = 2 x in); "
                         "set diver.sigma to posterior or one_minus_alpha_bar")
    for i in range(first, -1, -1):
        eps, v = predict(transformer, z, sched.timesteps[i], class_labels, null, settings.diver.cfg_scale,
                         settings.diver.cfg_channels)
        ab, ab_prev = float(sched.alpha_bar[i]), float(sched.alpha_bar_prev[i])
        x0 = (z - np.sqrt(1 - ab) * eps) / np.sqrt(ab)  # no clipping (DiT samples with clip_denoised=False)
        z_next = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
        if guided and settings.in_window(i):
            sigma = guidance_sigma(settings, sched, i, v, z)
            ref = x0 if settings.diver.guidance_target == "x0" else z
            z_next = z_next - settings.diver.gamma * sigma * (ref - z_d)
        z = z_next
    return z


@torch.no_grad()
def recover_latents(transformer, scheduler, z_d: torch.Tensor, class_labels: torch.Tensor,
                    settings: RecoverSettings, noise: torch.Tensor | None = None) -> torch.Tensor:
    """DIVER in latent space: inherit ``z_d`` (noise or DDIM inversion), then guided DDIM to a clean latent.

    ``noise`` (same shape as ``z_d``) is the inheritance noise; build it with ``image_noise``
    from per-image seeds.
    """
    z_d, d = z_d.float(), settings.diver
    if d.inheritance == "ddim_inversion":
        z_t = ddim_invert(transformer, scheduler, z_d, class_labels, settings,
                          null_class_of(transformer, settings))
    elif noise is None:
        raise ValueError("inheritance=noise needs the per-image noise")
    else:
        z_t = inherit_noise(scheduler, z_d, noise, d.start_step, d.num_inference_steps)
    return sample_latents(transformer, scheduler, z_t, class_labels, settings, z_d=z_d)


@torch.no_grad()
def plain_dit_latents(transformer, scheduler, noise: torch.Tensor, class_labels: torch.Tensor,
                      settings: RecoverSettings) -> torch.Tensor:
    """Plain DiT sampling from pure noise over all ``num_inference_steps`` (no inheritance, no guidance)."""
    return sample_latents(transformer, scheduler, noise, class_labels, settings, z_d=None,
                          first_step=settings.diver.num_inference_steps - 1)
