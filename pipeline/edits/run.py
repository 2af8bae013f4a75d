"""EDITS end to end: caption -> embed -> cluster -> finetune -> prototype -> generate.

``run_edits(cfg, from_stage=None)`` runs every stage whose artefacts are missing or stale
and returns a summary (output folder, counts, wall time per stage). Artefacts live under
``<output.dir>/artefacts/``:

    captions/part-*.parquet      caption cache keyed by (image path, captioner settings)
    features/<class>.parquet     CLIP image + caption features per class (raw)
    buffer/<class>.parquet       GSQ-fused features, LOF flag, cluster, distance, caption
    clusters/<class>.json        k-means + LSA per class; clusters.json merges them
    prototypes/latents/<key>.pt  image prototypes (mean VAE latent per cluster)
    prototypes/texts.json        text prototypes (LLM summaries) per cluster (+ texts.journal.jsonl while running)
    <stage>.state.json           the settings hash a stage ran with and whether it completed

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
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.core.keys import stage_index
from pipeline.core.lock import holds_output_lock
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
        raise ConfigError("data.root is not set: EDITS needs the real training set (ImageFolder, parquet, WebDataset)")
    index = scan_data(cfg.data, cfg.ray)  # any data.format; sharded sets are indexed by Ray Data's readers
    names = disambiguate_class_names(load_class_names(cfg.data.class_names, index.classes))
    paths = Artefacts(Path(cfg.output.dir))
    paths.art.mkdir(parents=True, exist_ok=True)
    skips = SkipLog(paths.out / "skipped.jsonl")
    skips.extend(index.skipped, stage="scan")
    return EditsRun(cfg, index, names, paths, skips, index_fingerprint(index), log)


class StageRunner:
    """Runs EDITS stages in order: reuse a stage that is up to date, else run it and record its state and time."""

    def __init__(self, cfg: Config, from_stage: str | None, log: Callable[[str], None]) -> None:
        self.start_at = check_from_stage(from_stage)
        self.run = prepare_run(cfg, log)
        self.keys = run_stage_keys(self.run)
        self.log = log
        self.timings: dict[str, float] = {}
        self.results: dict[str, Any] = {}
        self._t_all = time.perf_counter()

    @contextmanager
    def ray(self) -> Iterator[None]:
        """The Ray session (and Ray Data context) every stage runs in."""
        from pipeline.core.faults import configure_data_context
        from pipeline.core.ray_setup import ray_session

        with ray_session(self.run.cfg.ray):
            configure_data_context(self.run.cfg.ray)
            yield

    def __call__(self, name: str, runner: Callable[[EditsRun, StageState, bool], dict[str, Any]],
                 skip: str | None = None) -> None:
        """Stage ``name``: skipped when ``skip`` says why, reused when done, else run (forced from ``from_stage`` on)."""
        if skip:
            self.results[name] = {"skipped": skip}
            return
        state = StageState(self.run.paths.art, name, self.keys[name])
        force = self.start_at is not None and STAGES.index(name) >= self.start_at
        if state.status() == "done" and not force:
            self.log(f"[edits] {name}: up to date, reusing artefacts")
            self.results[name] = (state.read() or {}).get("info", {})
            self.timings[name] = 0.0
            return
        t0 = time.perf_counter()
        self.log(f"[edits] {name}: running")
        info = runner(self.run, state, force)
        self.timings[name] = round(time.perf_counter() - t0, 2)
        state.finish(info)
        self.results[name] = info
        self.log(f"[edits] {name}: done in {self.timings[name]:.1f} s")
        self.run.skips.write()

    def summary(self) -> dict[str, Any]:
        """The run's summary, also written to ``artefacts/summary.json``."""
        from pipeline.core.write import atomic_write_json

        paths = self.run.paths
        self.timings["total"] = round(time.perf_counter() - self._t_all, 2)
        summary = {"method": "edits", "output": str(paths.distilled), "contact_sheet": str(paths.contact_sheet),
                   "prototype_texts": str(paths.texts), "stages": self.results, "timings": self.timings,
                   "skipped": self.run.skips.summary()}
        atomic_write_json(paths.art / "summary.json", summary)
        return summary


@holds_output_lock
def run_edits(cfg: Config, from_stage: str | None = None, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run EDITS as configured; returns the summary (``output``, counts, ``timings`` per stage).

    The steps are docs/METHODS.md's; a stage that holds several of them runs them in one pass.
    """
    stage = StageRunner(cfg, from_stage, log)  # scans the real set, derives every stage's settings key
    ft_off = None if cfg.edits.finetune.enabled else "edits.finetune.enabled is false"
    with stage.ray():
        # 1. Captioning: a VLM caption per real image
        stage("caption", caption.run_stage)
        # 2. Features: CLIP image embedding and caption embedding per image
        stage("embed", embed.run_stage)
        # 3. Global Semantic Query, 4. prior clustered buffer (LOF, k-means, k = IPC), 5. LSA: one pass per class
        stage("cluster", buffer.run_stage)
        # 9. (optional; the authors ran it before generating) text-to-image fine-tune of SD on the captioned set
        stage("finetune", finetune.run_stage, skip=ft_off)
        # 6. image prototype (mean VAE latent), 7. text prototype (LLM summary) per cluster
        stage("prototype", prototype.run_stage)
        # 8. Dual Prototype Guidance: SD img2img from the image prototype with the text prototype as prompt
        stage("generate", generate.run_stage)
    return stage.summary()
