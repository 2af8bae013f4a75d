"""The embedded demo dataset: scikit-learn's digits as a 32x32 RGB ImageFolder, offline.

1,797 real handwritten digits (8x8, 17 grey levels) are upscaled to ``size`` px with
bicubic interpolation, inverted to dark ink on white paper, and split per class into
train/val with a seeded permutation. Writing is atomic per file and idempotent.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from pipeline.core.write import atomic_save_image, atomic_write_json

if TYPE_CHECKING:
    from pipeline.config import Config

DIGIT_NAMES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]


def digits_arrays(size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """All digits as uint8 RGB ``[N, size, size, 3]`` and labels ``[N]``."""
    # heavy: sklearn (not loaded when this module is imported)
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
    atomic_write_json(out / "class_names.json",
                      {str(c): f"handwritten digit {DIGIT_NAMES[c]}" for c in range(10)})
    summary = {"root": str(out), "size": size, "seed": seed, "val_fraction": val_fraction, "counts": counts}
    atomic_write_json(out / "dataset.json", summary)
    return summary


# The roles whose ``zoo:`` models mark a config as a demo config (one that may write its own data).
DEMO_ROLES = {"diver": ("dit",), "edits": ("vlm", "clip", "vae", "sd")}


def is_demo_config(cfg: Config) -> bool:
    """A demo config: its method's models come from the local zoo and ``data.root`` is a ``.../train``
    split."""
    root = cfg.data.root
    roles = DEMO_ROLES.get(str(cfg.method), ())
    return (root is not None and Path(root).name == "train" and bool(roles)
            and all(str(getattr(cfg.models, r)).startswith("zoo:") for r in roles))


def ensure_demo_data(cfg: Config, log: Callable[[str], None] = print) -> bool:
    """Write the demo digits next to ``data.root`` when a demo config's data is missing; True when written.

    ``semdistill run configs/demo_<method>.yaml`` on a fresh checkout prepares its own data (the
    parent of ``data.root`` gets ``train/``, ``val/`` and ``class_names.json``). Other configs are
    left alone: their missing root stays the reader's "dataset root not found" error.
    """
    if not is_demo_config(cfg) or Path(str(cfg.data.root)).exists():
        return False
    parent = Path(str(cfg.data.root)).parent
    log(f"demo data missing: writing the demo digits to {parent}")
    write_demo_dataset(parent, size=cfg.data.image_size)
    return True
