"""``semdistill run CONFIG``: resolve the config and hand it to its method's runner."""

from __future__ import annotations

import argparse
import contextlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipeline.config import Config, dump_config, load_config
from pipeline.core.console import note, quiet_terminal, tagged_lines
from pipeline.core.digits import ensure_demo_data
from pipeline.core.lock import output_lock
from pipeline.core.write import atomic_write_bytes, set_pause_after_write
from pipeline.errors import ConfigError

METHODS = ("edits", "diver")


def method_runner(method: str) -> Callable[..., dict[str, Any]]:
    """The runner of ``method``. Imported here, not at the top: each method pulls in its model stack
    (torch, diffusers, transformers), which ``--print-config`` and the other method never need."""
    if method == "edits":
        from pipeline.edits.run import run_edits

        return run_edits
    if method == "diver":
        from pipeline.diver.run import run_diver

        return run_diver
    raise ConfigError(f"method must be one of {sorted(METHODS)} to run, got {method!r}")


def run_config(cfg: Config, from_stage: str | None = None,
               log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run ``cfg.method`` and return its summary (paths, counts, timings); ``log``: EDITS's lines (default
    print)."""
    runner = method_runner(cfg.method)
    ensure_demo_data(cfg)  # a demo config on a fresh checkout writes its digits first
    set_pause_after_write(cfg.debug.pause_after_write_s)
    if log is not None and cfg.method == "edits":
        return runner(cfg, from_stage=from_stage, log=log)
    return runner(cfg, from_stage=from_stage)


def quiet_ray(cfg: Config, logs: Path) -> Config:
    """``cfg`` with the Ray workers' output kept in Ray's session logs (linked from ``logs``), off the
    terminal; Ray Data's own progress lines off too (they would fill the log)."""
    os.environ.setdefault("SEMDISTILL_PROGRESS", "0")
    return cfg.model_copy(update={"ray": cfg.ray.model_copy(update={"log_to_driver": False,
                                                                    "logs_dir": str(logs)})})


# EDITS's stage lines ("[edits] caption: done in 9.1 s") on the terminal, its other lines in the log
EDITS_LINES = tagged_lines("[edits]", note)


def set_lines(summary: dict[str, Any]) -> list[str]:
    """One line per set a DIVER run wrote (its images and folder); none for EDITS (its lines said it)."""
    return [f"{summary.get('method', 'diver')} {name}: {entry.get('images', '?')} images -> "
            f"{entry.get('recovered')}" for name, entry in (summary.get("sets") or {}).items()]


def distilled_set(summary: dict[str, Any]) -> str:
    """The one distilled set a run wrote: EDITS's ``distilled/``, or DIVER's recovered set (not the run
    root)."""
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
    if args.print_config:  # the eval section as its preset resolves it (the per-set rules stay tables)
        if cfg.eval is not None:
            from tuning.protocols import resolve_preset

            cfg = cfg.model_copy(update={"eval": resolve_preset(cfg.eval)})
        print(dump_config(cfg), end="")
        return 0
    if cfg.eval is not None:  # a preset's missing teacher or a bad student stops the run before it distils
        from tuning.evaluate import check_eval

        check_eval(cfg.eval)
    out = Path(cfg.output.dir)
    verbose = getattr(args, "verbose", False)
    logs = out.resolve() / "logs"
    with output_lock(out):  # a second run into this folder stops here, before it writes anything
        atomic_write_bytes(out / "config.yaml", dump_config(cfg).encode())
        run_cfg = cfg if verbose else quiet_ray(cfg, logs)
        with contextlib.nullcontext() if verbose else quiet_terminal(logs):
            if not verbose:
                note(f"logs: {logs}")
            summary = run_config(run_cfg, from_stage=args.from_stage, log=None if verbose else EDITS_LINES)
            if not verbose:  # the sets' own lines went to the log
                for line in set_lines(summary):
                    note(line)
            note(f"done: {summary.get('output', out)}")
            if cfg.eval is not None:  # the last stage: cross-architecture evaluation (tuning/evaluate.py)
                # heavy: torch, Ray Train (only a run that evaluates pays)
                from tuning.evaluate import evaluate_run

                evaluate_run(run_cfg, summary)
                note(f"evaluation: {out / 'results.md'}")
    return 0


def sweep_main(args: argparse.Namespace) -> int:
    """``semdistill sweep CONFIG``: a Ray Tune sweep whose trials distil with ``run_config``.

    As the demo: one line per trial and one progress bar on the terminal; Ray's, Tune's and the trials'
    output in ``<output.dir>/logs/`` (``run.log``, ``ray_session``); ``--verbose`` shows everything.
    """
    # heavy: ray (not loaded when this module is imported)
    from tuning.sweep import run_sweep  # Ray Tune: only the sweep command pays its import

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "1")
    cfg = load_config(args.config, args.overrides)
    logs = Path(cfg.output.dir).resolve() / "logs"
    verbose = getattr(args, "verbose", False)
    if not verbose:  # workers' output stays in Ray's session logs, linked from logs/
        cfg = quiet_ray(cfg, logs)
    with contextlib.nullcontext() if verbose else quiet_terminal(logs):
        if not verbose:
            note(f"logs: {logs}")
        run_sweep(cfg, distil_one_set, log=note)
    return 0
