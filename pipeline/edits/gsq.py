"""Global Semantic Query (EDITS step 3): fuse a class's caption semantics into each image feature.

Our reading (METHODS.md, inferred; the authors' function is unreleased): within one class,
each image feature queries the class's caption embeddings ``T`` with temperature ``tau``::

    w       = softmax(f_img . T^T / tau)          (one row of weights per image)
    f_fused = normalize(f_img + w . T)            fusion = "sum"
    f_fused = normalize([f_img, w . T])           fusion = "concat"

It is one small function so it can be swapped without touching the pipeline.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def softmax(logits: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax (subtracts the row max; works for tau = 0.01 and cosine logits)."""
    z = logits - np.max(logits, axis=axis, keepdims=True)
    e = np.exp(z)
    return e / np.sum(e, axis=axis, keepdims=True)


def gsq_fuse(img: np.ndarray, txt: np.ndarray, tau: float = 0.01, fusion: str = "sum",
             normalize: bool = True) -> np.ndarray:
    """Fused features ``[N, D]`` (``[N, 2D]`` for concat) of ``N`` images against ``M`` captions.

    ``img``: image features ``[N, D]``; ``txt``: the class's caption features ``[M, D]``.
    With ``normalize`` both inputs are L2-normalised first (``feature_normalize``) and the
    output is L2-normalised; without it the raw sum/concat is returned. Float32 out.
    """
    if tau <= 0:
        raise ValueError(f"tau must be > 0, got {tau}")
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
    if fusion == "sum":
        out = img + ctx
    elif fusion == "concat":
        out = np.concatenate([img, ctx], axis=1)
    else:
        raise ValueError(f"fusion must be 'sum' or 'concat', got {fusion!r}")
    return (l2_normalize(out) if normalize else out).astype(np.float32)
