"""EDITS end to end: caption -> embed -> cluster -> finetune -> prototype -> generate.

``run_edits(cfg, from_stage=None)`` runs every stage whose artefacts are missing or stale
and returns a summary (output folder, counts, wall time per stage). Artefacts live under
``<output.dir>/artefacts/``:

    captions/part-*.parquet      caption cache keyed by (image path, captioner settings)
    features/<class>.parquet     CLIP image + caption features per class (raw)
    buffer/<class>.parquet       GSQ-fused features, LOF flag, cluster, distance, caption
    clusters/<class>.json        k-means + LSA per class; clusters.json merges them
    prototypes/latents/<key>.pt  image prototypes (mean VAE latent per cluster)
    prototypes/texts.json        text prototypes (LLM summaries) per cluster
    <stage>.state.json           the settings hash a stage ran with and whether it completed

A stage is skipped when its state says complete with the same settings (including every
upstream stage's hash); a stage with the same settings but incomplete resumes (captions,
classes, clusters, images already done are kept); different settings clear it first.
``from_stage`` re-runs that stage and every later one (the caption cache is never cleared:
a re-run never recaptions an image with the same captioner settings).

The distilled set is ``<output.dir>/distilled/`` (ImageFolder + manifest.json), with a
contact sheet at ``<output.dir>/contact_sheet.png``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import Config
from pipeline.errors import ConfigError

STAGES = ("caption", "embed", "cluster", "finetune", "prototype", "generate")


# ---------------------------------------------------------------- shared helpers for the stages


def settings_hash(obj: Any) -> str:
    """A short, stable hash of JSON-able settings."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def pool_kwargs(cfg: Config, role: str) -> dict[str, Any]:
    """``map_batches`` kwargs for an actor pool of ``role`` (size, batch, resources, restarts)."""
    import ray.data

    from pipeline.faults import actor_remote_args
    from pipeline.ray_setup import actor_resources

    size = int(cfg.ray.pool_sizes.get(role, 1))
    return {"compute": ray.data.ActorPoolStrategy(size=max(1, size)),
            "batch_size": int(cfg.ray.batch_sizes.get(role, 8)),
            **actor_resources(cfg.ray), **actor_remote_args(cfg.ray)}


def write_parquet(path: str | os.PathLike, columns: dict[str, Any]) -> None:
    """Write columns atomically; 2-D float arrays become fixed-size lists (read back by ``read_parquet``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, col in columns.items():
        arr = np.asarray(col) if not isinstance(col, list) else col
        if isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype.kind == "f":
            flat = pa.array(np.ascontiguousarray(arr, dtype=np.float32).ravel())
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, int(arr.shape[1]))
        else:
            arrays[name] = pa.array(list(arr) if isinstance(arr, np.ndarray) and arr.dtype == object else arr)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    pq.write_table(pa.table(arrays), tmp)
    os.replace(tmp, path)


def read_parquet(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns as numpy arrays; fixed-size-list columns come back as 2-D float32 arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            out[name] = np.asarray(col.flatten(), dtype=np.float32).reshape(len(col), col.type.list_size)
        else:
            out[name] = np.asarray(col.to_pylist(), dtype=object if pa.types.is_string(col.type) else None)
    return out


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
        from pipeline.write import atomic_write_json

        st = self.status()
        if force or st in ("stale", "new"):
            clear()
        atomic_write_json(self.path, {"stage": self.stage, "hash": self.hash, "key": self.key, "complete": False})
        return st

    def finish(self, info: dict[str, Any] | None = None) -> None:
        from pipeline.write import atomic_write_json

        atomic_write_json(self.path, {"stage": self.stage, "hash": self.hash, "key": self.key, "complete": True,
                                      "info": info or {}})


def remove(*paths: Path) -> None:
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


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

    def faults(self) -> dict | None:
        from pipeline.faults import fault_kwargs

        return fault_kwargs(self.cfg)


# ---------------------------------------------------------------- orchestration


def stage_keys(run: EditsRun) -> dict[str, dict[str, Any]]:
    """The settings each stage depends on, chained through the upstream stages' hashes."""
    from pipeline.cluster import ClusterSettings

    cfg, e, m = run.cfg, run.cfg.edits, run.cfg.models
    k: dict[str, dict[str, Any]] = {}
    k["caption"] = {"data": run.fingerprint, "names": run.names, "vlm": m.vlm, "backend": m.vlm_backend,
                    "style": e.caption_style, "prompt": e.caption_prompt, "prefix": e.caption_prefix,
                    "max_tokens": e.caption_max_tokens, "require_name": e.require_class_name, "clip": m.clip,
                    "size": e.caption_image_size}
    k["embed"] = {"caption": settings_hash(k["caption"]), "clip": m.clip, "size": e.feature_image_size}
    k["cluster"] = {"embed": settings_hash(k["embed"]), **ClusterSettings.from_edits(e).as_dict()}
    ft = e.finetune.model_dump(mode="json")
    k["finetune"] = {"caption": settings_hash(k["caption"]), "sd": m.sd,
                     **{n: v for n, v in ft.items() if n not in ("enabled", "output", "storage_path")}}
    generator = settings_hash(k["finetune"]) if e.finetune.enabled else m.sd
    k["prototype"] = {
        "cluster": settings_hash(k["cluster"]),
        "image": {"vae": generator if e.vae_source == "sd" else m.vae, "source": e.vae_source,
                  "resolution": e.vae_resolution},
        "text": {"llm": m.llm, "backend": m.llm_backend, "url": m.llm_url, "prompt": e.summary_prompt,
                 "max_tokens": e.max_tokens, "temperature": e.llm_temperature, "seed": e.seed,
                 "require_name": e.require_class_name, "sd": m.sd, "names": run.names},
    }
    k["generate"] = {"prototype": settings_hash(k["prototype"]), "model": generator,
                     "strength": e.strength, "guidance": e.guidance_scale, "negative": e.negative_prompt,
                     "steps": e.num_inference_steps, "scheduler": e.scheduler, "seed": e.seed,
                     "size": cfg.data.image_size, "format": cfg.output.image_format}
    return k


