"""Read an ImageFolder (``root/<class_id>/**/*.jpg``) as an index and as a Ray Dataset.

Scanning only lists files (cheap, in the driver); decoding happens in Ray tasks, where a
bad file becomes a row with an ``error`` reason instead of a crash deep inside Ray.
"""

from __future__ import annotations

import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from pipeline.errors import ConfigError, DataError

DEFAULT_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")
Image.MAX_IMAGE_PIXELS = 200_000_000  # 10,000 x 10,000 photos are legitimate; bombs are not


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
        raise DataError(f"dataset root not found: {root_p} (expected an ImageFolder: {root_p}/<class_id>/<image>)")
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
    import hashlib

    h = hashlib.sha256()
    h.update(json.dumps(index.classes).encode())
    for r in index.records:
        h.update(b"\0" + os.path.relpath(r.path, index.root).encode("utf-8", "surrogateescape") + b"\1"
                 + r.class_id.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


class BadImageError(ValueError):
    """A file that cannot be used as an image; the message is the reason."""


RESAMPLE = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS}
RESIZE_MODES = ("crop", "squash")


def load_rgb(path: str, size: int | None = None, mode: str = "crop", resample: str = "bicubic",
             resize: int | None = None) -> np.ndarray:
    """Decode any PIL-readable file to uint8 RGB (EXIF rotation applied), optionally resized.

    Resizing to ``size`` x ``size``: ``crop`` resizes the shorter side (to ``resize``, default ``size``)
    and center-crops, ``squash`` resizes both sides (the aspect ratio is not kept); ``resample`` names
    the filter.
    Raises ``BadImageError`` with a one-line reason for unusable files.
    """
    if mode not in RESIZE_MODES or resample not in RESAMPLE:
        raise ValueError(f"resize mode must be one of {RESIZE_MODES} and resample one of {sorted(RESAMPLE)}, "
                         f"got {mode!r}, {resample!r}")
    try:
        from pipeline.core.shards import image_source

        src = image_source(path)  # a local file, or the bytes of a shard record / URI
        if (os.path.getsize(src) if isinstance(src, str) else src.getbuffer().nbytes) == 0:
            raise BadImageError("zero-byte file")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(src) as im:
                short = max(size, resize or size) if size is not None else None
                if short is not None and im.format == "JPEG":
                    im.draft("RGB", (short, short))  # DCT-domain downscale: huge JPEGs decode fast
                im.load()
                im = ImageOps.exif_transpose(im)
                if short is not None and im.mode in ("L", "RGB", "RGBA", "LA", "CMYK"):
                    k = min(im.size) // (4 * short)
                    if k >= 2:  # huge image: box-reduce to >= 4x the target first (fast), then bicubic
                        im = im.reduce(k)
                im = to_rgb(im)
    except BadImageError:
        raise
    except FileNotFoundError as err:
        raise BadImageError(f"file not found ({err.args[0] if len(err.args) == 1 else 'broken symlink?'})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImageError(f"too large: {err}") from None
    except Exception as err:  # noqa: BLE001  (PIL raises many types for corrupt data)
        raise BadImageError(f"cannot decode: {type(err).__name__}: {err}") from None
    if im.width < 2 or im.height < 2:
        raise BadImageError(f"too small ({im.width}x{im.height})")
    if size is not None:
        if mode == "crop":
            im = center_resize(im, size, RESAMPLE[resample], resize)
        else:
            im = squash_resize(im, size, RESAMPLE[resample])
    return np.asarray(im, dtype=np.uint8)


class ImageArrays(NamedTuple):
    """A decoded ImageFolder: uint8 ``[N, H, W, 3]`` images, int64 labels, class ids, file paths."""

    images: np.ndarray
    labels: np.ndarray
    classes: list[str]
    paths: list[str]


def load_image_arrays(root: str | os.PathLike, size: int | None = None, classes: list[str] | None = None,
                      max_per_class: int | None = None, skip_bad: bool = False,
                      resize: int | None = None, fmt: str = "auto") -> ImageArrays:
    """Decode a whole ImageFolder into memory (labels follow the sorted class ids).

    ``size``: shorter-side resize + center crop to ``size`` x ``size``; ``None`` keeps the
    images' own size when they all share it, else uses the smallest side among them.
    ``skip_bad`` leaves unreadable files out (``semdistill data check`` lists them); without it
    the first one raises ``DataError`` naming the file. No readable image is a ``DataError``.
    ``resize``: the shorter side is first resized to this, then center-cropped to ``size`` (Resize(256) +
    CenterCrop(224)). ``fmt``: the ``data.format`` of ``root`` (``pipeline.core.shards``).
    """
    from pipeline.core.shards import scan_root

    index = scan_root(str(root), fmt, classes=classes, max_per_class=max_per_class)
    arrays, labels, paths = [], [], []
    for r in index.records:
        try:
            arrays.append(load_rgb(r.path, size, resize=resize))
        except BadImageError as err:
            if skip_bad:
                continue
            raise DataError(f"cannot read {r.path}: {err} (remove the file or run `semdistill data check`)") from None
        labels.append(r.label)
        paths.append(r.path)
    if not arrays:
        raise DataError(f"no readable images under {root}")
    if size is None and len({a.shape for a in arrays}) > 1:
        side = min(min(a.shape[:2]) for a in arrays)
        arrays = [load_rgb(p, side) for p in paths]
    return ImageArrays(np.stack(arrays), np.asarray(labels, dtype=np.int64), list(index.classes), paths)


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert grayscale, palette, CMYK, 16-bit and alpha images to 8-bit RGB."""
    if im.mode.startswith("I;16"):  # 16-bit grayscale (PNG): full range is 0..65535
        arr = np.asarray(im, dtype=np.float64)
        im = Image.fromarray(np.clip(np.round(arr / 257.0), 0, 255).astype(np.uint8), "L")
    elif im.mode == "I":  # 32-bit int: 16-bit data in older Pillow, else already 8-bit range
        arr = np.asarray(im, dtype=np.float64)
        hi = arr.max() if arr.size else 0.0
        arr = arr / 257.0 if hi > 255 else arr
        im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    elif im.mode == "F":  # float: [0, 1] or [0, 255]
        arr = np.nan_to_num(np.asarray(im, dtype=np.float64))
        arr = arr * 255.0 if arr.size and arr.max() <= 1.0 else arr
        im = Image.fromarray(np.clip(np.round(arr), 0, 255).astype(np.uint8), "L")
    if im.mode in ("RGBA", "LA", "P", "PA"):
        im = im.convert("RGBA")
        bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
        im = Image.alpha_composite(bg, im)
    return im.convert("RGB")


def squash_resize(im: Image.Image, size: int, resample: int = Image.BICUBIC) -> Image.Image:
    """Resize to ``size`` x ``size``, ignoring the aspect ratio (nothing is cropped)."""
    return im if im.size == (size, size) else im.resize((size, size), resample)


def center_resize(im: Image.Image, size: int, resample: int = Image.BICUBIC, resize: int | None = None
                  ) -> Image.Image:
    """Resize the shorter side to ``resize`` (default ``size``; bicubic by default) and center-crop a ``size`` square."""
    w, h = im.size
    short = max(size, resize or size)
    scale = short / min(w, h)
    nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
    im = im.resize((nw, nh), resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return im.crop((left, top, left + size, top + size))


def decode_batch(batch: dict[str, np.ndarray], size: int, mode: str = "crop",
                 resample: str = "bicubic") -> dict[str, np.ndarray]:
    """Ray ``map_batches`` function: add ``image`` (uint8 size x size x 3) and ``error``.

    ``mode`` / ``resample``: how ``load_rgb`` resizes (``crop`` or ``squash``; the filter name).

    A bad file keeps its row with a zero image and the reason in ``error``, so the
    caller can drop it and report it (skip-and-report) without a second read.
    """
    paths = batch["path"]
    images = np.zeros((len(paths), size, size, 3), dtype=np.uint8)
    errors = np.empty(len(paths), dtype=object)
    for i, p in enumerate(paths):
        try:
            images[i] = load_rgb(str(p), size, mode, resample)
            errors[i] = ""
        except BadImageError as err:
            errors[i] = str(err)
    out = dict(batch)
    out["image"] = images
    out["error"] = errors
    return out


def image_dataset(index: ImageIndex, size: int, batch_size: int = 64, num_blocks: int | None = None):
    """A Ray Dataset of decoded images: path, class_id, label, image, error."""
    import ray

    rows = index.rows()
    if num_blocks is None:
        from pipeline.core.ray_setup import block_count

        num_blocks = block_count(len(rows))
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks)
    return ds.map_batches(decode_batch, fn_kwargs={"size": size}, batch_size=batch_size, num_cpus=0.5)


def read_parquet(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns as numpy arrays; fixed-size-list columns come back as 2-D float32 arrays."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    out: dict[str, np.ndarray] = {}
    for name in table.column_names:
        col = table.column(name).combine_chunks()
        if pa.types.is_fixed_size_list(col.type):
            out[name] = np.asarray(col.flatten(), dtype=np.float32).reshape(len(col), col.type.list_size)
        else:
            out[name] = np.asarray(col.to_pylist(), dtype=object if pa.types.is_string(col.type) else None)
    return out
