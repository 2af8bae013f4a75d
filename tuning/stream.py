"""The real training set as a stream of decoded batches (the soft-label teacher's input).

``scan_stream(root, size)`` lists the set's records (paths and labels only, in the order
``load_image_arrays`` would decode them), takes one decoding pass for the channel statistics
(per-channel value histograms, ``pipeline.core.pixels.stats_from_histogram``) that also finds the
unreadable files to leave out, and returns a ``StreamedSet``. Its ``batches(batch_indices)`` decodes
each batch of record indices when the training loop asks for it, through a ``torch.utils.data.DataLoader``
(``workers`` decoding processes; 0 decodes in the caller), so memory holds a few batches, never the set
(the whole of ImageNet-1K at 224 px is about 190 GB as uint8). The order comes from the caller: the
training loop draws each epoch's permutation from its seeded generator, exactly as for an in-memory set,
so the same seed gives the same batches and, for the same pixels, the same weights.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from pipeline.core import read
from pipeline.core.pixels import normalize, pixel_histogram, stats_from_histogram, u8_hwc_to_unit_chw
from pipeline.core.shards import scan_root
from pipeline.errors import DataError

STATS_BATCH = 128  # images per DataLoader batch in the statistics pass (no more than the teacher's batch)


class _Files(Dataset):
    """Record ``i`` -> ``(i, uint8 [H, W, C])``, or ``(i, None)`` for an unreadable file."""

    def __init__(self, paths: Sequence[str], size: int) -> None:
        self.paths, self.size = list(paths), int(size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[int, np.ndarray | None]:
        try:
            return i, read.load_rgb(self.paths[i], self.size)
        except read.BadImageError:
            return i, None


def _as_list(items: list[Any]) -> list[Any]:
    return items


@dataclass
class StreamedSet:
    """Readable records of an image set, decoded and normalised one batch at a time."""

    paths: list[str]
    labels: np.ndarray  # int64, one per path
    classes: list[str]
    size: int
    mean: np.ndarray  # float32 per channel, of the [0, 1] pixels
    std: np.ndarray
    channels: int = 3
    workers: int = 0
    dtype: torch.dtype = torch.float32

    def __len__(self) -> int:
        return len(self.paths)

    def _batch(self, items: list[tuple[int, np.ndarray | None]]) -> tuple[torch.Tensor, torch.Tensor]:
        bad = [self.paths[i] for i, x in items if x is None]
        if bad:
            raise DataError(f"cannot read {bad[0]} (it was readable when the set was scanned; "
                            "remove the file or run `semdistill data check`)")
        idx = np.asarray([i for i, _ in items], dtype=np.int64)
        x = normalize(u8_hwc_to_unit_chw(np.stack([x for _, x in items])), self.mean, self.std)
        return x, torch.from_numpy(self.labels[idx])

    def batches(self, batch_indices: Sequence[torch.Tensor]) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(images [B, C, H, W] normalised, labels [B])`` for each index tensor, in the given order."""
        loader = DataLoader(_Files(self.paths, self.size), batch_sampler=[b.tolist() for b in batch_indices],
                            num_workers=self.workers, collate_fn=self._batch)
        yield from loader


def _count(items: list[tuple[int, np.ndarray | None]], hist: np.ndarray | None,
           keep: list[int]) -> np.ndarray | None:
    """Add the readable images of one batch to ``hist`` and their indices to ``keep``."""
    for i, x in items:
        if x is not None:
            h = pixel_histogram(x)
            hist = h if hist is None else hist + h
            keep.append(i)
    return hist


def scan_stream(root: str | os.PathLike, size: int, classes: list[str] | None = None, fmt: str = "auto",
                workers: int = 0) -> StreamedSet:
    """Index ``root`` (any ``data.format``), drop unreadable files, and measure the channel statistics in one
    decoding pass that keeps no image. Labels follow the sorted class ids (as ``load_image_arrays``)."""
    index = scan_root(str(root), fmt, classes=classes)
    records = list(index.records)
    hist: np.ndarray | None = None
    keep: list[int] = []
    loader = DataLoader(_Files([r.path for r in records], size), batch_size=STATS_BATCH, shuffle=False,
                        num_workers=workers, collate_fn=_as_list)
    for items in loader:
        hist = _count(items, hist, keep)
        del items  # free this batch before the loader decodes the next
    if hist is None:
        raise DataError(f"no readable images under {root}")
    mean, std = stats_from_histogram(hist)
    return StreamedSet(paths=[records[i].path for i in keep],
                       labels=np.asarray([records[i].label for i in keep], dtype=np.int64),
                       classes=list(index.classes), size=int(size), mean=mean, std=std,
                       channels=int(hist.shape[0]), workers=int(workers))
