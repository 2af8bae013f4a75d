"""Foundation commands: ``data demo``, ``zoo build``, ``zoo list`` and ``demo``."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from actors import zoo


def data_demo(args: argparse.Namespace) -> int:
    from pipeline.core.digits import write_demo_dataset

    summary = write_demo_dataset(args.out, size=args.size, val_fraction=args.val_fraction, seed=args.seed)
    n_train, n_val = sum(summary["counts"]["train"].values()), sum(summary["counts"]["val"].values())
    print(f"wrote the demo digits to {args.out}: {n_train} train + {n_val} val images, 10 classes, "
          f"{args.size}x{args.size} RGB")
    return 0


def zoo_build(args: argparse.Namespace) -> int:
    roles = tuple(args.roles) if args.roles else None
    print(f"local model zoo in {args.dir or zoo.default_zoo_dir()}:")
    zoo.build_zoo(args.dir, roles=roles, force=args.force)
    return 0


def zoo_list(args: argparse.Namespace) -> int:
    for role in zoo.ROLES:
        state = "built" if zoo.is_built(role, args.dir) else "missing"
        print(f"  {role:9s} {state:8s} {zoo.zoo_path(role, args.dir)}")
    return 0


def demo(args: argparse.Namespace) -> int:
    """Prepare the demo data and zoo, then run every demo stage that is available."""
    from pipeline.demo.run import run_demo

    result = run_demo(Path(args.out), quick=args.quick, full=getattr(args, "full", False),
                      verbose=getattr(args, "verbose", False))
    summary = Path(result["report_html"]).parent / "demo_summary.json"
    print(f"summary: {summary}" if not getattr(args, "verbose", False) else json.dumps(result, indent=2, default=str))
    return 0
