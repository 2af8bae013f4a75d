"""What DIVER recovers with: the DiT folder, its guidance settings (``RecoverSettings``), the VAE, the
class map, and the manifest settings every recovered set shares."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from actors.dit import dit_num_classes, variance_usable
from actors.loading import resolve_ref
from pipeline.config import Config
from pipeline.diver.guidance import RecoverSettings
from pipeline.diver.sets import log
from pipeline.errors import DataError


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


def load_class_map(spec: str | dict | None) -> dict[str, int] | None:
    """``diver.class_map``: a JSON file or an inline mapping input class id -> DiT class index."""
    if spec is None:
        return None
    if isinstance(spec, dict):
        return {str(k): int(v) for k, v in spec.items()}
    p = Path(spec)
    if not p.is_file():
        raise DataError(f"diver.class_map file not found: {p}")
    return {str(k): int(v) for k, v in json.loads(p.read_text()).items()}


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
    """The run's ``Recovery``: the class map read, the VAE and the DiT resolved (``zoo:`` models are built
    here, once), the settings taken from ``diver`` with sigma settled for the DiT at hand."""
    d = cfg.diver
    embedding, hardware = resolve_timestep_embedding(cfg), hardware_settings(cfg)
    class_map = load_class_map(d.class_map)
    vae_ref = vae_ref_for(cfg)
    model_dir = resolve_ref("dit", cfg.models.dit, cfg.models.zoo_dir)
    settings = RecoverSettings.from_mapping({**d.model_dump(mode="python"), "timestep_embedding": embedding})
    settings = settings.for_variance(*variance_usable(model_dir), warn=log)
    manifest = {**settings.as_dict(), "seed": d.seed, "resolution": d.resolution, "dit": cfg.models.dit,
                "vae": vae_ref or "dit", "dtype": cfg.models.dtype, **hardware}
    return Recovery(settings, model_dir, vae_ref, class_map, dit_num_classes(model_dir), manifest)
