"""Baseline sets for the distillation table, each evaluated through the same protocol as the distilled sets.

- ``random_real``: ``ipc`` real images per class drawn at random (seeded): the reference point of
  every distillation table (a method is only worth running when it beats it).
- ``herding``: per class, greedy herding (Welling 2009; the coreset baseline of DC/DM/DC-BENCH):
  pick, one at a time, the image whose addition brings the mean feature of the picked ones
  closest to the class mean feature.
- ``k_center``: per class, greedy k-center (Sener & Savarese 2018): start from the image nearest the
  class mean feature, then repeatedly add the image farthest from every picked one.
- ``full_real``: the whole real train split (the upper bound); nothing is copied, the split's
  folder is evaluated as it is.

Features for herding / k-center: the flattened embedding (``ConvNet.embed``) of a randomly
initialised ConvNet-D (depth from the resolution, width 128, instance norm) built from ``seed``,
on images normalised by the train split's channel statistics. Why: it needs no weights (nothing
is downloaded; the CLIP zoo model would tie the baseline to a model the students never see), it is
deterministic, it is the same for both coresets, and it is the feature space DM distils in
(randomly initialised ConvNets), so the coresets select where the stage-1 sets are matched.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.core.image_index import ImageIndex, scan_image_folder
from pipeline.core.read import BadImageError, load_rgb
from pipeline.core.write import DistilledSetWriter
from pipeline.errors import ConfigError, DataError
from tuning.convnet import ConvNet

SelectFn = Callable[[np.ndarray, int], list[int]]


def _by_class(index: ImageIndex) -> dict[str, list]:
    by_class: dict[str, list] = {c: [] for c in index.classes}
    for r in index.records:
        by_class[r.class_id].append(r)
    return by_class


def _write(index: ImageIndex, picks: dict[str, list[tuple[Any, np.ndarray]]], out: str | os.PathLike,
           method: str, ipc: int, settings: dict[str, Any]) -> dict[str, Any]:
    writer = DistilledSetWriter(out, method, {"ipc": ipc, **settings})
    for cls, items in picks.items():
        for kept, (rec, img) in enumerate(items):
            writer.add(f"{cls}_{kept:03d}", cls, rec.label, img,
                       {"source": os.path.relpath(rec.path, index.root)}, flush=False)
    writer.set_expected({c: ipc for c in index.classes})
    writer.finish({"ipc": ipc, "classes": len(index.classes)})
    return {"output": str(Path(out)), "images": ipc * len(index.classes), "method": method}


def random_real(real_root: str | os.PathLike, out: str | os.PathLike, ipc: int, seed: int = 0,
                size: int | None = None, classes: list[str] | None = None) -> dict[str, Any]:
    """Write ``ipc`` random real images per class to ``out`` (ImageFolder + manifest, method ``random_real``).

    The draw depends only on ``seed`` and the folder listing; a re-run resumes/keeps what exists.
    Unreadable files are passed over; a class with fewer than ``ipc`` readable images is a ``DataError``.
    """
    index = scan_image_folder(real_root, classes=classes)
    rng = np.random.default_rng(seed)
    picks: dict[str, list[tuple[Any, np.ndarray]]] = {}
    for cls, recs in _by_class(index).items():
        chosen: list[tuple[Any, np.ndarray]] = []
        for j in rng.permutation(len(recs)):
            if len(chosen) == ipc:
                break
            try:
                chosen.append((recs[int(j)], load_rgb(recs[int(j)].path, size)))
            except BadImageError:
                continue
        if len(chosen) < ipc:
            raise DataError(f"class {cls} has only {len(chosen)} readable images, fewer than ipc={ipc}")
        picks[cls] = chosen
    return _write(index, picks, out, "random_real", ipc, {"seed": seed, "source": str(real_root)})


def herding_select(feats: np.ndarray, k: int) -> list[int]:
    """Greedy herding: each step adds the row that brings the picked rows' mean closest to the mean of all."""
    f = feats.astype(np.float64)
    mu, total, chosen = f.mean(0), np.zeros(f.shape[1]), []
    free = np.ones(len(f), dtype=bool)
    for step in range(1, k + 1):
        dist = np.linalg.norm(mu[None] - (total[None] + f) / step, axis=1)
        dist[~free] = np.inf
        i = int(np.argmin(dist))
        chosen.append(i)
        free[i] = False
        total += f[i]
    return chosen


