"""Decode the images an index lists: into memory, or as a Ray Dataset of decoded batches.

Scanning only lists files (cheap, in the driver); decoding happens in Ray tasks, where a
bad file becomes a row with an ``error`` reason instead of a crash deep inside Ray.
"""

from __future__ import annotations

import os
import warnings
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps

from pipeline.core.image_index import ImageIndex
from pipeline.core.shards import image_source, scan_root
from pipeline.errors import DataError

Image.MAX_IMAGE_PIXELS = 200_000_000  # 10,000 x 10,000 photos are legitimate; bombs are not


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
        missing = err.args[0] if len(err.args) == 1 else "broken symlink?"
        raise BadImageError(f"file not found ({missing})") from None
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
    index = scan_root(str(root), fmt, classes=classes, max_per_class=max_per_class)
    arrays, labels, paths = [], [], []
    for r in index.records:
        try:
            arrays.append(load_rgb(r.path, size, resize=resize))
        except BadImageError as err:
            if skip_bad:
                continue
            raise DataError(f"cannot read {r.path}: {err} (remove the file or run "
                            "`semdistill data check`)") from None
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
    """Resize the shorter side to ``resize`` (default ``size``; bicubic by default) and center-crop a ``size``
    square."""
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
    # heavy: ray (not loaded when this module is imported)
    import ray

    rows = index.rows()
    if num_blocks is None:
        from pipeline.core.ray_setup import block_count

        num_blocks = block_count(len(rows))
    ds = ray.data.from_items(rows, override_num_blocks=num_blocks)
    return ds.map_batches(decode_batch, fn_kwargs={"size": size}, batch_size=batch_size, num_cpus=0.5)


def read_parquet(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Columns as numpy arrays; fixed-size-list columns come back as 2-D float32 arrays."""
    # heavy: pyarrow (not loaded when this module is imported)
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
