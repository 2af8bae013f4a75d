"""``semdistill data check ROOT --ipc K``: what a run would use and skip, without any model.

Scans the set exactly as a run does (``scan_root``: ImageFolder, parquet or WebDataset shards, local
or a URI), decodes every
candidate with the run's decoder (``load_rgb``), and reports every file it would skip
with the reason, the usable images per class, and problems. Exit code 1 when a class
ends up empty or below IPC (the run would fail), 0 otherwise; configuration faults
(missing root, no class folders) exit 2 through the CLI's error path.
"""

from __future__ import annotations

import argparse
import json
import os
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from pipeline.core.image_index import DEFAULT_EXTENSIONS, duplicate_class_names, load_class_names
from pipeline.core.read import BadImageError, load_rgb
from pipeline.core.shards import scan_root
from pipeline.core.skips import reason_kind

EMPTY_REASON = "empty class folder"


def probe_image(path: str, size: int = 32) -> str:
    """'' when ``path`` decodes like a run would decode it, else the reason it would be skipped."""
    try:
        load_rgb(path, size)
        return ""
    except BadImageError as err:
        return str(err)


def _probe_all(paths: list[str], size: int, workers: int) -> list[str]:
    if workers <= 1 or len(paths) < 64:
        return [probe_image(p, size) for p in paths]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(probe_image, paths, [size] * len(paths), chunksize=64))


def check_dataset(root: str | os.PathLike, ipc: int = 1,
                  extensions: tuple[str, ...] | list[str] = DEFAULT_EXTENSIONS,
                  class_names: str | os.PathLike | None = None, decode: bool = True, workers: int = 1,
                  size: int = 32, follow_symlinks: bool = True, fmt: str = "auto") -> dict[str, Any]:
    """The data-check report as a dict (see the module docstring); ``ok`` is False on any problem.

    ``fmt``: the ``data.format`` (``auto`` detects parquet / WebDataset shards, else an ImageFolder).
    """
    index = scan_root(str(root), fmt, extensions, follow_symlinks=follow_symlinks, allow_empty_classes=True)
    skipped = [dict(s) for s in index.skipped]
    empty = sorted(Path(s["path"]).name for s in skipped if s["reason"] == EMPTY_REASON)
    counts: dict[str, int] = {c: 0 for c in sorted([*index.classes, *empty])}
    paths = [r.path for r in index.records]
    reasons = _probe_all(paths, size, workers) if decode else [""] * len(paths)
    for rec, reason in zip(index.records, reasons):
        if reason:
            skipped.append({"path": rec.path, "reason": reason})
        else:
            counts[rec.class_id] += 1
    skipped.sort(key=lambda s: s["path"])

    problems: list[str] = []
    for cls, n in counts.items():
        if n == 0:
            problems.append(f"class {cls!r}: no usable images (empty)")
        elif n < ipc:
            problems.append(f"class {cls!r}: {n} usable images, below ipc {ipc}")

    warnings: list[str] = []
    lower = Counter(c.lower() for c in counts)
    for name, k in sorted(lower.items()):
        if k > 1:
            same = [c for c in counts if c.lower() == name]
            warnings.append(f"class folders {same} differ only in case (they collide on macOS/Windows)")
    if class_names is not None:
        names = load_class_names(class_names, list(counts))
        for name, ids in duplicate_class_names(names).items():
            warnings.append(f"class name {name!r} is shared by {ids}: prompts will name them with their ids")
    aliases = [s for s in index.skipped if s["reason"].startswith(("aliased", "folder already scanned"))]
    # the scan resolved real paths once: no file is counted twice or in a class it does not sit under
    if aliases:
        warnings.append(f"{len(aliases)} aliased folder(s)/file(s) skipped (links to files used elsewhere)")

    return {
        "root": str(index.root),
        "ipc": ipc,
        "decoded": decode,
        "classes": len(counts),
        "files": len(paths) + sum(1 for s in index.skipped if s["reason"] != EMPTY_REASON),
        "usable": sum(counts.values()),
        "counts": counts,
        "skipped": skipped,
        "skipped_by_reason": dict(sorted(Counter(reason_kind(s["reason"]) for s in skipped).items())),
        "problems": problems,
        "warnings": warnings,
        "ok": not problems,
    }


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"dataset: {rep['root']}",
             f"classes: {rep['classes']}   usable images: {rep['usable']}   skipped: {len(rep['skipped'])}"
             + ("" if rep["decoded"] else "   (files not decoded: --no-decode)")]
    if rep["skipped"]:
        lines.append("skipped (path: reason):")
        lines += [f"  {s['path']}: {s['reason']}" for s in rep["skipped"]]
        lines.append("skipped by reason: " + ", ".join(f"{k} {v}" for k,
                                                       v in rep["skipped_by_reason"].items()))
    lines.append(f"usable images per class (ipc {rep['ipc']}):")
    width = max((len(c) for c in rep["counts"]), default=0)
    for cls, n in rep["counts"].items():
        flag = "  EMPTY" if n == 0 else ("  BELOW IPC" if n < rep["ipc"] else "")
        lines.append(f"  {cls:<{width}}  {n}{flag}")
    for w in rep["warnings"]:
        lines.append(f"warning: {w}")
    for p in rep["problems"]:
        lines.append(f"problem: {p}")
    lines.append("OK" if rep["ok"] else f"FAILED: {len(rep['problems'])} problem(s)")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    rep = check_dataset(
        args.root, ipc=args.ipc,
        class_names=getattr(args, "class_names", None),
        decode=not getattr(args, "no_decode", False),
        workers=getattr(args, "workers", 1) or 1,
        fmt=getattr(args, "format", None) or "auto",
    )
    if getattr(args, "as_json", False):
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print(format_report(rep))
    return 0 if rep["ok"] else 1
