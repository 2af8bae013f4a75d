"""The ImageFolder index: what a scan of ``root/<class_id>/**/*.jpg`` finds, and the class-name table.

Scanning only lists files (cheap, in the driver); ``pipeline.core.read`` decodes, and
``pipeline.core.shards`` builds the same index from Parquet / WebDataset shards and URIs.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, DataError

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")


@dataclass
class ImageRecord:
    path: str
    class_id: str
    label: int


@dataclass
class ImageIndex:
    """What a scan found: images with labels, the class order, and what it skipped."""

    root: str
    classes: list[str]
    records: list[ImageRecord]
    skipped: list[dict[str, str]] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        out = {c: 0 for c in self.classes}
        for r in self.records:
            out[r.class_id] += 1
        return out

    def rows(self) -> list[dict[str, Any]]:
        return [{"path": r.path, "class_id": r.class_id, "label": r.label} for r in self.records]


def _is_image_name(name: str, extensions: tuple[str, ...]) -> bool:
    return name.lower().endswith(extensions)


def scan_image_folder(
    root: str | os.PathLike,
    extensions: tuple[str, ...] | list[str] = DEFAULT_EXTENSIONS,
    classes: list[str] | None = None,
    max_per_class: int | None = None,
    follow_symlinks: bool = True,
    allow_empty_classes: bool = False,
) -> ImageIndex:
    """List ``root/<class_id>/**/<image>`` files; labels follow the sorted class ids.

    Raises ``DataError`` naming the path for a missing root, a root with no class
    folders, a requested class that is absent, or an empty class folder (unless
    ``allow_empty_classes``, which records the class as skipped instead).
    """
    root_p = Path(root)
    exts = tuple(e.lower() for e in extensions)
    found = _class_folders(root_p, classes)
    records: list[ImageRecord] = []
    skipped: list[dict[str, str]] = []
    kept_classes: list[str] = []
    reals = _RealPaths(root_p, found)
    for cls in found:
        cls_dir = root_p / cls
        files = _class_files(cls_dir, exts, follow_symlinks, skipped, reals, cls)
        if max_per_class is not None:
            files = files[:max_per_class]
        if not files:
            if allow_empty_classes:
                skipped.append({"path": str(cls_dir), "reason": "empty class folder"})
                continue
            raise DataError(
                f"class folder has no images: {cls_dir} (extensions {list(exts)}); "
                "add images, remove the folder, or list the classes to use in data.classes"
            )
        kept_classes.append(cls)
        records.extend(ImageRecord(f, cls, -1) for f in files)
    label_of = {c: i for i, c in enumerate(kept_classes)}
    for r in records:
        r.label = label_of[r.class_id]
    return ImageIndex(str(root_p), kept_classes, records, skipped)



def check_requested_classes(classes: list[str], available, where: str) -> None:
    """``data.classes`` names each class once and only classes the set has (``where``: for the message)."""
    dups = sorted({c for c in classes if classes.count(c) > 1})
    if dups:
        raise ConfigError(f"data.classes lists these class ids more than once: {dups[:10]}")
    missing = [c for c in classes if c not in available]
    if missing:
        raise DataError(f"classes not found {where}: {missing[:10]}")

def _class_folders(root_p: Path, classes: list[str] | None) -> list[str]:
    """The sorted class ids to scan: every visible folder under ``root_p``, or the requested ``classes``."""
    if not root_p.exists():
        raise DataError(f"dataset root not found: {root_p} (expected an ImageFolder: "
                        f"{root_p}/<class_id>/<image>)")
    if not root_p.is_dir():
        raise DataError(f"dataset root is not a folder: {root_p}")
    found = sorted(p.name for p in root_p.iterdir() if p.is_dir() and not p.name.startswith("."))
    if classes is not None:
        check_requested_classes(classes, found, f"under {root_p}")
        found = sorted(classes)
    if not found:
        raise DataError(f"no class folders under {root_p} (expected {root_p}/<class_id>/<image>)")
    return found


class _RealPaths:
    """Real paths resolved once over the whole dataset: which class owns a real folder, what was used.

    A file counts only in the class whose folder holds it by real path (or, for a link that
    leads outside the dataset, in the first class that reaches it), and only once.
    """

    def __init__(self, root_p: Path, classes: list[str]) -> None:
        self.root = os.path.realpath(root_p)
        self.owner: dict[str, str] = {}
        for c in classes:
            self.owner.setdefault(os.path.realpath(root_p / c), c)
        self.above = {str(p) for d in self.owner for p in Path(d).parents}  # folders holding class folders
        self.dirs: dict[str, str] = {}
        self.files: dict[str, str] = {}

    def owner_of(self, real: str) -> str | None:
        for p in (real, *map(str, Path(real).parents)):
            if p in self.owner:
                return self.owner[p]
        return None

    def alias(self, real: str, cls: str) -> str:
        """Why ``real`` (reached inside class ``cls``) is an alias, or ``""`` when ``cls`` may use it."""
        owner = self.owner_of(real)
        if owner == cls:
            return ""
        if owner is not None:
            return f"link into class {owner!r} (real path {real})"
        if real in self.above or real == self.root or real.startswith(self.root + os.sep):
            return f"link back into the dataset outside class {cls!r} (real path {real})"
        return ""


def _class_files(cls_dir: Path, exts: tuple[str, ...], follow_symlinks: bool,
                 skipped: list[dict[str, str]], reals: _RealPaths | None = None, cls: str = "") -> list[str]:
    """Image files under one class folder in sorted walk order; what it passes over goes to ``skipped``.

    A folder or file whose real path is an alias (already used, or inside another class, or
    back in the dataset outside this class: ``ln -s .. all``) is skipped with one line.
    """
    reals = reals if reals is not None else _RealPaths(cls_dir.parent, [cls_dir.name])
    cls = cls or cls_dir.name
    files: list[str] = []
    for dirpath, dirnames, filenames in os.walk(cls_dir, followlinks=follow_symlinks):
        real = os.path.realpath(dirpath)
        alias = reals.alias(real, cls)
        why = (f"aliased folder: {alias}" if alias else
               f"folder already scanned as {reals.dirs[real]} (symlink loop or duplicate link)"
               if real in reals.dirs else "")
        if why:
            skipped.append({"path": dirpath, "reason": why})
            dirnames[:] = []
            continue
        reals.dirs[real] = dirpath
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            reason = _skip_reason(full, name, exts, follow_symlinks)
            if reason is None:
                real_f = os.path.realpath(full) if os.path.islink(full) else os.path.join(real, name)
                why = reals.alias(real_f, cls) or (f"same file as {reals.files[real_f]}"
                                                   if real_f in reals.files else "")
                reason = f"aliased file: {why}" if why else None
                if reason is None:
                    reals.files[real_f] = full
            if reason:
                skipped.append({"path": full, "reason": reason})
            elif reason is None:
                files.append(full)
    return files


def _skip_reason(full: str, name: str, exts: tuple[str, ...], follow_symlinks: bool) -> str | None:
    """Why a file is not an image to use: ``""`` to pass over silently (hidden), ``None`` to keep it."""
    if name.startswith("."):
        return ""
    if not _is_image_name(name, exts):
        return "not an image file extension"
    if os.path.islink(full) and not (follow_symlinks and os.path.exists(full)):
        return "symlink not followed or broken"
    return None


def load_class_names(path: str | os.PathLike | None, class_ids: list[str]) -> dict[str, str]:
    """Class id -> words. Accepts JSON ``{id: name}`` or lines ``n01440764 tench, Tinca tinca``.

    Without a table, the id itself (underscores as spaces) is the name.
    """
    names = {c: c.replace("_", " ") for c in class_ids}
    if path is None:
        return names
    p = Path(path)
    if not p.is_file():
        raise DataError(f"class-name table not found: {p}")
    try:
        text = p.read_text(encoding="utf-8")
        table = json.loads(text) if p.suffix == ".json" else None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"class-name table {p} cannot be read: {err}") from None
    if p.suffix == ".json":
        if isinstance(table, list):  # ImageNet-style [[wnid, name], ...] or list aligned with ids
            table = dict(table) if table and isinstance(table[0], list) else dict(zip(class_ids, table))
        elif (isinstance(table, dict) and table and not any(k in names for k in table)
              and all(isinstance(v, list) and len(v) == 2 for v in table.values())):
            table = {str(v[0]): v[1] for v in table.values()}  # imagenet_class_index.json {"0": [wnid, name]}
        if not isinstance(table, dict):
            raise DataError(f"class-name table {p} must be a JSON object {{id: name}} or a list")
    else:
        table = {}
        for line in text.splitlines():
            parts = line.strip().split(maxsplit=1)
            if len(parts) == 2:
                table[parts[0]] = parts[1]
    names.update({k: (", ".join(map(str, v)) if isinstance(v, list) else str(v)) for k, v in table.items()
                  if k in names})
    return names


def duplicate_class_names(names: dict[str, str]) -> dict[str, list[str]]:
    """Names used by more than one class id (case and spacing ignored), e.g. ImageNet's two "crane"s."""
    by_name: dict[str, list[str]] = {}
    for cid, name in names.items():
        by_name.setdefault(" ".join(name.lower().split()), []).append(cid)
    return {n: sorted(ids) for n, ids in by_name.items() if len(ids) > 1}


def disambiguate_class_names(names: dict[str, str]) -> dict[str, str]:
    """Make every name unique by appending its class id to each duplicated one: ``crane (n03126707)``.

    Prompts and captions name the class; two classes with one name would get the same text.
    """
    dups = {cid for ids in duplicate_class_names(names).values() for cid in ids}
    return {cid: (f"{name} ({cid})" if cid in dups else name) for cid, name in names.items()}


def index_fingerprint(index: ImageIndex) -> str:
    """A short hash of what a scan found (class ids and root-relative file paths, in order).

    Caches keyed by image (captions, features) store it and refuse to be reused for
    another dataset, another class subset, or a folder whose files changed names.
    """
    h = hashlib.sha256()
    h.update(json.dumps(index.classes).encode())
    for r in index.records:
        h.update(b"\0" + os.path.relpath(r.path, index.root).encode("utf-8", "surrogateescape") + b"\1"
                 + r.class_id.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]
