"""Pixel conversions and statistics, one name per meaning.

Conventions: ``u8`` is uint8 in [0, 255]; ``unit`` is float in [0, 1]; ``signed`` is float in
[-1, 1] (what diffusers VAEs and the demo classifier take); ``hwc``/``chw`` are the layouts
``[N, H, W, C]`` (numpy, as decoded) and ``[N, C, H, W]`` (torch).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def _u8_chw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    if isinstance(images, torch.Tensor):
        return images.permute(0, 3, 1, 2)
    # Ray's may be read-only
    return torch.from_numpy(np.require(images, np.uint8, ["C", "W"])).permute(0, 3, 1, 2)


def u8_hwc_to_unit_chw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in [0, 1] (``x / 255``)."""
    return _u8_chw(images).float() / 255.0


def u8_hwc_to_signed_chw(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, H, W, C]`` -> float32 ``[N, C, H, W]`` in [-1, 1] (``x / 127.5 - 1``)."""
    return _u8_chw(images).float() / 127.5 - 1.0


def unit_to_signed(images01: torch.Tensor) -> torch.Tensor:
    """[0, 1] -> [-1, 1] (``x * 2 - 1``), any layout."""
    return images01 * 2 - 1


def signed_to_unit(images: torch.Tensor) -> torch.Tensor:
    """[-1, 1] -> [0, 1] (``x / 2 + 0.5``, clamped), any layout."""
    return (images / 2 + 0.5).clamp(0, 1)


def unit_chw_to_u8_hwc(images01: torch.Tensor) -> np.ndarray:
    """float ``[N, C, H, W]`` (or one ``[C, H, W]``) in [0, 1] -> uint8 ``[N, H, W, C]``, rounded half up."""
    x = images01.detach().cpu()
    x = x.permute(0, 2, 3, 1) if x.ndim == 4 else x.permute(1, 2, 0)
    return (x.numpy() * 255 + 0.5).clip(0, 255).astype(np.uint8)


def normalize(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``(x - mean) / std`` per channel of ``[N, C, H, W]``."""
    m = torch.as_tensor(list(mean), dtype=images.dtype).view(1, -1, 1, 1)
    s = torch.as_tensor(list(std), dtype=images.dtype).view(1, -1, 1, 1)
    return (images - m) / s


def pixel_histogram(images_u8: np.ndarray) -> np.ndarray:
    """Per-channel counts of every uint8 value in ``[..., C]`` images: ``[C, 256]`` int64 (exact, and summable
    across images, so a set's channel statistics take one streaming pass; see ``stats_from_histogram``)."""
    x = np.asarray(images_u8)
    if x.dtype != np.uint8:
        raise ValueError(f"pixel_histogram needs uint8 images, got {x.dtype}")
    flat = x.reshape(-1, x.shape[-1])
    return np.stack([np.bincount(flat[:, k], minlength=256) for k in range(flat.shape[1])]).astype(np.int64)


def stats_from_histogram(hist: np.ndarray, min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """``channel_stats`` from a summed ``pixel_histogram``: the same mean bit for bit (both divide the exact
    integer pixel sum), the population std summed per value instead of per pixel (equal up to float64
    rounding), floored at ``min_std``. Two float32 arrays of length C."""
    hist = np.asarray(hist, dtype=np.int64)
    n = int(hist[0].sum())
    if n == 0:
        raise ValueError("stats_from_histogram needs at least one pixel")
    total = (hist * np.arange(256, dtype=np.int64)).sum(1)
    mean = total.astype(np.float64) / n / 255.0
    d = np.arange(256, dtype=np.float64)[None, :] / 255.0 - mean[:, None]
    std = np.sqrt((hist * d * d).sum(1) / n)
    return mean.astype(np.float32), np.maximum(std, min_std).astype(np.float32)


def channel_stats(images_u8: np.ndarray, chunk: int = 1024,
                  min_std: float = 1e-3) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean and population std of [0, 1] pixels of uint8 ``[N, H, W, C]`` images.

    Computed in float64, ``chunk`` images at a time (two passes, no full-size float copy);
    the std is floored at ``min_std`` so a constant channel cannot divide by zero.
    Returns two float32 arrays of length C.
    """
    x = np.asarray(images_u8)
    if x.ndim != 4 or len(x) == 0:
        raise ValueError(f"channel_stats needs uint8 images [N, H, W, C] with N >= 1, got shape {x.shape}")
    c = x.shape[-1]
    n = x.size // c
    total = np.zeros(c, dtype=np.float64)
    for i in range(0, len(x), chunk):
        total += x[i:i + chunk].reshape(-1, c).sum(0, dtype=np.float64)
    mean = total / n / 255.0
    sq = np.zeros(c, dtype=np.float64)
    for i in range(0, len(x), chunk):
        d = x[i:i + chunk].reshape(-1, c).astype(np.float64) / 255.0 - mean
        sq += (d * d).sum(0)
    std = np.sqrt(sq / n)
    return mean.astype(np.float32), np.maximum(std, min_std).astype(np.float32)
