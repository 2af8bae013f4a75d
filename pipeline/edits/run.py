"""EDITS end to end: caption -> embed -> cluster -> finetune -> prototype -> generate.

``run_edits(cfg, from_stage=None)`` runs every stage whose artefacts are missing or stale
and returns a summary (output folder, counts, wall time per stage). Artefacts live under
``<output.dir>/artefacts/``:

    captions/part-*.parquet      caption cache keyed by (image path, captioner settings)
    features/<class>.parquet     CLIP image + caption features per class (raw)
    buffer/<class>.parquet       GSQ-fused features, LOF flag, cluster, distance, caption
    clusters/<class>.json        k-means + LSA per class; clusters.json merges them
    prototypes/latents/<key>.pt  image prototypes (mean VAE latent per cluster)
    prototypes/texts.json        text prototypes (LLM summaries) per cluster (+ texts.journal.jsonl while
    running) <stage>.state.json           the settings hash a stage ran with and whether it completed

A stage's settings are what its module declares in ``DEPENDS_ON`` (``run_stage_keys``);
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
from functools import partial
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.core.faults import configure_data_context
from pipeline.core.keys import stage_index
from pipeline.core.lock import holds_output_lock
from pipeline.core.ray_setup import ray_session
from pipeline.core.stages import Stage, StageRunner
from pipeline.core.write import atomic_write_json
from pipeline.edits import buffer, caption, embed, finetune, generate, prototype
from pipeline.edits.state import Artefacts, EditsRun, StageState, stage_keys
from pipeline.errors import ConfigError

# The stages in execution order, each the module that declares its ``DEPENDS_ON`` and runs it.
STAGE_MODULES = {"caption": caption, "embed": embed, "cluster": buffer, "finetune": finetune,
                 "prototype": prototype, "generate": generate}
STAGES = tuple(STAGE_MODULES)


def stage_declarations() -> dict[str, tuple[str, ...] | dict[str, tuple[str, ...]]]:
    """Every stage's ``DEPENDS_ON``, in ``STAGES`` order."""
    return {name: module.DEPENDS_ON for name, module in STAGE_MODULES.items()}


def run_stage_keys(run: EditsRun) -> dict[str, dict[str, Any]]:
    """The settings key of every stage of ``run``."""
    return stage_keys(run, stage_declarations())


def check_from_stage(from_stage: str | None) -> int | None:
    """Index of ``from_stage`` among ``STAGES`` (``None`` for none)."""
    return stage_index(STAGES, from_stage)


def prepare_run(cfg: Config, log: Callable[[str], None] = print) -> EditsRun:
    """Scan the real set and load class names (driver-side, no images decoded)."""
    from pipeline.core.image_index import disambiguate_class_names, index_fingerprint, load_class_names
    from pipeline.core.shards import scan_data
    from pipeline.core.skips import SkipLog

    if not cfg.data.root:
        raise ConfigError("data.root is not set: EDITS needs the real training set (ImageFolder, parquet, "
                          "WebDataset)")
    index = scan_data(cfg.data, cfg.ray)  # any data.format; sharded sets are indexed by Ray Data's readers
    names = disambiguate_class_names(load_class_names(cfg.data.class_names, index.classes))
    paths = Artefacts(Path(cfg.output.dir))
    paths.art.mkdir(parents=True, exist_ok=True)
    skips = SkipLog(paths.out / "skipped.jsonl")
    skips.extend(index.skipped, stage="scan")
    return EditsRun(cfg, index, names, paths, skips, index_fingerprint(index), log)


def edits_stage(run: EditsRun, keys: dict[str, dict[str, Any]], name: str, skip: str | None = None) -> Stage:
    """Stage ``name`` of ``run``: its module's ``run_stage``, reused while ``<name>.state.json`` records a
    complete run with the same settings key (``keys[name]``); each run writes the skip log."""
    state = StageState(run.paths.art, name, keys[name])

    def reuse() -> dict[str, Any] | None:
        return (state.read() or {}).get("info", {}) if state.status() == "done" else None

    def record(info: dict[str, Any]) -> None:
        state.finish(info)
        run.skips.write()

    return Stage(name, partial(STAGE_MODULES[name].run_stage, run, state), key=keys[name],
                 reuse=reuse, record=record, skip=skip)


def write_summary(run: EditsRun, stages: StageRunner, started: float) -> dict[str, Any]:
    """The run's summary, also written to ``artefacts/summary.json``."""
    paths = run.paths
    timings = {name: round(s, 2) for name, s in stages.seconds.items()}
    timings["total"] = round(time.perf_counter() - started, 2)
    summary = {"method": "edits", "output": str(paths.distilled), "contact_sheet": str(paths.contact_sheet),
               "prototype_texts": str(paths.texts), "stages": stages.results, "timings": timings,
               "skipped": run.skips.summary()}
    atomic_write_json(paths.art / "summary.json", summary)
    return summary


@holds_output_lock
def run_edits(cfg: Config, from_stage: str | None = None,
              log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run EDITS as configured; returns the summary (``output``, counts, ``timings`` per stage).

    The steps are docs/METHODS.md's, numbered here in the order they run (METHODS.md lists the optional
    fine-tune last, as step 9); a stage that holds several of them runs them in one pass.
    """
    started = time.perf_counter()
    stages = StageRunner(STAGES, from_stage, say=lambda line: log(f"[edits] {line}"))
    run = prepare_run(cfg, log)  # scans the real set
    keys = run_stage_keys(run)  # every stage's settings key
    ft_off = None if cfg.edits.finetune.enabled else "edits.finetune.enabled is false"
    with ray_session(cfg.ray):  # every stage runs in one Ray session
        configure_data_context(cfg.ray)
        # 1. Captioning: a VLM caption per real image
        stages(edits_stage(run, keys, "caption"))
        # 2. Features: CLIP image embedding and caption embedding per image
        stages(edits_stage(run, keys, "embed"))
        # 3. Global Semantic Query, 4. prior clustered buffer (LOF, k-means, k = IPC), 5. LSA: one pass per
        # class
        stages(edits_stage(run, keys, "cluster"))
        # 6. (METHODS.md 9; optional, the authors ran it before generating) text-to-image fine-tune of SD
        #    on the captioned set
        stages(edits_stage(run, keys, "finetune", skip=ft_off))
        # 7. image prototype (mean VAE latent), 8. text prototype (LLM summary) per cluster
        stages(edits_stage(run, keys, "prototype"))
        # 9. Dual Prototype Guidance: SD img2img from the image prototype with the text prototype as prompt
        stages(edits_stage(run, keys, "generate"))
    return write_summary(run, stages, started)
