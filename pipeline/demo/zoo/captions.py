"""Per-image captions of the demo digits, measured from the pixels by code.

Each digit image gives five attributes, each turned into words from the tiny tokenizers'
vocabulary (``actors.zoo``):

- ``thickness``: mean stroke width in px (twice the distance transform on the stroke's
  ridge, minus one: a 1 px line is 1, a 3 px line is 3) -> thin / medium / thick strokes;
- ``slant``: horizontal shear of the ink from its second moments, ``-mu11 / mu02``
  (positive when the top leans right, image rows grow downwards) -> slanted left / upright / slanted right;
- ``size``: ink bounding-box area as a share of the image -> small / medium / large size;
- ``position``: horizontal centre of mass relative to the image centre, in px ->
  on the left / centered / on the right;
- ``loops``: holes, i.e. 4-connected background components that do not touch the border
  -> no / one / two closed loop(s).

The level thresholds are the tertiles of each measure over the 1,797 demo digits at 32 px
(fixed here, so a caption depends only on its image). ``caption`` joins a lead such as ``a handwritten
digit eight,`` with the words: ``a handwritten digit eight, thick strokes, slanted right,
small size, centered, two closed loops``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

INK_THRESHOLD = 0.5  # ink share of a pixel (0 = paper, 1 = black) above which it counts as ink
# (low, high) level thresholds: tertiles over all demo digits (sklearn digits at 32 px)
THRESHOLDS = {"thickness": (4.23, 5.21), "slant": (-0.09, 0.01), "size": (0.594, 0.625),
              "position": (-0.24, 0.71)}
WORDS = {
    "thickness": ("thin strokes", "medium strokes", "thick strokes"),
    "slant": ("slanted left", "upright", "slanted right"),
    "size": ("small size", "medium size", "large size"),
    "position": ("on the left", "centered", "on the right"),
    "loops": ("no closed loop", "one closed loop", "two closed loops"),
}
ATTRIBUTES = tuple(WORDS)
LEAD = "a {class_name},"


@dataclass(frozen=True)
class Measures:
    thickness: float
    slant: float
    size: float
    position: float
    loops: int


def ink_map(image: np.ndarray) -> np.ndarray:
    """Ink share in [0, 1] of a uint8 image (RGB or grey, dark ink on light paper)."""
    a = np.asarray(image, dtype=np.float64)
    if a.ndim == 3:
        a = a.mean(axis=2)
    return 1.0 - a / 255.0


def stroke_width(mask: np.ndarray) -> float:
    """Mean stroke width in px: 2 * distance transform - 1 on the ridge (3x3 local maxima)."""
    if not mask.any():
        return 0.0
    dist = ndimage.distance_transform_cdt(mask, metric="chessboard").astype(np.float64)
    ridge = mask & (dist >= ndimage.maximum_filter(dist, size=3))
    return float((2 * dist[ridge] - 1).mean())


def shear(ink: np.ndarray) -> float:
    """``-mu11 / mu02`` of the ink-weighted image: > 0 when the top leans right."""
    total = ink.sum()
    if total <= 0:
        return 0.0
    ys, xs = np.mgrid[: ink.shape[0], : ink.shape[1]]
    cy, cx = (ink * ys).sum() / total, (ink * xs).sum() / total
    mu11 = (ink * (xs - cx) * (ys - cy)).sum()
    mu02 = (ink * (ys - cy) ** 2).sum()
    return float(-mu11 / mu02) if mu02 > 0 else 0.0


def holes(mask: np.ndarray) -> int:
    """Background components (4-connected) that do not touch the border."""
    labels, n = ndimage.label(~mask)
    border = set(np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))) - {0}
    return int(n - len(border))


def measure(image: np.ndarray) -> Measures:
    """The five measures of one digit image."""
    ink = ink_map(image)
    mask = ink > INK_THRESHOLD
    if mask.any():
        rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
        size = (rows[-1] - rows[0] + 1) * (cols[-1] - cols[0] + 1) / mask.size
    else:
        size = 0.0
    total = ink.sum()
    cx = (ink * np.arange(ink.shape[1])[None, :]).sum() / total if total > 0 else (ink.shape[1] - 1) / 2
    return Measures(thickness=stroke_width(mask), slant=shear(ink), size=float(size),
                    position=float(cx - (ink.shape[1] - 1) / 2), loops=holes(mask))


def _level(value: float, bounds: tuple[float, float]) -> int:
    return 0 if value < bounds[0] else (2 if value > bounds[1] else 1)


def levels(m: Measures) -> dict[str, int]:
    """Each attribute's level (0, 1, 2) from its measure; loops are capped at two."""
    out = {k: _level(getattr(m, k), THRESHOLDS[k]) for k in THRESHOLDS}
    out["loops"] = min(m.loops, 2)
    return out


def describe(m: Measures) -> str:
    """The attribute words, comma separated: ``thick strokes, upright, small size, centered, no closed
    loop``."""
    lv = levels(m)
    return ", ".join(WORDS[k][lv[k]] for k in ATTRIBUTES)


def caption(image: np.ndarray, class_name: str, lead: str = LEAD) -> str:
    """One sentence for one image: the lead with the class name, then the measured attributes."""
    if "{class_name}" not in lead:
        raise KeyError("caption lead needs a {class_name} placeholder")
    return f"{lead.replace('{class_name}', class_name)} {describe(measure(image))}"


def parse_levels(text: str) -> dict[str, int | None]:
    """The attribute levels a caption states (None where it states none or several)."""
    low = f" {text.lower()} "
    out: dict[str, int | None] = {}
    for k in ATTRIBUTES:
        hits = [i for i, w in enumerate(WORDS[k]) if f" {w}" in low.replace(",", " ,")]
        out[k] = hits[0] if len(hits) == 1 else None
    return out


def captions_for(images: np.ndarray, labels: np.ndarray, names: list[str], lead: str) -> list[str]:
    """The measured caption of every image, each with its class name (``names[label]``)."""
    return [caption(im, names[int(y)], lead) for im, y in zip(images, labels)]