def k_center_select(feats: np.ndarray, k: int) -> list[int]:
    """Greedy k-center: the row nearest the mean first, then each step the row farthest from all picked
    rows."""
    f = feats.astype(np.float64)
    first = int(np.argmin(np.linalg.norm(f - f.mean(0)[None], axis=1)))
    chosen, nearest = [first], np.linalg.norm(f - f[first][None], axis=1)
    while len(chosen) < k:
        i = int(np.argmax(nearest))
        chosen.append(i)
        nearest = np.minimum(nearest, np.linalg.norm(f - f[i][None], axis=1))
    return chosen


SELECTORS: dict[str, SelectFn] = {"herding": herding_select, "k_center": k_center_select}


def feature_extractor(channels: int, im_size: int, seed: int) -> ConvNet:
    """The fixed, seeded, randomly initialised ConvNet-D whose embedding the coresets select in."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = ConvNet(channels, 1, depth=None, im_size=im_size)
    return net.eval()


def coreset(real_root: str | os.PathLike, out: str | os.PathLike, ipc: int, method: str, seed: int = 0,
            size: int | None = None, classes: list[str] | None = None, batch: int = 256) -> dict[str, Any]:
    """Write a ``herding`` or ``k_center`` coreset of ``ipc`` images per class (features: see the module
    doc)."""
    if method not in SELECTORS:
        raise ConfigError(f"unknown coreset {method!r}; choose from {', '.join(SELECTORS)}")
    index = scan_image_folder(real_root, classes=classes)
    loaded: dict[str, list[tuple[Any, np.ndarray]]] = {}
    for cls, recs in _by_class(index).items():
        items = []
        for r in recs:
            try:
                items.append((r, load_rgb(r.path, size)))
            except BadImageError:
                continue
        if len(items) < ipc:
            raise DataError(f"class {cls} has only {len(items)} readable images, fewer than ipc={ipc}")
        loaded[cls] = items
    every = np.concatenate([np.stack([im for _, im in v]) for v in loaded.values()])
    mean = every.reshape(-1, every.shape[-1]).mean(0) / 255.0
    std = np.maximum(every.reshape(-1, every.shape[-1]).std(0) / 255.0, 1e-3)
    net = feature_extractor(every.shape[-1], every.shape[1], seed)
    picks = {}
    for cls, items in loaded.items():
        x = np.stack([im for _, im in items])
        feats = []
        with torch.no_grad():
            for s in range(0, len(x), batch):
                t = torch.from_numpy(x[s:s + batch]).permute(0, 3, 1, 2).float().div_(255.0)
                t = ((t - torch.as_tensor(mean).view(1, -1, 1, 1).float())
                     / torch.as_tensor(std).view(1, -1, 1, 1).float())
                feats.append(net.embed(t).numpy())
        order = SELECTORS[method](np.concatenate(feats), ipc)
        picks[cls] = [items[i] for i in order]
    return _write(index, picks, out, method, ipc, {"seed": seed, "source": str(real_root),
                                                   "features": "random ConvNet-D embed (seeded)"})


def full_real(real_root: str | os.PathLike, classes: list[str] | None = None) -> dict[str, Any]:
    """The whole train split as the ``full_real`` row (the upper bound); the folder is evaluated in place."""
    index = scan_image_folder(real_root, classes=classes)
    if not index.records:
        raise DataError(f"no images under {real_root} for the full_real baseline")
    return {"output": str(Path(real_root)), "images": len(index.records), "method": "full_real"}


def build_baseline(name: str, real_root: str | os.PathLike, out: str | os.PathLike, ipc: int, seed: int = 0,
                   size: int | None = None, classes: list[str] | None = None) -> dict[str, Any]:
    """One baseline by name (``random_real``, ``herding``, ``k_center``, ``full_real``)."""
    if name == "random_real":
        return random_real(real_root, out, ipc, seed=seed, size=size, classes=classes)
    if name == "full_real":
        return full_real(real_root, classes=classes)
    return coreset(real_root, out, ipc, name, seed=seed, size=size, classes=classes)
