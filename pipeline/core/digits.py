"""The embedded demo dataset: scikit-learn's digits as a 32x32 RGB ImageFolder, offline.

1,797 real handwritten digits (8x8, 17 grey levels) are upscaled to ``size`` px with
bicubic interpolation, inverted to dark ink on white paper, and split per class into
train/val with a seeded permutation. Writing is atomic per file and idempotent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.write import atomic_save_image, atomic_write_json

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits_arrays(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 RGB ``[N, size, size, 3]`` and labels ``[N]``."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.empty((len(digits.images), size, size, 3), dtype=np.uint8)
    for i, im in enumerate(digits.images):
        grey = (255 - im / 16.0 * 255).clip(0, 255).astype(np.uint8)  # dark ink on light paper
        up = Image.fromarray(grey, "L").resize((size, size), Image.BICUBIC)
        images[i] = np.asarray(up.convert("RGB"))
    return images, digits.target.astype(np.int64)


def write_demo_dataset(out: str | Path, size: int = 32, val_fraction: float = 0.2, seed: int = 0) -> dict:
    """Write ``out/train/<digit>/*.png``, ``out/val/<digit>/*.png`` and ``out/class_names.json``.

    Returns a summary with the per-split counts. Re-running with the same arguments
    rewrites identical files (same seed, same split).
    """
    out = Path(out)
    images, labels = digits_arrays(size)
    rng = np.random.default_rng(seed)
    counts: dict[str, dict[str, int]] = {"train": {}, "val": {}}
    for cls in range(10):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = round(len(idx) * val_fraction)
        for split, part in (("val", idx[:n_val]), ("train", idx[n_val:])):
            for i in sorted(part):
                atomic_save_image(out / split / str(cls) / f"digit_{i:04d}.png", images[i])
            counts[split][str(cls)] = len(part)
    atomic_write_json(out / "class_names.json", {str(c): f"handwritten digit {DIGIT_NAMES[c]}" for c in range(10)})
    summary = {"root": str(out), "size": size, "seed": seed, "val_fraction": val_fraction, "counts": counts}
    atomic_write_json(out / "dataset.json", summary)
    return summary
