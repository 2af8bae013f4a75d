"""``semdistill eval --distilled DIR --real DIR --students ...``: cross-architecture evaluation."""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config import EvalConfig, load_config

CLI_DEFAULT_STUDENTS = ["convnet", "resnet18"]


def eval_config_for(args: argparse.Namespace) -> tuple[EvalConfig, object]:
    """The eval section of ``--config`` (or defaults) with overrides; ``--students`` wins unless
    left at its default while the config names students itself."""
    cfg = load_config(args.config, args.overrides)
    ev = cfg.eval or EvalConfig()
    fields = ev.model_dump(include=ev.model_fields_set)
    if args.students != CLI_DEFAULT_STUDENTS or "students" not in fields:
        fields["students"] = list(args.students)
    return EvalConfig.model_validate(fields), cfg


def main(args: argparse.Namespace) -> int:
    # heavy: PIL, torch, numpy (not loaded when this module is imported)
    from tuning.evaluate import evaluate_sets, results_markdown
    from tuning.protocols import resolve_preset

    ev, cfg = eval_config_for(args)
    ev = resolve_preset(ev)  # a preset may set the protocol (rded, sre2l: soft labels), so resolve it first
    distilled = Path(args.distilled)
    out = Path(args.out) if args.out else distilled
    train = args.train or (cfg.data.root if ev.protocol == "soft" else None)
    rows = evaluate_sets({distilled.name or "distilled": distilled}, args.real, ev, out, train_root=train,
                         ray_cfg=cfg.ray)
    print(results_markdown(rows), end="")
    print(f"wrote {out / 'results.json'}, results.csv, results.md")
    return 0
