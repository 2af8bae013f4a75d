"""ConvNet-D: the dataset-distillation workhorse (DC/DM/MTT), with instance norm by default.

``depth`` blocks of conv3x3(width) -> norm -> ReLU -> avgpool(2), then one linear layer.
``embed(x)`` returns the flattened features before the classifier (what DM matches).
Depth follows the resolution by convention: 32 px -> 3, 64 -> 4, 128 -> 5, 256 -> 6
(``depth_for_resolution``); pass ``depth=None`` to pick it from ``im_size``.
"""

from __future__ import annotations

import math

import torch
from torch import nn

NORMS = ("instancenorm", "batchnorm", "layernorm", "groupnorm", "none")


def depth_for_resolution(im_size: int) -> int:
    """ConvNet-D depth by image size: 3 at <= 32 px, one more per doubling, at most 6."""
    return int(min(6, max(3, 3 + math.ceil(math.log2(max(im_size, 32) / 32)))))


def _norm(kind: str, width: int, spatial: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(width, width, affine=True)  # the DC/DM "instance norm" with affine
    if kind == "batchnorm":
        return nn.BatchNorm2d(width)
    if kind == "layernorm":
        return nn.LayerNorm([width, spatial, spatial])
    if kind == "groupnorm":
        return nn.GroupNorm(4, width, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose one of {NORMS}")


class ConvNet(nn.Module):
    """ConvNet-D (Gidaris & Komodakis style, as in DC/DM/MTT) for ``im_size`` x ``im_size`` inputs."""

    def __init__(self, channels: int, num_classes: int, width: int = 128, depth: int | None = 3,
                 norm: str = "instancenorm", im_size: int = 32) -> None:
        super().__init__()
        depth = depth_for_resolution(im_size) if depth is None else depth
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        if im_size // (2 ** depth) < 1:
            raise ValueError(f"im_size {im_size} is too small for depth {depth} (each block halves it)")
        layers: list[nn.Module] = []
        in_ch, size = channels, im_size
        for d in range(depth):
            # DC/DM pad 3 on the first layer of 1-channel 28 px inputs so the map stays 32 px
            pad = 3 if channels == 1 and im_size == 28 and d == 0 else 1
            layers.append(nn.Conv2d(in_ch, width, kernel_size=3, padding=pad))
            size = size + 2 * pad - 2
            layers += [_norm(norm, width, size), nn.ReLU(inplace=True), nn.AvgPool2d(2, 2)]
            size //= 2
            in_ch = width
        self.features = nn.Sequential(*layers)
        self.depth, self.width, self.im_size = depth, width, im_size
        self.feature_dim = width * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Flattened features before the classifier, ``[B, feature_dim]``."""
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
