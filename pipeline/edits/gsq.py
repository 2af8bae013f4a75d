"""Global Semantic Query (EDITS step 3): fuse a class's caption semantics into each image feature.

Read from the authors' released code, einsteinxia/EDITS ``distillation/gen_prototype.py`` @ 9983f5a,
``prototype_kmeans_ours``: within one class, the image features ``I`` ``[N, D]`` query the class's
caption features ``T`` ``[M, D]`` (the raw CLIP projections) with temperature ``tau``::

    W       = softmax(I . T^T / tau)              row-wise: one weight per caption, per image
    f_fused = [I, W . T]                          fusion = "concat" (the authors', default)
    f_fused = I + W . T                           fusion = "sum" (a setting: same size as I)

The authors' L2-normalisation line computes a result it never assigns, so the released code fuses
the raw projections: ``normalize=False`` is their behaviour. ``normalize=True`` L2-normalises both
inputs first and the fused vector after (a setting: ``edits.feature_normalize``).
"""

from __future__ import annotations

import numpy as np

FUSIONS = ("concat", "sum")


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax: the row max is subtracted first, so raw logits / 0.01 do not overflow."""
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def gsq_fuse(img: np.ndarray, txt: np.ndarray, tau: float = 0.01, fusion: str = "concat",
             normalize: bool = False) -> np.ndarray:
    """Fused features ``[N, 2D]`` (concat) or ``[N, D]`` (sum) of ``N`` images against ``M`` captions.

    ``img``: image features ``[N, D]``; ``txt``: the class's caption features ``[M, D]``. The
    defaults are the authors' (raw features, concat); computed in float64, returned as float32.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
    if fusion not in FUSIONS:
        raise ValueError(f"fusion must be one of {FUSIONS}, got {fusion!r}")
    img = np.asarray(img, dtype=np.float64)
    txt = np.asarray(txt, dtype=np.float64)
    if img.ndim != 2 or txt.ndim != 2 or img.shape[1] != txt.shape[1]:
        raise ValueError(f"need img [N, D] and txt [M, D] with the same D, got {img.shape} and {txt.shape}")
    if len(txt) == 0:
        raise ValueError("GSQ needs at least one caption feature in the class")
    if normalize:
        img, txt = l2_normalize(img), l2_normalize(txt)
    w = softmax(img @ txt.T / tau, axis=1)
    ctx = w @ txt
    out = np.concatenate([img, ctx], axis=1) if fusion == "concat" else img + ctx
    return (l2_normalize(out) if normalize else out).astype(np.float32)