def check_from_stage(from_stage: str | None) -> int | None:
    if from_stage is None:
        return None
    if from_stage not in STAGES:
        raise ConfigError(f"--from-stage must be one of {', '.join(STAGES)}; got {from_stage!r}")
    return STAGES.index(from_stage)


def prepare_run(cfg: Config, log: Callable[[str], None] = print) -> EditsRun:
    """Scan the real set and load class names (driver-side, no images decoded)."""
    from pipeline.read import disambiguate_class_names, index_fingerprint, load_class_names, scan_image_folder
    from pipeline.skips import SkipLog

    if not cfg.data.root:
        raise ConfigError("data.root is not set: EDITS needs the real training set (ImageFolder)")
    index = scan_image_folder(cfg.data.root, cfg.data.extensions, classes=cfg.data.classes,
                              max_per_class=cfg.data.max_per_class, follow_symlinks=cfg.data.follow_symlinks)
    names = disambiguate_class_names(load_class_names(cfg.data.class_names, index.classes))
    paths = Artefacts(Path(cfg.output.dir))
    paths.art.mkdir(parents=True, exist_ok=True)
    skips = SkipLog(paths.out / "skipped.jsonl")
    skips.extend(index.skipped, stage="scan")
    return EditsRun(cfg, index, names, paths, skips, index_fingerprint(index), log)


def run_edits(cfg: Config, from_stage: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run EDITS as configured; returns the summary (``output``, counts, ``timings`` per stage)."""
    from pipeline import caption, cluster, embed, generate, prototype
    from pipeline.faults import configure_data_context
    from pipeline.ray_setup import ray_session
    from tuning import finetune_sd

    start_at = check_from_stage(from_stage)
    run = prepare_run(cfg, log)
    keys = stage_keys(run)
    runners = {"caption": caption.run_stage, "embed": embed.run_stage, "cluster": cluster.run_stage,
               "prototype": prototype.run_stage, "finetune": finetune_sd.run_stage, "generate": generate.run_stage}
    timings: dict[str, float] = {}
    results: dict[str, Any] = {}
    t_all = time.perf_counter()
    with ray_session(cfg.ray):
        configure_data_context(cfg.ray)
        for i, name in enumerate(STAGES):
            if name == "finetune" and not cfg.edits.finetune.enabled:
                results[name] = {"skipped": "edits.finetune.enabled is false"}
                continue
            state = StageState(run.paths.art, name, keys[name])
            force = start_at is not None and i >= start_at
            if state.status() == "done" and not force:
                log(f"[edits] {name}: up to date, reusing artefacts")
                results[name] = (state.read() or {}).get("info", {})
                timings[name] = 0.0
                continue
            t0 = time.perf_counter()
            log(f"[edits] {name}: running")
            info = runners[name](run, state, force)
            timings[name] = round(time.perf_counter() - t0, 2)
            state.finish(info)
            results[name] = info
            log(f"[edits] {name}: done in {timings[name]:.1f} s")
            run.skips.write()
    timings["total"] = round(time.perf_counter() - t_all, 2)
    summary = {"method": "edits", "output": str(run.paths.distilled), "contact_sheet": str(run.paths.contact_sheet),
               "prototype_texts": str(run.paths.texts), "stages": results, "timings": timings,
               "skipped": run.skips.summary()}
    from pipeline.write import atomic_write_json

    atomic_write_json(run.paths.art / "summary.json", summary)
    return summary
