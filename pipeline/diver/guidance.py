"""DIVER's maths: semantic inheritance, gradient-free semantic guidance and the fusion window.

``recover_latents`` is a pure function of the transformer, the scheduler, the inherited
latents and the settings, so the Ray actor (``actors/dit.py``), the benchmark and the tests
run the same loop. Plain DiT sampling is the same loop with ``gamma = 0`` (``sample_latents``).

Step indices count positions in the scheduler's descending ``timesteps`` (0 = noisiest; with
50 DDIM steps index 25 is t = 480). The reverse process runs indices ``start_step .. N-1``;
guidance acts after the DDIM update of step ``i`` when ``low <= i <= high`` for
``fusion_window = [high, low]`` (our reading of "steps 40 down to 25", inferred).

Guidance, gradient-free, after each DDIM update (``sigma_t = sqrt(1 - alpha_bar_t)`` of the
step's own timestep ``t``):
    guidance_target = x0:  z_{t-1} <- z_{t-1} - gamma * sigma_t * (x0_hat - z_d)
    guidance_target = zt:  z_{t-1} <- z_{t-1} - gamma * sigma_t * (z_{t-1} - z_d)

Randomness: every image gets its own noise from ``torch.Generator(seed_i)`` on the CPU, with
``seed_i`` derived from (run seed, class, index in class), so a batch of 4 gives the same
images as 4 batches of 1 and a CPU run matches a GPU run's noise.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from pipeline.core.seeds import per_image_noise


@dataclass(frozen=True)
class RecoverSettings:
    """The DIVER knobs that act inside the reverse process (see ``DiverConfig``)."""

    num_inference_steps: int = 50
    start_step: int = 25
    inheritance: str = "noise"  # noise | ddim_inversion
    gamma: float = 0.1
    guidance_target: str = "x0"  # x0 | zt
    fusion_window: tuple[int, int] = (40, 25)
    cfg_scale: float = 4.0
    null_class: int | None = None
    inversion_cfg_scale: float = 1.0
    latent_mode: str = "mode"  # mode | sample: how the VAE posterior gives z_d

    @classmethod
    def from_mapping(cls, values: dict[str, Any]) -> RecoverSettings:
        keys = set(cls.__dataclass_fields__)
        kw = {k: v for k, v in values.items() if k in keys}
        if "fusion_window" in kw:
            kw["fusion_window"] = tuple(int(v) for v in kw["fusion_window"])
        return cls(**kw)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["fusion_window"] = list(self.fusion_window)
        return d

    def in_window(self, step_index: int) -> bool:
        hi, lo = self.fusion_window
        return lo <= step_index <= hi


def image_noise(seeds: list[int] | np.ndarray, shape: tuple[int, ...]) -> torch.Tensor:
    """Standard normal noise ``[len(seeds), *shape]``, one CPU generator per image."""
    return per_image_noise([int(s) for s in seeds], shape)


def null_class_of(transformer, settings: RecoverSettings) -> int:
    """The unconditional class id: the setting, else the DiT's ``num_embeds_ada_norm`` (1000 for DiT-XL/2)."""
    if settings.null_class is not None:
        return int(settings.null_class)
    n = getattr(transformer.config, "num_embeds_ada_norm", None)
    if n is None:
        raise ValueError("the DiT has no num_embeds_ada_norm; set diver.null_class")
    return int(n)


def alpha_bar(scheduler, t: int | torch.Tensor) -> torch.Tensor:
    return scheduler.alphas_cumprod[int(t)].to(torch.float32)


@torch.no_grad()
def predict_eps(transformer, z: torch.Tensor, t: int | torch.Tensor, labels: torch.Tensor, null_class: int,
                cfg_scale: float) -> torch.Tensor:
    """Noise prediction with class-label classifier-free guidance; float32, learned sigma dropped."""
    dtype = next(transformer.parameters()).dtype
    device = next(transformer.parameters()).device
    labels = labels.to(device=device, dtype=torch.long)
    if cfg_scale > 1.0:
        inp = torch.cat([z, z])
        lab = torch.cat([labels, torch.full_like(labels, null_class)])
    else:
        inp, lab = z, labels
    ts = torch.full((inp.shape[0],), int(t), dtype=torch.long, device=device)
    out = transformer(inp.to(device=device, dtype=dtype), timestep=ts, class_labels=lab).sample.float()
    eps = out[:, : z.shape[1]]  # DiT-XL/2 predicts [eps, sigma]: keep eps
    if cfg_scale > 1.0:
        cond, uncond = eps.chunk(2)
        eps = uncond + cfg_scale * (cond - uncond)
    return eps.to(z.device)


