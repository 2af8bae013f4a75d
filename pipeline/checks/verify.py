"""``semdistill verify DIR``: check a distilled set against its ``manifest.json``.

The manifest is the source of truth. Every entry must point inside DIR, to a file that
exists, decodes, and (when the writer recorded one) matches its sha256; keys and files are
unique; a class id has one label and lives in its own folder; per-class counts match the
manifest's ``expected_counts`` (or ``settings.ipc``, or ``--ipc``); every image on disk is
in the manifest; all images have one size (``settings.image_size`` when recorded).
Exit code 0 when all holds, 1 on any mismatch (a missing or unreadable manifest exits 2).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.read import BadImageError, load_rgb
from pipeline.core.write import MANIFEST, component_name, read_manifest

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp")


def _inside(root: Path, rel: str) -> bool:
    if not rel or os.path.isabs(rel) or "\\" in rel:
        return False
    parts = Path(rel).parts
    return ".." not in parts and (root / rel).resolve().is_relative_to(root.resolve())


@dataclass
class _Tally:
    """What the manifest entries add up to."""

    counts: Counter[str] = field(default_factory=Counter)
    labels_of: dict[str, set[int]] = field(default_factory=lambda: defaultdict(set))
    classes_of: dict[int, set[str]] = field(default_factory=lambda: defaultdict(set))
    keys: Counter[str] = field(default_factory=Counter)
    files: Counter[str] = field(default_factory=Counter)
    sizes: Counter[tuple[int, int]] = field(default_factory=Counter)
    missing: list[str] = field(default_factory=list)
    corrupt: list[str] = field(default_factory=list)


def _check_header(man: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    """The manifest's ``settings`` mapping (``{}`` when absent) and its ``method``."""
    settings = man.get("settings")
    if not isinstance(settings, dict):
        problems.append("manifest has no 'settings' mapping")
        settings = {}
    if not man.get("method"):
        problems.append("manifest has no 'method'")
    return settings


def _check_file(root: Path, e: dict[str, Any], rel: str, decode: bool, t: _Tally) -> None:
    """One listed file: it exists, matches its sha256, and decodes (its size goes into the tally)."""
    path = root / rel
    if not path.is_file():
        t.missing.append(rel)
        return
    data = path.read_bytes()
    if e.get("sha256") and hashlib.sha256(data).hexdigest() != e["sha256"]:
        t.corrupt.append(f"{rel}: sha256 differs from the manifest")
        return
    if decode:
        try:
            img = load_rgb(str(path))
            t.sizes[(img.shape[1], img.shape[0])] += 1
        except BadImageError as err:
            t.corrupt.append(f"{rel}: {err}")


def _check_entries(root: Path, images: list[Any], decode: bool, problems: list[str]) -> _Tally:
    """Tally every manifest entry; entries that are malformed, outside DIR or in another folder are
    problems."""
    t = _Tally()
    for i, e in enumerate(images):
        if not isinstance(e, dict) or not all(k in e for k in ("key", "file", "class_id", "label")):
            problems.append(f"manifest entry {i} lacks key/file/class_id/label: {e!r}"[:300])
            continue
        key, rel, cid = str(e["key"]), str(e["file"]), str(e["class_id"])
        t.keys[key] += 1
        t.files[rel] += 1
        t.counts[cid] += 1
        t.labels_of[cid].add(int(e["label"]))
        t.classes_of[int(e["label"])].add(cid)
        if not _inside(root, rel):
            problems.append(f"entry {key!r}: file {rel!r} points outside {root}")
            continue
        folder = Path(rel).parts[0] if len(Path(rel).parts) > 1 else ""
        if folder not in (cid, component_name(cid)):
            problems.append(f"entry {key!r}: file {rel!r} is not in its class folder {component_name(cid)!r}")
        _check_file(root, e, rel, decode, t)
    return t


def _tally_problems(t: _Tally) -> list[str]:
    """Missing and corrupt files, duplicate keys/files, and class ids and labels that are not one-to-one."""
    problems = [f"missing file: {m}" for m in t.missing]
    problems += [f"corrupt file: {c}" for c in t.corrupt]
    problems += [f"key {k!r} appears {n} times" for k, n in sorted(t.keys.items()) if n > 1]
    problems += [f"file {f!r} is listed {n} times" for f, n in sorted(t.files.items()) if n > 1]
    problems += [f"class {c!r} has several labels {sorted(ls)}" for c, ls in sorted(t.labels_of.items())
                 if len(ls) > 1]
    problems += [f"label {lb} is used by several classes {sorted(cs)}" for lb,
                 cs in sorted(t.classes_of.items()) if len(cs) > 1]
    return problems


