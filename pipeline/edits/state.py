"""EDITS run state: the artefact paths, what every stage needs, each stage's settings key and state file."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.core.keys import settings_hash


class StageState:
    """``<stage>.state.json``: the settings a stage ran with and whether it completed."""

    def __init__(self, art: Path, stage: str, key: dict[str, Any]) -> None:
        self.path = art / f"{stage}.state.json"
        self.stage = stage
        self.key = key
        self.hash = settings_hash(key)

    def read(self) -> dict[str, Any] | None:
        try:
            return json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            return None

    def status(self) -> str:
        """``done`` | ``partial`` (same settings, incomplete) | ``stale`` (other settings) | ``new``."""
        s = self.read()
        if s is None:
            return "new"
        if s.get("hash") != self.hash:
            return "stale"
        return "done" if s.get("complete") else "partial"

    def begin(self, clear: Callable[[], None], force: bool = False) -> str:
        """Clear stale/forced outputs, mark the stage started; returns the status it found."""
        from pipeline.core.write import atomic_write_json

        st = self.status()
        if force or st in ("stale", "new"):
            clear()
        atomic_write_json(self.path, {"stage": self.stage, "hash": self.hash, "key": self.key, "complete": False})
        return st

    def finish(self, info: dict[str, Any] | None = None) -> None:
        from pipeline.core.write import atomic_write_json

        atomic_write_json(self.path, {"stage": self.stage, "hash": self.hash, "key": self.key, "complete": True,
                                      "info": info or {}})


@dataclass
class Artefacts:
    """Every path of one run (see the module docstring)."""

    out: Path
    art: Path = field(init=False)

    def __post_init__(self) -> None:
        self.out = Path(self.out)
        self.art = self.out / "artefacts"

    @property
    def captions(self) -> Path:
        return self.art / "captions"

    @property
    def features(self) -> Path:
        return self.art / "features"

    @property
    def buffer(self) -> Path:
        return self.art / "buffer"

    @property
    def clusters_dir(self) -> Path:
        return self.art / "clusters"

    @property
    def clusters(self) -> Path:
        return self.art / "clusters.json"

    @property
    def latents(self) -> Path:
        return self.art / "prototypes" / "latents"

    @property
    def texts(self) -> Path:
        return self.art / "prototypes" / "texts.json"

    @property
    def distilled(self) -> Path:
        return self.out / "distilled"

    @property
    def contact_sheet(self) -> Path:
        return self.out / "contact_sheet.png"

    def finetuned(self, cfg: Config) -> Path:
        return Path(cfg.edits.finetune.output) if cfg.edits.finetune.output else self.out / "finetuned_sd"


@dataclass
class EditsRun:
    """What every stage needs: config, the scanned index, class names, paths, the skip log."""

    cfg: Config
    index: Any
    names: dict[str, str]
    paths: Artefacts
    skips: Any
    fingerprint: str
    log: Callable[[str], None] = print

    @property
    def zoo_dir(self) -> str | None:
        return self.cfg.models.zoo_dir

    def generator_ref(self) -> str:
        """The SD model the run generates with: the fine-tuned folder when the fine-tune is on."""
        if self.cfg.edits.finetune.enabled:
            return str(self.paths.finetuned(self.cfg))
        return self.cfg.models.sd

    def faults(self) -> dict | None:
        from pipeline.core.faults import fault_kwargs

        return fault_kwargs(self.cfg)


def stage_keys(run: EditsRun) -> dict[str, dict[str, Any]]:
    """The settings each stage depends on, chained through the upstream stages' hashes."""
    from pipeline.edits.buffer import ClusterSettings

    cfg, e, m = run.cfg, run.cfg.edits, run.cfg.models
    k: dict[str, dict[str, Any]] = {}
    k["caption"] = {"data": run.fingerprint, "names": run.names, "vlm": m.vlm, "backend": m.vlm_backend,
                    "style": e.caption_style, "prompt": e.caption_prompt, "prefix": e.caption_prefix,
                    "max_tokens": e.caption_max_tokens, "require_name": e.require_class_name, "clip": m.clip,
                    "size": e.caption_image_size}
    k["embed"] = {"caption": settings_hash(k["caption"]), "clip": m.clip, "size": e.feature_image_size, "feature": e.clip_image_feature, "resize": [e.resize_mode, e.feature_resample]}
    k["cluster"] = {"embed": settings_hash(k["embed"]), **ClusterSettings.from_edits(e).as_dict()}
    ft = e.finetune.model_dump(mode="json")
    k["finetune"] = {"caption": settings_hash(k["caption"]), "sd": m.sd,
                     **{n: v for n, v in ft.items() if n not in ("enabled", "output", "storage_path")}}
    generator = settings_hash(k["finetune"]) if e.finetune.enabled else m.sd
    k["prototype"] = {
        "cluster": settings_hash(k["cluster"]),
        "image": {"vae": generator if e.vae_source == "sd" else m.vae, "source": e.vae_source,
                  "resolution": e.vae_resolution, "resize": [e.resize_mode, e.vae_resample]},
        "text": {"llm": m.llm, "backend": m.llm_backend, "url": m.llm_url, "prompt": e.summary_prompt,
                 "max_tokens": e.max_tokens, "temperature": e.llm_temperature, "seed": e.seed,
                 "require_name": e.require_class_name, "sd": m.sd, "names": run.names},
    }
    k["generate"] = {"prototype": settings_hash(k["prototype"]), "model": generator,
                     "strength": e.strength, "guidance": e.guidance_scale, "negative": e.negative_prompt,
                     "steps": e.num_inference_steps, "scheduler": e.scheduler, "seed": e.seed,
                     "size": cfg.data.image_size, "format": cfg.output.image_format}
    return k