def inherit_noise(scheduler, z_d: torch.Tensor, noise: torch.Tensor, start_step: int) -> torch.Tensor:
    """Forward-noise ``z_d`` to the timestep at ``start_step``: sqrt(ab) z_d + sqrt(1 - ab) eps."""
    t = scheduler.timesteps[start_step]
    ab = alpha_bar(scheduler, t).to(z_d.device)
    return ab.sqrt() * z_d + (1 - ab).sqrt() * noise.to(z_d.device, z_d.dtype)


@torch.no_grad()
def ddim_invert(transformer, scheduler, z_d: torch.Tensor, labels: torch.Tensor, settings: RecoverSettings,
                null_class: int) -> torch.Tensor:
    """Deterministic DDIM inversion of ``z_d`` up to the timestep at ``start_step``."""
    ascending = list(scheduler.timesteps[settings.start_step:].flip(0))
    z, ab_cur, t_eval = z_d.clone(), torch.tensor(1.0), ascending[0]
    for t_next in ascending:
        eps = predict_eps(transformer, z, t_eval, labels, null_class, settings.inversion_cfg_scale)
        x0 = (z - (1 - ab_cur).sqrt() * eps) / ab_cur.sqrt()
        ab_next = alpha_bar(scheduler, t_next)
        z = ab_next.sqrt() * x0 + (1 - ab_next).sqrt() * eps
        ab_cur, t_eval = ab_next, t_next
    return z


@torch.no_grad()
def sample_latents(transformer, scheduler, z_t: torch.Tensor, class_labels: torch.Tensor,
                   settings: RecoverSettings, z_d: torch.Tensor | None = None,
                   first_step: int | None = None) -> torch.Tensor:
    """Guided DDIM (eta 0) from ``z_t`` at step ``first_step`` (default ``start_step``) to step N-1.

    With ``z_d`` and ``gamma > 0`` the semantic guidance acts inside the fusion window;
    otherwise this is plain class-conditional DiT sampling with CFG.
    """
    null = null_class_of(transformer, settings)
    first = settings.start_step if first_step is None else first_step
    timesteps = scheduler.timesteps
    z = z_t.float()
    guided = z_d is not None and settings.gamma > 0
    for i in range(first, len(timesteps)):
        t = timesteps[i]
        eps = predict_eps(transformer, z, t, class_labels, null, settings.cfg_scale)
        out = scheduler.step(eps, t, z, eta=0.0)
        z_next = out.prev_sample
        if guided and settings.in_window(i):
            sigma = (1 - alpha_bar(scheduler, t)).sqrt()
            ref = out.pred_original_sample if settings.guidance_target == "x0" else z_next
            z_next = z_next - settings.gamma * sigma * (ref - z_d)
        z = z_next
    return z


@torch.no_grad()
def recover_latents(transformer, scheduler, z_d: torch.Tensor, class_labels: torch.Tensor,
                    settings: RecoverSettings, noise: torch.Tensor | None = None) -> torch.Tensor:
    """DIVER in latent space: inherit ``z_d`` (noise or DDIM inversion), then guided DDIM to a clean latent.

    ``noise`` (same shape as ``z_d``) is the inheritance noise; build it with ``image_noise``
    from per-image seeds. The scheduler's timesteps are (re)set to ``num_inference_steps``.
    """
    scheduler.set_timesteps(settings.num_inference_steps)
    if not 0 <= settings.start_step < settings.num_inference_steps:
        raise ValueError(f"start_step {settings.start_step} outside [0, {settings.num_inference_steps})")
    z_d = z_d.float()
    if settings.inheritance == "noise":
        if noise is None:
            raise ValueError("inheritance=noise needs the per-image noise")
        z_t = inherit_noise(scheduler, z_d, noise, settings.start_step)
    elif settings.inheritance == "ddim_inversion":
        z_t = ddim_invert(transformer, scheduler, z_d, class_labels, settings, null_class_of(transformer, settings))
    else:
        raise ValueError(f"unknown inheritance {settings.inheritance!r} (noise | ddim_inversion)")
    return sample_latents(transformer, scheduler, z_t, class_labels, settings, z_d=z_d)


@torch.no_grad()
def plain_dit_latents(transformer, scheduler, noise: torch.Tensor, class_labels: torch.Tensor,
                      settings: RecoverSettings) -> torch.Tensor:
    """Plain DiT sampling from pure noise over all ``num_inference_steps`` (no inheritance, no guidance)."""
    scheduler.set_timesteps(settings.num_inference_steps)
    return sample_latents(transformer, scheduler, noise, class_labels, settings, z_d=None, first_step=0)
