"""LeNet-5, the small cross-architecture student of dataset distillation's evaluations.

Two 5x5 convolutions (6 and 16 maps, ReLU, 2x2 max-pool each), then 120 -> 84 -> classes fully connected
layers, as LeCun et al. (1998) on 32 x 32 inputs; DC/DSA's cross-architecture tables evaluate it beside
ConvNet, AlexNet, VGG and ResNet (VICO-UoE/DatasetCondensation ``networks.py`` @ 306245d). The flattened
size follows ``im_size`` (16 x 5 x 5 at 32 px), so any resolution >= 16 px works. About 100x cheaper per
step than MobileNetV2 on the CPU, which is why the laptop demo uses it as an unseen student.
"""

from __future__ import annotations

import torch
from torch import nn


def _after_conv_pool(size: int) -> int:
    """The side of a feature map after a 5x5 valid convolution and a 2x2 max-pool."""
    return (size - 4) // 2


class LeNet(nn.Module):
    """LeNet-5 for ``channels`` x ``im_size`` x ``im_size`` inputs."""

    def __init__(self, channels: int, num_classes: int, im_size: int) -> None:
        super().__init__()
        side = _after_conv_pool(_after_conv_pool(im_size))
        if side < 1:
            raise ValueError(f"LeNet needs im_size >= 16 (got {im_size})")
        self.features = nn.Sequential(
            nn.Conv2d(channels, 6, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(6, 16, 5), nn.ReLU(inplace=True), nn.MaxPool2d(2),
        )
        self.hidden = nn.Sequential(nn.Linear(16 * side * side, 120), nn.ReLU(inplace=True),
                                    nn.Linear(120, 84), nn.ReLU(inplace=True))
        self.feature_dim = 84
        self.fc = nn.Linear(84, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.hidden(self.features(x).flatten(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))
