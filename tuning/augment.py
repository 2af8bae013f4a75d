"""DSA: differentiable siamese augmentation (Zhao & Bilen, 2021), seeded explicitly.

Every transform is differentiable w.r.t. the images (affine grids, masks, arithmetic), so
a distiller can backpropagate through it. *Siamese*: the same ``seed`` gives the same
transform to two batches (real and synthetic) whatever their sizes, because with
``siamese=True`` one parameter draw is shared by the whole batch. With ``siamese=False``
each image gets its own draw (the student-training mode of MTT/DM evaluations).

Strategy: names joined by ``_`` from ``color, crop, cutout, flip, scale, rotate``.
``single=True`` (DSA's mode "S") applies one randomly chosen transform per call (``color``
counts as one: brightness, saturation, contrast); ``single=False`` applies all in order.
Randomness comes only from ``torch.Generator(seed)``, never from the global RNG.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DEFAULT_STRATEGY = "color_crop_cutout_flip_scale_rotate"
TRANSFORMS = ("color", "crop", "cutout", "flip", "scale", "rotate")


@dataclass(frozen=True)
class DSAParams:
    """Magnitudes from the DSA reference (ParamDiffAug)."""

    ratio_scale: float = 1.2
    ratio_rotate: float = 15.0  # degrees
    ratio_crop_pad: float = 0.125
    ratio_cutout: float = 0.5  # side of the cut square, as a fraction of the image side
    brightness: float = 1.0
    saturation: float = 2.0
    contrast: float = 0.5
    prob_flip: float = 0.5


def _draw(gen: torch.Generator, n: int, siamese: bool) -> torch.Tensor:
    """``n`` uniform [0, 1) draws, or one draw repeated ``n`` times when siamese."""
    u = torch.rand(1 if siamese else n, generator=gen)
    return u.expand(n).clone() if siamese else u


def _affine(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    grid = F.affine_grid(theta.to(x.dtype).to(x.device), list(x.shape), align_corners=True)
    return F.grid_sample(x, grid, align_corners=True)


def rand_color(x: torch.Tensor, gen: torch.Generator, siamese: bool, p: DSAParams) -> torch.Tensor:
    n = x.shape[0]
    b = ((_draw(gen, n, siamese) - 0.5) * p.brightness).to(x)
    x = x + b.view(n, 1, 1, 1)
    s = (_draw(gen, n, siamese) * p.saturation).to(x)
    mean = x.mean(dim=1, keepdim=True)
    x = (x - mean) * s.view(n, 1, 1, 1) + mean
    c = (_draw(gen, n, siamese) + p.contrast).to(x)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * c.view(n, 1, 1, 1) + mean


def rand_crop(x: torch.Tensor, gen: torch.Generator, siamese: bool, p: DSAParams) -> torch.Tensor:
    """Random translation by up to ``ratio_crop_pad`` of the side, zero padded (DSA's crop)."""
    n, _, h, w = x.shape
    tx = (_draw(gen, n, siamese) * 2 - 1) * p.ratio_crop_pad * 2  # affine units: [-1, 1] spans the image
    ty = (_draw(gen, n, siamese) * 2 - 1) * p.ratio_crop_pad * 2
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = 1
    theta[:, 1, 1] = 1
    theta[:, 0, 2] = tx
    theta[:, 1, 2] = ty
    return _affine(x, theta)


def rand_cutout(x: torch.Tensor, gen: torch.Generator, siamese: bool, p: DSAParams) -> torch.Tensor:
    n, _, h, w = x.shape
    ch, cw = max(1, int(h * p.ratio_cutout + 0.5)), max(1, int(w * p.ratio_cutout + 0.5))
    cy = (_draw(gen, n, siamese) * (h + 1 - ch % 2)).long()  # centre positions as in the reference
    cx = (_draw(gen, n, siamese) * (w + 1 - cw % 2)).long()
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    y0 = (cy - ch // 2).view(n, 1, 1)
    x0 = (cx - cw // 2).view(n, 1, 1)
    inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)
    mask = (~inside).to(x.dtype).to(x.device).unsqueeze(1)
    return x * mask


def rand_flip(x: torch.Tensor, gen: torch.Generator, siamese: bool, p: DSAParams) -> torch.Tensor:
    n = x.shape[0]
    flip = (_draw(gen, n, siamese) < p.prob_flip).to(x.device).view(n, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def rand_scale(x: torch.Tensor, gen: torch.Generator, siamese: bool, p: DSAParams) -> torch.Tensor:
    n = x.shape[0]
    lo, hi = 1.0 / p.ratio_scale, p.ratio_scale
    sx = _draw(gen, n, siamese) * (hi - lo) + lo
    sy = _draw(gen, n, siamese) * (hi - lo) + lo
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = sx
    theta[:, 1, 1] = sy
    return _affine(x, theta)


def rand_rotate(x: torch.Tensor, gen: torch.Generator, siamese: bool, p: DSAParams) -> torch.Tensor:
    n = x.shape[0]
    ang = (_draw(gen, n, siamese) - 0.5) * 2 * p.ratio_rotate / 180 * torch.pi
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(ang)
    theta[:, 0, 1] = -torch.sin(ang)
    theta[:, 1, 0] = torch.sin(ang)
    theta[:, 1, 1] = torch.cos(ang)
    return _affine(x, theta)


FUNCS = {"color": rand_color, "crop": rand_crop, "cutout": rand_cutout, "flip": rand_flip,
         "scale": rand_scale, "rotate": rand_rotate}


def parse_strategy(strategy: str) -> list[str]:
    names = [s for s in strategy.split("_") if s]
    bad = [s for s in names if s not in FUNCS]
    if bad or not names:
        raise ValueError(f"unknown DSA transform(s) {bad or [strategy]}; known: {', '.join(TRANSFORMS)}")
    return names


def dsa(x: torch.Tensor, seed: int, strategy: str = DEFAULT_STRATEGY, siamese: bool = True,
        single: bool = True, params: DSAParams = DSAParams()) -> torch.Tensor:
    """Augment ``x`` ``[B, C, H, W]`` differentiably; the same seed gives the same transform."""
    names = parse_strategy(strategy)
    gen = torch.Generator().manual_seed(int(seed))
    if single:
        names = [names[int(torch.randint(len(names), (1,), generator=gen))]]
    for name in names:
        x = FUNCS[name](x, gen, siamese, params)
    return x.contiguous()


class DSA:
    """Callable wrapper: ``DSA(strategy)(x, seed)``; ``.seeds(base)`` yields fresh seeds."""

    def __init__(self, strategy: str = DEFAULT_STRATEGY, single: bool = True, params: DSAParams = DSAParams()):
        parse_strategy(strategy)
        self.strategy, self.single, self.params = strategy, single, params

    def __call__(self, x: torch.Tensor, seed: int, siamese: bool = True) -> torch.Tensor:
        return dsa(x, seed, self.strategy, siamese=siamese, single=self.single, params=self.params)
