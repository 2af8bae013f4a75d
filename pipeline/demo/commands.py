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


def recorded_checks(folder: Path, role: str) -> str:
    """The accuracies a demo role's recipe recorded in ``<role>.json`` (e.g. ``sample_accuracy 97.5%``), or
    ''."""
    report = folder / f"{role}.json"
    if not report.is_file():
        return ""
    values = json.loads(report.read_text())
    return ", ".join(f"{k} {v:.1%}" for k, v in values.items()
                     if k.endswith("accuracy") and isinstance(v, float))


def zoo_list(args: argparse.Namespace) -> int:
    for role in zoo.ROLES:
        built = zoo.is_built(role, args.dir)
        folder = zoo.zoo_path(role, args.dir)
        checks = recorded_checks(folder, role) if built else ""
        print(f"  {role:9s} {'built' if built else 'missing':8s} {folder}"
              + (f"  ({checks})" if checks else ""))
        if role == "demo_sd":
            _print_sd_checks()
    return 0


def _print_sd_checks() -> None:
    """The shipped demo SD's check numbers (its ``demo_sd.json``) under its line."""
    from actors import shipped
    from pipeline.demo.zoo.models import sd_checks_line

    report = shipped.WEIGHTS_DIR / "demo_sd" / "demo_sd.json"
    if report.is_file():
        print(f"  {'':9s} {sd_checks_line(json.loads(report.read_text()))}")


def demo(args: argparse.Namespace) -> int:
    """Prepare the demo data and zoo, then run every demo stage that is available."""
    from pipeline.demo.run import run_demo

    result = run_demo(Path(args.out), quick=args.quick, full=getattr(args, "full", False),
                      verbose=getattr(args, "verbose", False), ablations=getattr(args, "ablations", False))
    summary = Path(result["report_html"]).parent / "demo_summary.json"
    print(f"summary: {summary}" if not getattr(args, "verbose",
                                               False) else json.dumps(result, indent=2, default=str))
    return 0


DEMO_ROLES = ("demo_vlm", "demo_clip", "demo_sd", "demo_dit")


def train_demo_role(role: str, weights_dir: Path, data: str | None) -> dict:
    """Train one shipped demo role from its recipe into ``weights_dir/<role>`` (demo_sd needs demo_clip
    there)."""
    from pipeline.core.write import atomic_folder
    from pipeline.demo.zoo import models

    with atomic_folder(weights_dir / role) as out:  # swapped in whole; a full disk raises DiskFullError
        if role == "demo_dit":
            from pipeline.demo.zoo.dit import train_demo_dit

            report = train_demo_dit(out, data)
        elif role == "demo_vlm":
            report = models.train_demo_vlm(out, data)
        elif role == "demo_clip":
            report = models.train_demo_clip(out, data)
        else:
            report = models.train_demo_sd(out, weights_dir / "demo_clip", data)
    return report


def train_demo(args: argparse.Namespace) -> int:
    """``zoo train-demo``: train the demo roles from their recipes, ship them (SHA256SUMS), refresh the
    zoo."""
    from actors import shipped

    roles = list(args.roles or DEMO_ROLES)
    unknown = [r for r in roles if r not in DEMO_ROLES]
    if unknown:
        print(f"semdistill zoo train-demo: unknown role(s) {', '.join(unknown)}; known: "
              f"{', '.join(DEMO_ROLES)}")
        return 2
    weights_dir = Path(args.weights_dir) if args.weights_dir else shipped.WEIGHTS_DIR
    weights_dir.mkdir(parents=True, exist_ok=True)
    for role in sorted(roles, key=DEMO_ROLES.index):  # demo_clip before demo_sd (its text encoder)
        if (weights_dir / role).is_dir() and not args.force:
            print(f"  {role}: shipped weights present in {weights_dir / role} (use --force to retrain)")
            continue
        if role == "demo_sd" and not (weights_dir / "demo_clip").is_dir():
            print("semdistill zoo train-demo: demo_sd needs demo_clip's text encoder; train --roles "
                  "demo_clip first")
            return 2
        train_demo_role(role, weights_dir, args.data)
        sums = shipped.write_sums(weights_dir)
        print(f"  {role}: trained into {weights_dir / role}; sums in {sums}")
        if weights_dir == shipped.WEIGHTS_DIR:
            zoo.build_role(role, args.dir, force=True)
    return 0
