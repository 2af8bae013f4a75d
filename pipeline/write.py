"""Write a distilled set: ImageFolder + ``manifest.json``, every file atomically.

The manifest is the source of truth: an image counts as done only once its entry is in
the manifest, and the manifest is replaced atomically after the image file exists. A
crash leaves at most an orphan ``.tmp`` file, never a half-written image or manifest.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

MANIFEST = "manifest.json"
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_name(text: str) -> str:
    """A file-system-safe name for a class id or file stem; never escapes its folder."""
    name = _SAFE.sub("_", str(text)).strip("._")
    return name or "_"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def atomic_save_image(path: str | os.PathLike, image: np.ndarray | Image.Image) -> None:
    """Save an image (uint8 HxWx3 array or PIL) atomically; the format follows the suffix."""
    import io

    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    fmt = "JPEG" if str(path).lower().endswith((".jpg", ".jpeg")) else "PNG"
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    atomic_write_bytes(path, buf.getvalue())


class DistilledSetWriter:
    """Writes ``out/<class_id>/<key>.png`` plus ``out/manifest.json``; resumes from the manifest.

    ``key`` identifies one output image (e.g. ``c3_i07``); writing a key already in the
    manifest is a no-op, so a re-run after a crash neither loses nor duplicates images.
    """

    def __init__(self, out_dir: str | os.PathLike, method: str, settings: dict[str, Any] | None = None,
                 image_format: str = "png") -> None:
        self.out_dir = Path(out_dir)
        self.image_format = image_format
        self.manifest_path = self.out_dir / MANIFEST
        if self.manifest_path.exists():
            self.manifest = json.loads(self.manifest_path.read_text())
            if self.manifest.get("method") != method:
                from pipeline.errors import DataError

                raise DataError(
                    f"{self.manifest_path} belongs to method {self.manifest.get('method')!r}, not {method!r}; "
                    "choose another output.dir"
                )
        else:
            self.manifest = {"method": method, "settings": settings or {}, "images": []}
        self._done = {e["key"] for e in self.manifest["images"]}

    def done(self, key: str) -> bool:
        return key in self._done

    @property
    def entries(self) -> list[dict[str, Any]]:
        return self.manifest["images"]

    def add(self, key: str, class_id: str, label: int, image: np.ndarray | Image.Image,
            meta: dict[str, Any] | None = None, flush: bool = True) -> Path | None:
        """Write one image and its manifest entry; returns its path, or None if already done."""
        if key in self._done:
            return None
        rel = Path(safe_name(class_id)) / f"{safe_name(key)}.{self.image_format}"
        atomic_save_image(self.out_dir / rel, image)
        entry = {"key": key, "file": rel.as_posix(), "class_id": class_id, "label": int(label)}
        entry.update(meta or {})
        self.manifest["images"].append(entry)
        self._done.add(key)
        if flush:
            self.flush()
        return self.out_dir / rel

    def flush(self) -> None:
        self.manifest["images"].sort(key=lambda e: (e["label"], e["key"]))
        atomic_write_json(self.manifest_path, self.manifest)


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        from pipeline.errors import DataError

        raise DataError(f"no {MANIFEST} in {out_dir}: not a semdistill output folder")
    return json.loads(path.read_text())
