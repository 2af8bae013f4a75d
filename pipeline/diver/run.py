"""DIVER end to end: classical distilled set in, DiT-recovered set out.

Stages (``--from-stage`` re-runs from one of them, reusing what came before):
- ``stage1``: the built-in DM distiller when ``diver.stage1`` is set (one set per IPC in
  ``diver.stage1.ipcs``), else the set at ``diver.input`` is used as it is;
- ``recover``: Ray Data: rows of the distilled set (pixels de-normalised to [0, 1]) ->
  ``DiTRecoverActor`` pool (``ActorPoolStrategy(size=ray.pool_sizes.recover)``) -> the driver
  writes ImageFolder + ``manifest.json`` (source image, DiT class, seed, settings);
- ``report``: ``side_by_side.png`` (input | recovered, one row per class) and ``summary.json``.

Layout: with DM, ``<output.dir>/ipc<K>/{stage1,diver,side_by_side.png}``; with
``diver.input``, ``<output.dir>/{diver,side_by_side.png}``. A re-run resumes: images whose key
is in the manifest are not recomputed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.core.digits import ensure_demo_data
from pipeline.core.lock import holds_output_lock
from pipeline.core.stages import Stage, StageRunner
from pipeline.diver.load import load_set
from pipeline.diver.recover import recover
from pipeline.diver.recovery import resolve_recovery
from pipeline.diver.report import report, write_summary
from pipeline.diver.sets import log, plan_sets
from pipeline.diver.stage1 import stage1

STAGES = ("stage1", "recover", "report")


@holds_output_lock
def run_diver(cfg: Config, from_stage: str | None = None) -> dict[str, Any]:
    """Run DIVER as configured; returns a summary (``output``, per-set paths, counts, timings)."""
    stages = StageRunner(STAGES, from_stage, redo_all=cfg.output.overwrite)
    out = Path(cfg.output.dir)
    out.mkdir(parents=True, exist_ok=True)
    ensure_demo_data(cfg, log=log)  # also when called without `semdistill run` (the demo, sweeps)
    # 1. The sets: one per IPC of the built-in distiller, else diver.input as it is
    sets = plan_sets(cfg, out)
    t0 = time.perf_counter()
    # 2. Stage 1: the built-in distiller (DM or GM) writes each set; diver.input must exist
    stages(stage1(cfg, sets))
    # 3. The recovery's DiT, guidance settings, VAE and class map, resolved once for every set
    recovery = resolve_recovery(cfg)
    # 4. Each set's stage-1 images, their DiT classes, keys and manifest settings
    loaded = [load_set(cfg, s, recovery) for s in sets]
    # 5. Recover: the DiT actor pool over the images not yet in the manifests
    written = stages(Stage("recover", lambda _force: recover(cfg, loaded, recovery),
                           outputs=[s.recovered for s in sets]))
    # 6. Report: a tensor input as images, side-by-side sheets, then summary.json
    entries = stages(Stage("report", lambda _force: report(cfg, loaded, written)))
    timings = {"stage1_s": round(stages.seconds["stage1"], 1),
               "recover_s": round(stages.seconds["recover"], 1),
               "total_s": round(time.perf_counter() - t0, 1)}
    return write_summary(cfg, out, entries, timings)
