"""Augmentations, seeded explicitly: DSA (differentiable siamese augmentation, Zhao & Bilen, 2021)
and the per-image student-training transforms (RandomResizedCrop, flip, ColorJitter, PCA lighting,
ShufflePatches) of the IDC/Minimax and RDED/SRe2L protocols, in torch (no torchvision).

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

import math
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
    n = x.shape[0]
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

    def __init__(self, strategy: str = DEFAULT_STRATEGY, single: bool = True,
                 params: DSAParams = DSAParams()):
        parse_strategy(strategy)
        self.strategy, self.single, self.params = strategy, single, params

    def __call__(self, x: torch.Tensor, seed: int, siamese: bool = True) -> torch.Tensor:
        return dsa(x, seed, self.strategy, siamese=siamese, single=self.single, params=self.params)


# ----------------------------------------------------------------------------- student-training augmentations
# Per-image transforms of the IDC/Minimax (RandomResizedCrop, flip, ColorJitter, PCA lighting) and
# RDED/SRe2L (ShufflePatches, RandomResizedCrop, flip) training pipelines, on batches [B, C, H, W],
# every draw from an explicit ``torch.Generator``. Colour ops act on [0, 1] pixels (``to01``/``from01``).

# PCA of ImageNet RGB pixels (AlexNet, Krizhevsky et al. 2012): eigenvalues and eigenvectors (columns).
PCA_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
PCA_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009],
                           [-0.5808, -0.0045, -0.8140],
                           [-0.5836, -0.6948, 0.4203]])


def _rrc_box(h: int, w: int, scale: tuple[float, float], ratio: tuple[float, float],
             gen: torch.Generator) -> tuple[int, int, int, int]:
    """One RandomResizedCrop box (top, left, height, width): up to 10 tries of a random area and
    log-uniform aspect ratio, then the whole image clipped to the ratio range."""
    area = h * w
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        target = area * (scale[0] + u[0] * (scale[1] - scale[0]))
        r = math.exp(log_lo + u[1] * (log_hi - log_lo))
        cw, ch = round(math.sqrt(target * r)), round(math.sqrt(target / r))
        if 0 < cw <= w and 0 < ch <= h:
            return int(u[2] * (h - ch + 1)), int(u[3] * (w - cw + 1)), ch, cw
    r = w / h
    if r < ratio[0]:
        cw, ch = w, round(w / ratio[0])
    elif r > ratio[1]:
        ch, cw = h, round(h * ratio[1])
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def random_resized_crop(x: torch.Tensor, gen: torch.Generator, scale: tuple[float, float] = (0.08, 1.0),
                        ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> torch.Tensor:
    """Crop a random box per image and resize it (bilinear) back to the input size."""
    h, w = x.shape[-2:]
    out = []
    for img in x:
        t, left, ch, cw = _rrc_box(h, w, scale, ratio, gen)
        crop = img[None, :, t:t + ch, left:left + cw]
        out.append(F.interpolate(crop, size=(h, w), mode="bilinear", align_corners=False, antialias=True))
    return torch.cat(out)


def random_flip(x: torch.Tensor, gen: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Horizontal flip of each image with probability ``p``."""
    flip = (torch.rand(x.shape[0], generator=gen) < p).to(x.device).view(-1, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


def _gray(x: torch.Tensor) -> torch.Tensor:
    """ITU-R 601 luma of RGB [0, 1] images, ``[B, 1, H, W]``."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]) if x.shape[1] == 3 else x.mean(1, True)


def color_jitter(x01: torch.Tensor, gen: torch.Generator, strength: float = 0.4) -> torch.Tensor:
    """ColorJitter(brightness = contrast = saturation = ``strength``) on [0, 1] images: factors
    uniform in ``[1 - s, 1 + s]``, the three ops in a random order per image, clamped to [0, 1]."""
    n = x01.shape[0]
    factors = 1.0 + (torch.rand(n, 3, generator=gen) * 2 - 1) * strength
    order = torch.argsort(torch.rand(n, 3, generator=gen), dim=1)
    x = x01
    for pos in range(3):
        for op in range(3):
            sel = (order[:, pos] == op).to(x.device).view(-1, 1, 1, 1)
            f = factors[:, op].to(x).view(-1, 1, 1, 1)
            if op == 0:  # brightness: blend with black
                y = x * f
            elif op == 1:  # contrast: blend with the mean grey level
                y = (x - _gray(x).mean(dim=(1, 2, 3),
                                       keepdim=True)) * f + _gray(x).mean(dim=(1, 2, 3), keepdim=True)
            else:  # saturation: blend with the greyscale image
                y = (x - _gray(x)) * f + _gray(x)
            x = torch.where(sel, y.clamp(0, 1), x)
    return x


def pca_lighting(x01: torch.Tensor, gen: torch.Generator, alpha_std: float = 0.1) -> torch.Tensor:
    """AlexNet PCA lighting noise: add ``eigvec @ (alpha * eigval)``, alpha ~ N(0, alpha_std), per image."""
    if alpha_std <= 0 or x01.shape[1] != 3:
        return x01
    alpha = torch.randn(x01.shape[0], 3, generator=gen) * alpha_std
    rgb = (alpha * PCA_EIGVAL) @ PCA_EIGVEC.T  # [B, 3]
    return x01 + rgb.to(x01).view(-1, 3, 1, 1)


def _shuffle_strips(img: torch.Tensor, factor: int, gen: torch.Generator) -> torch.Tensor:
    """Cut the last axis into ``factor`` strips (the last takes the remainder) and permute them."""
    step = img.shape[-1] // factor
    bounds = [i * step for i in range(factor)] + [img.shape[-1]]
    strips = [img[..., bounds[i]:bounds[i + 1]] for i in range(factor)]
    return torch.cat([strips[i] for i in torch.randperm(factor, generator=gen).tolist()], dim=-1)


def shuffle_patches(x: torch.Tensor, gen: torch.Generator, factor: int = 2) -> torch.Tensor:
    """RDED's ShufflePatches: permute ``factor`` vertical strips, then ``factor`` horizontal ones, per
    image."""
    if factor <= 1:
        return x
    out = []
    for img in x:
        img = _shuffle_strips(img, factor, gen)
        out.append(_shuffle_strips(img.transpose(-1, -2), factor, gen).transpose(-1, -2))
    return torch.stack(out)
