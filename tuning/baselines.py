"""Baseline "distilled" sets: ``ipc`` real images per class drawn at random (seeded).

The reference point of every distillation table: a method is only worth running when its
IPC images train students better than IPC random real ones.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.read import BadImageError, load_rgb, scan_image_folder
from pipeline.core.write import DistilledSetWriter
from pipeline.errors import DataError


def random_real(real_root: str | os.PathLike, out: str | os.PathLike, ipc: int, seed: int = 0,
                size: int | None = None, classes: list[str] | None = None) -> dict[str, Any]:
    """Write ``ipc`` random real images per class to ``out`` (ImageFolder + manifest, method ``random_real``).

    The draw depends only on ``seed`` and the folder listing; a re-run resumes/keeps what exists.
    Unreadable files are passed over; a class with fewer than ``ipc`` readable images is a ``DataError``.
    """
    index = scan_image_folder(real_root, classes=classes)
    rng = np.random.default_rng(seed)
    writer = DistilledSetWriter(out, "random_real", {"ipc": ipc, "seed": seed, "source": str(real_root)})
    by_class: dict[str, list] = {c: [] for c in index.classes}
    for r in index.records:
        by_class[r.class_id].append(r)
    for cls in index.classes:
        recs = by_class[cls]
        order = rng.permutation(len(recs))
        kept = 0
        for j in order:
            if kept == ipc:
                break
            rec = recs[int(j)]
            try:
                img = load_rgb(rec.path, size)
            except BadImageError:
                continue
            writer.add(f"{cls}_{kept:03d}", cls, rec.label, img,
                       {"source": os.path.relpath(rec.path, index.root)}, flush=False)
            kept += 1
        if kept < ipc:
            raise DataError(f"class {cls} has only {kept} readable images, fewer than ipc={ipc}")
    writer.set_expected({c: ipc for c in index.classes})
    writer.finish({"ipc": ipc, "classes": len(index.classes)})
    return {"output": str(Path(out)), "images": ipc * len(index.classes), "method": "random_real"}
