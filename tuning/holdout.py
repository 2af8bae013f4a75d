"""A tuning split carved from the real train set, so a sweep never chooses settings on the reported split.

``carve_holdout`` puts a seeded ``fraction`` of each class's train images into ``holdout/`` and the
rest into ``train/`` (both ImageFolders of symbolic links to the original files, nothing copied).
A sweep distils from ``train/`` and evaluates its trials on ``holdout/``; the report's numbers
stay on the real validation set, which no trial sees. Each class keeps at least one image on
each side. The sweep's results say which split chose the settings (``selected_on``).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from pipeline.core.image_index import scan_image_folder
from pipeline.core.write import atomic_folder, component_name
from pipeline.errors import DataError


def holdout_count(n: int, fraction: float) -> int:
    """Images of a class of ``n`` that go to the holdout: ``ceil(n * fraction)``, leaving at least one to
    train on."""
    if n < 2:
        return 0
    return min(n - 1, max(1, math.ceil(n * fraction)))


def carve_holdout(train_root: str | os.PathLike, out: str | os.PathLike, fraction: float, seed: int = 0,
                  classes: list[str] | None = None) -> tuple[Path, Path]:
    """Split ``train_root`` into ``out/train`` and ``out/holdout``; returns both. Re-carving with the same
    arguments gives the same split (the choice depends only on the sorted file list and ``seed``)."""
    if not 0.0 < fraction < 1.0:
        raise DataError(f"sweep.holdout_fraction must be in (0, 1), got {fraction}")
    index = scan_image_folder(train_root, classes=classes)
    by_class: dict[str, list[str]] = {}
    for rec in index.records:
        by_class.setdefault(rec.class_id, []).append(rec.path)
    out = Path(out)
    with atomic_folder(out / "split") as tmp:
        for label, class_id in enumerate(index.classes):
            paths = sorted(by_class.get(class_id, []))
            rng = np.random.default_rng([seed, label])
            held = set(rng.permutation(len(paths))[: holdout_count(len(paths), fraction)].tolist())
            for side in ("train", "holdout"):
                (tmp / side / component_name(class_id)).mkdir(parents=True, exist_ok=True)
            for i, path in enumerate(paths):
                side = "holdout" if i in held else "train"
                link = tmp / side / component_name(class_id) / f"{i:06d}{Path(path).suffix.lower()}"
                os.symlink(os.path.abspath(path), link)
    return out / "split" / "train", out / "split" / "holdout"
