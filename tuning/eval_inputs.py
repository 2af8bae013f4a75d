"""What every evaluation input shares: the dataset's normalisation, ZCA whitening, a set's learned lr.

Every distilled set and the real val set are normalised with one pair of statistics per dataset, the same
for every method, never a set's own (a set's own statistics would hand each method a different input
scaling). ``eval.normalize``:

- ``imagenet``: ImageNet's mean / std, as every peer evaluating ImageNet subsets (IDC/Minimax/EDITS
  ``MEANS['imagenet']``, RDED, SRe2L, MTT's ImageNet subsets);
- ``train``: per-channel statistics of the real train split (DC/DM/MTT compute CIFAR's from its train set);
- ``val``: the real val split's, only when no train split is given (a labelled fallback);
- ``auto`` (default): ``imagenet`` when every class id is an ImageNet wnid, else ``train`` when the train
  split is given, else ``val``.

ZCA (``eval.zca``, MTT's CIFAR option): fitted on the normalised real train split, applied to every set and
the val set (kornia's ``ZCAWhitening(eps=0.1)`` as MTT's ``utils.get_dataset``: unbiased covariance,
``U diag(1 / sqrt(S + eps)) U^T``).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import EvalConfig
from pipeline.core.pixels import channel_stats
from pipeline.errors import ConfigError, DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
WNID = re.compile(r"^n\d{8}$")
LEARNED_LR_FILE = "lr_best.pt"  # MTT's descendants save syn_lr beside images_best.pt under this name
ZCA_MAX_DIM = 3 * 64 * 64  # the covariance is dim x dim: CIFAR / Tiny-ImageNet sizes only


def is_imagenet(classes: list[str]) -> bool:
    """Whether every class id is an ImageNet wnid (``n01440764``)."""
    return bool(classes) and all(WNID.match(str(c)) for c in classes)


def dataset_norm(cfg: EvalConfig, classes: list[str], train_root: str | os.PathLike | None,
                 val_u8: np.ndarray, size: int, log=print) -> dict[str, Any]:
    """``{"mean", "std", "source"}``: the one normalisation of this dataset (module doc)."""
    mode = cfg.normalize
    if mode == "auto":
        mode = "imagenet" if is_imagenet(classes) else ("train" if train_root else "val")
    if mode == "imagenet":
        mean, std = np.asarray(IMAGENET_MEAN, np.float32), np.asarray(IMAGENET_STD, np.float32)
    elif mode == "train":
        if not train_root:
            raise ConfigError("eval.normalize=train needs the real train split (data.root / --train)")
        from tuning.stream import scan_stream

        data = scan_stream(train_root, size, classes=classes, workers=cfg.teacher_workers)
        mean, std = data.mean, data.std
    else:  # "val"; the config's type admits no other mode
        mean, std = channel_stats(val_u8)
    log(f"eval inputs normalised with the {mode} statistics: mean {np.round(mean, 4).tolist()}, "
        f"std {np.round(std, 4).tolist()}")
    return {"mean": np.asarray(mean, np.float32), "std": np.asarray(std, np.float32), "source": mode}


def learned_lr(set_dir: str | os.PathLike) -> float | None:
    """A set's learned lr: ``lr_best.pt`` in its folder (a float or a one-element tensor), else the manifest's
    ``learned_lr``; ``None`` when it has neither."""
    # heavy: PIL (not loaded when this module is imported)
    from pipeline.core.write import MANIFEST

    root = Path(set_dir)
    path = root / LEARNED_LR_FILE
    if path.is_file():
        value = torch.load(path, map_location="cpu", weights_only=True)
        try:
            lr = float(torch.as_tensor(value).reshape(-1)[0])
        except (TypeError, ValueError, IndexError):
            raise DataError(f"{path}: expected a learned lr (a float or a one-element tensor), "
                            f"got {type(value).__name__}") from None
        if not lr > 0:
            raise DataError(f"{path}: the learned lr must be positive, got {lr}")
        return lr
    man = root / MANIFEST
    if man.is_file():
        value = json.loads(man.read_text()).get("learned_lr")
        return float(value) if value is not None else None
    return None


def fit_zca(train_x: torch.Tensor, eps: float) -> dict[str, torch.Tensor]:
    """ZCA of normalised ``[N, C, H, W]`` images: ``{"mean": [D], "matrix": [D, D]}`` (module doc)."""
    flat = train_x.reshape(train_x.shape[0], -1).double()
    if flat.shape[1] > ZCA_MAX_DIM:
        raise ConfigError(f"eval.zca: {tuple(train_x.shape[1:])} images have {flat.shape[1]} values, more "
                          f"than {ZCA_MAX_DIM} (64 x 64 RGB); ZCA is MTT's CIFAR option, set eval.zca=false")
    mean = flat.mean(0)
    centred = flat - mean
    cov = centred.T @ centred / max(1, flat.shape[0] - 1)
    u, s, _ = torch.linalg.svd(cov)
    matrix = u @ torch.diag(1.0 / torch.sqrt(s + eps)) @ u.T
    return {"mean": mean.float(), "matrix": matrix.float()}


def apply_zca(x: torch.Tensor, zca: dict[str, torch.Tensor]) -> torch.Tensor:
    """Whiten ``[N, C, H, W]`` with a fitted ZCA (the matrix is symmetric)."""
    flat = x.reshape(x.shape[0], -1)
    return ((flat - zca["mean"]) @ zca["matrix"]).reshape(x.shape)
