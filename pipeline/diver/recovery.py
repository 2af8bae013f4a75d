"""What DIVER recovers with: the DiT folder, its guidance settings (``RecoverSettings``), the VAE, the
class map, and the manifest settings every recovered set shares."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from actors.dit import dit_num_classes, variance_usable
from actors.loading import resolve_ref
from pipeline.config import Config
from pipeline.diver.guidance import SIGMA_FALLBACK, RecoverSettings
from pipeline.diver.inputs import load_class_map
from pipeline.diver.sets import log as _log


@dataclass(frozen=True)
class Recovery:
    """The DiT and the settings of one run's recovery, resolved once for all its sets."""

    settings: RecoverSettings
    model_dir: str  # the DiT folder (zoo models are built when it is resolved)
    vae_ref: str | None  # the VAE, or None for the DiT folder's own
    class_map: dict[str, int] | None  # ``diver.class_map``: class id -> DiT class index
    dit_classes: tuple[int | None, str]  # the DiT's class count, and why it is unknown where it is
    manifest: dict[str, Any]  # the manifest settings every set shares


def resolve_timestep_embedding(cfg: Config) -> str:
    """``diver.timestep_embedding``: ``auto`` is ``diffusers`` for ``zoo:`` DiTs (trained in diffusers), else
    ``dit`` (hub ids and folders hold DiT-XL/2-style weights converted from facebookresearch/DiT)."""
    kind = cfg.diver.timestep_embedding
    if kind == "auto":
        kind = "diffusers" if cfg.models.dit.startswith("zoo:") else "dit"
    return kind


def resolve_sigma(settings: RecoverSettings, model_dir: str,
                  log: Callable[[str], None] = _log) -> RecoverSettings:
    """``sigma: learned`` on a DiT without (trained) variance channels -> the fallback, with one warning."""
    if settings.diver.sigma != "learned":
        return settings
    usable, why = variance_usable(model_dir)
    if usable is False:
        log(f"WARNING: diver.sigma=learned but {why}: using sigma={SIGMA_FALLBACK} instead "
            f"(set diver.sigma explicitly to silence this)")
        return settings.with_sigma(SIGMA_FALLBACK)
    return settings


def vae_ref_for(cfg: Config) -> str | None:
    """The VAE DIVER uses (``diver.vae_source``): ``models.vae`` resolved, or None for the DiT folder's
    own."""
    src = cfg.diver.vae_source
    if src == "auto":
        src = "dit" if cfg.models.dit.startswith("zoo:") else "models"
    return resolve_ref("vae", cfg.models.vae, cfg.models.zoo_dir) if src == "models" else None


def hardware_settings(cfg: Config) -> dict[str, Any]:
    """Manifest settings of how the models run, present only where they change the bits from the CPU
    defaults, so manifests written before they existed stay resumable: GPU actors (``auto`` dtype is bf16
    there), ``channels_last`` in effect (``auto``: on GPU actors), ``compile``."""
    m, gpu = cfg.models, cfg.ray.actor_num_gpus > 0
    out: dict[str, Any] = {"device": "gpu:auto-bf16"} if gpu else {}
    if m.channels_last is True or (m.channels_last == "auto" and gpu):
        out["channels_last"] = True
    if m.compile:
        out["compile"] = True
    return out


def resolve_recovery(cfg: Config) -> Recovery:
    """The run's ``Recovery``: settings checked, the DiT resolved (and built, for ``zoo:``), sigma and VAE
    settled, the class map read."""
    d = cfg.diver
    embedding, hardware = resolve_timestep_embedding(cfg), hardware_settings(cfg)
    settings = RecoverSettings.from_mapping({**d.model_dump(mode="python"), "timestep_embedding": embedding})
    model_dir = resolve_ref("dit", cfg.models.dit, cfg.models.zoo_dir)  # zoo models are built here, once
    settings = resolve_sigma(settings, model_dir)
    vae_ref = vae_ref_for(cfg)
    manifest = {**settings.as_dict(), "seed": d.seed, "resolution": d.resolution, "dit": cfg.models.dit,
                "vae": vae_ref or "dit", "dtype": cfg.models.dtype, **hardware}
    return Recovery(settings, model_dir, vae_ref, load_class_map(d.class_map), dit_num_classes(model_dir),
                    manifest)
