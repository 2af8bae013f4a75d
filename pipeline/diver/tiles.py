"""Tiled stage-1 images (``diver.input_tiles``): NCFM stores four 64 px sub-images as one 2x2, 128 px image.

DIVER recovers each tile on its own (read-sibling): split the image into ``n x n`` tiles (row-major),
recover every tile at the DiT resolution, re-tile the recovered tiles into one mosaic and resize it to
the input size. Tile ``j`` of an image draws its noise from ``tile_seed(image_seed, j)``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.core.seeds import image_seed
from pipeline.errors import DataError


def check_tiles(images: torch.Tensor, n: int, source: str) -> None:
    """Fail when the images cannot be cut into ``n x n`` equal tiles."""
    h, w = images.shape[-2:]
    if n > 1 and (h % n or w % n):
        raise DataError(f"{source}: diver.input_tiles={n} but the images are {h}x{w} px, not divisible by "
                        f"{n}; set diver.input_tiles=1 for untiled sets")


def split_tiles(image: torch.Tensor, n: int) -> torch.Tensor:
    """``[3, H, W]`` -> ``[n * n, 3, H / n, W / n]``, row-major (tile ``j`` is row ``j // n``, column ``j %
    n``)."""
    c, h, w = image.shape
    th, tw = h // n, w // n
    return image.reshape(c, n, th, n, tw).permute(1, 3, 0, 2, 4).reshape(n * n, c, th, tw)


def join_tiles(tiles_u8: np.ndarray, n: int, size: tuple[int, int]) -> np.ndarray:
    """Recovered tiles ``[n * n, s, s, 3]`` uint8 -> one mosaic resized to ``size`` (H, W), uint8 ``[H, W,
    3]``.

    The mosaic is resized as a whole (bicubic, antialiased, like the untiled path's resize back)."""
    t = torch.from_numpy(np.ascontiguousarray(tiles_u8)).float().div(255.0)  # [n*n, s, s, 3]
    k, s1, s2, c = t.shape
    if k != n * n:
        raise ValueError(f"expected {n * n} tiles, got {k}")
    mosaic = t.reshape(n, n, s1, s2, c).permute(4, 0, 2, 1, 3).reshape(1, c, n * s1, n * s2)
    if tuple(mosaic.shape[-2:]) != tuple(size):
        mosaic = F.interpolate(mosaic, size=tuple(size), mode="bicubic", align_corners=False, antialias=True)
    return (mosaic[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)


def tile_seed(seed: int, tile: int) -> int:
    """The noise seed of tile ``tile`` of the image whose seed is ``seed``."""
    return image_seed(int(seed), "tile", int(tile))


class TileBuffer:
    """Collects the recovered tiles of each image (they may arrive in any batch order)."""

    def __init__(self, n: int, size_of: dict) -> None:
        self.n, self.size_of = n, size_of
        self._parts: dict[object, dict[int, np.ndarray]] = {}

    def add(self, key, tile: int, recovered: np.ndarray) -> np.ndarray | None:
        """Store one tile; returns the re-tiled image once all ``n * n`` tiles of ``key`` are in."""
        parts = self._parts.setdefault(key, {})
        parts[int(tile)] = recovered
        if len(parts) < self.n * self.n:
            return None
        del self._parts[key]
        return join_tiles(np.stack([parts[j] for j in range(self.n * self.n)]), self.n, self.size_of[key])