def _unlisted_files(root: Path, listed: set[str]) -> tuple[list[str], list[str]]:
    """Images on disk that the manifest does not list, and leftover ``.tmp`` files."""
    extra: list[str] = []
    temps: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(root).as_posix()
            if name.endswith(".tmp"):
                temps.append(rel)
            elif name.lower().endswith(IMAGE_EXTS) and rel not in listed and not name.startswith("."):
                extra.append(rel)
    return extra, temps


def _check_counts(man: dict[str, Any], settings: dict[str, Any], counts: Counter[str], ipc: int | None,
                  problems: list[str]) -> tuple[dict[str, int] | None, Any]:
    """Per-class counts against ``expected_counts`` and the ipc; returns both (for the report)."""
    expected: dict[str, int] | None = None
    if isinstance(man.get("expected_counts"), dict):
        expected = {str(k): int(v) for k, v in man["expected_counts"].items()}
    # an explicit --ipc always applies; settings.ipc only when the writer recorded no expected counts
    want_ipc = ipc if ipc is not None else (settings.get("ipc") if expected is None else None)
    if expected is not None:
        for cls in sorted(set(expected) | set(counts)):
            if counts.get(cls, 0) != expected.get(cls, 0):
                problems.append(f"class {cls!r}: {counts.get(cls, 0)} images, manifest expects "
                                f"{expected.get(cls, 0)}")
    if want_ipc is not None:
        for cls in sorted(set(counts) | set(expected or {})):
            if counts.get(cls, 0) != int(want_ipc):
                problems.append(f"class {cls!r}: {counts.get(cls, 0)} images, ipc is {want_ipc}")
    if not counts:
        problems.append("the manifest lists no images")
    if man.get("complete") is False:
        problems.append("the manifest says the run did not complete")
    return expected, want_ipc


def _check_sizes(sizes: Counter[tuple[int, int]], settings: dict[str, Any], problems: list[str]) -> None:
    """All images one size, and that size ``settings.image_size`` when recorded."""
    if len(sizes) > 1:
        problems.append(f"images have different sizes: {dict(sizes)}")
    size = settings.get("image_size")
    if size is not None and sizes and set(sizes) != {(int(size), int(size))}:
        problems.append(f"image size {sorted(sizes)} differs from settings.image_size={size}")


def verify_set(out_dir: str | os.PathLike, ipc: int | None = None, decode: bool = True) -> dict[str, Any]:
    """The verification report: ``problems`` (mismatches), ``warnings``, per-class ``counts``, ``ok``."""
    root = Path(out_dir)
    man = read_manifest(root)
    problems: list[str] = []
    settings = _check_header(man, problems)
    t = _check_entries(root, man["images"], decode, problems)
    problems += _tally_problems(t)
    extra, temps = _unlisted_files(root, set(t.files))
    problems += [f"extra file not in the manifest: {x}" for x in extra]
    warnings = [f"leftover temp file from an interrupted write: {x}" for x in temps]
    expected, want_ipc = _check_counts(man, settings, t.counts, ipc, problems)
    _check_sizes(t.sizes, settings, problems)
    return {
        "dir": str(root), "method": man.get("method"), "images": sum(t.counts.values()),
        "counts": dict(sorted(t.counts.items())), "expected_counts": expected, "ipc": want_ipc,
        "missing": t.missing, "corrupt": t.corrupt, "extra": extra,
        "problems": problems, "warnings": warnings, "ok": not problems,
    }


def format_report(rep: dict[str, Any]) -> str:
    lines = [f"distilled set: {rep['dir']}  (method {rep['method']}, {rep['images']} images in manifest)"]
    for cls, n in rep["counts"].items():
        want = (rep["expected_counts"] or {}).get(cls, rep["ipc"])
        lines.append(f"  {cls}: {n}" + (f" / {want}" if want is not None else ""))
    lines += [f"warning: {w}" for w in rep["warnings"]]
    lines += [f"problem: {p}" for p in rep["problems"]]
    failed = f"FAILED: {len(rep['problems'])} mismatch(es)"
    lines.append("OK: the set matches its manifest" if rep["ok"] else failed)
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    rep = verify_set(args.dir, ipc=getattr(args, "ipc", None), decode=not getattr(args, "no_decode", False))
    if getattr(args, "as_json", False):
        print(json.dumps(rep, indent=2, ensure_ascii=False))
    else:
        print(format_report(rep))
    return 0 if rep["ok"] else 1


__all__ = ["MANIFEST", "format_report", "main", "verify_set"]
