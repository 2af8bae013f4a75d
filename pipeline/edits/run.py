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

A stage's settings are what its module declares in ``DEPENDS_ON`` (``state.stage_keys``);
a stage is skipped when its state says complete with the same settings (including every
upstream stage's hash); a stage with the same settings but incomplete resumes (captions,
classes, clusters, images already done are kept); different settings clear it first.
``from_stage`` re-runs that stage and every later one (the caption cache is never cleared:
a re-run never recaptions an image with the same captioner settings).

The distilled set is ``<output.dir>/distilled/`` (ImageFolder + manifest.json), with a
contact sheet at ``<output.dir>/contact_sheet.png``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.core.keys import stage_index
from pipeline.edits.state import Artefacts, EditsRun, StageState, stage_keys
from pipeline.errors import ConfigError

STAGES = ("caption", "embed", "cluster", "finetune", "prototype", "generate")


def check_from_stage(from_stage: str | None) -> int | None:
    """Index of ``from_stage`` among ``STAGES`` (``None`` for none)."""
    return stage_index(STAGES, from_stage)


def prepare_run(cfg: Config, log: Callable[[str], None] = print) -> EditsRun:
    """Scan the real set and load class names (driver-side, no images decoded)."""
    from pipeline.core.read import (
        disambiguate_class_names,
        index_fingerprint,
        load_class_names,
        scan_image_folder,
    )
    from pipeline.core.skips import SkipLog

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
    from pipeline.core.faults import configure_data_context
    from pipeline.core.ray_setup import ray_session
    from pipeline.edits import buffer, caption, embed, finetune, generate, prototype

    start_at = check_from_stage(from_stage)
    run = prepare_run(cfg, log)
    keys = stage_keys(run)
    runners = {"caption": caption.run_stage, "embed": embed.run_stage, "cluster": buffer.run_stage,
               "prototype": prototype.run_stage, "finetune": finetune.run_stage, "generate": generate.run_stage}
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
    from pipeline.core.write import atomic_write_json

    atomic_write_json(run.paths.art / "summary.json", summary)
    return summary
