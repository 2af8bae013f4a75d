"""``semdistill run CONFIG``: resolve the config and hand it to its method's runner."""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path
from typing import Any

from pipeline.config import Config, dump_config, load_config
from pipeline.core.lock import output_lock
from pipeline.core.write import atomic_write_bytes, set_pause_after_write
from pipeline.errors import ConfigError

RUNNERS = {
    "edits": "pipeline.edits.run:run_edits",
    "diver": "pipeline.diver.run:run_diver",
}


def run_config(cfg: Config, from_stage: str | None = None) -> dict[str, Any]:
    """Run ``cfg.method`` and return its summary (paths, counts, timings)."""
    if cfg.method not in RUNNERS:
        raise ConfigError(f"method must be one of {sorted(RUNNERS)} to run, got {cfg.method!r}")
    from pipeline.core.digits import ensure_demo_data

    ensure_demo_data(cfg)  # a demo config on a fresh checkout writes its digits first
    set_pause_after_write(cfg.debug.pause_after_write_s)
    module_name, func = RUNNERS[cfg.method].split(":")
    runner = getattr(importlib.import_module(module_name), func)
    return runner(cfg, from_stage=from_stage)


def distilled_set(summary: dict[str, Any]) -> str:
    """The one distilled set a run wrote: EDITS's ``distilled/``, or DIVER's recovered set (not the run root)."""
    sets = summary.get("sets")
    if not sets:
        return str(summary["output"])
    if len(sets) != 1:
        raise ConfigError(f"the run wrote {len(sets)} sets ({', '.join(sets)}); a sweep trial evaluates one: "
                          "give diver.input, or one stage-1 IPC")
    return str(next(iter(sets.values()))["recovered"])


def distil_one_set(cfg: Config) -> str:
    """Run ``cfg.method`` and return the path of the distilled set to evaluate (a sweep trial's set)."""
    return distilled_set(run_config(cfg))


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    if args.print_config:
        print(dump_config(cfg), end="")
        return 0
    out = Path(cfg.output.dir)
    with output_lock(out):  # a second run into this folder stops here, before it writes anything
        atomic_write_bytes(out / "config.yaml", dump_config(cfg).encode())
        summary = run_config(cfg, from_stage=args.from_stage)
        print(f"done: {summary.get('output', out)}")
        if cfg.eval is not None:  # the last stage: cross-architecture evaluation (tuning/evaluate.py)
            from tuning.evaluate import evaluate_run

            evaluate_run(cfg, summary)
            print(f"evaluation: {out / 'results.md'}")
    return 0


def sweep_main(args: argparse.Namespace) -> int:
    """``semdistill sweep CONFIG``: a Ray Tune sweep whose trials distil with ``run_config``.

    As the demo: one line per trial and one progress bar on the terminal; Ray's, Tune's and the trials'
    output in ``<output.dir>/logs/`` (``run.log``, ``ray_session``); ``--verbose`` shows everything.
    """
    import contextlib
    import os

    from pipeline.core.console import note, quiet_terminal
    from tuning.sweep import run_sweep

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    cfg = load_config(args.config, args.overrides)
    logs = Path(cfg.output.dir).resolve() / "logs"
    verbose = getattr(args, "verbose", False)
    if not verbose:  # workers' output stays in Ray's session logs, linked from logs/
        cfg = cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"log_to_driver": False,
                                                                        "logs_dir": str(logs)})})
        os.environ.setdefault("SEMDISTILL_PROGRESS", "0")  # Ray Data's bars would fill the log
    with contextlib.nullcontext() if verbose else quiet_terminal(logs):
        if not verbose:
            note(f"logs: {logs}")
        run_sweep(cfg, distil_one_set, log=note)
    return 0
