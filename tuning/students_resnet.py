"""ResNet students: the two published ResNet-18 forms, IDC's ResNet-AP-10, and the legacy adaptive ResNet.

- ``ResNet18(form="cifar")``: the CIFAR/PReDD form (3x3 stride-1 stem, no max-pool; stages
  64-128-256-512 with strides 1-2-2-2; global average pool). 11,173,962 parameters at 10 classes.
- ``ResNet18(form="imagenet")``: the torchvision/ImageNet form (7x7 stride-2 stem + 3x3 stride-2
  max-pool, same stages). 11,689,512 parameters at 1000 classes, as torchvision's ``resnet18``.
  Both forms use PyTorch's default initialisation (as PReDD's definitions do) and either
  batch norm or instance norm (``GroupNorm(C, C)`` with affine, the DC/MTT/PReDD reading).
- ``ResNetAP``: ResNet-AP-10 exactly as IDC (Kim et al. 2022, ``models/resnet_ap.py``): every
  conv has stride 1, downsampling is average pooling (after the first conv of a block, and
  after the 1x1 shortcut conv); the stem is 3x3 with no pool at <= 64 px, 3x3 + AvgPool(2) at
  <= 128 px, 7x7 (stride 1) + AvgPool(4) above; IDC's init (conv weights N(0, 2 / (k*k*C_out)),
  norm weight 1 / bias 0). Base width 64 (IDC's ImageNet branch); ``width=32`` gives IDC's CIFAR branch.
- ``AdaptiveResNet``: a ResNet whose stem follows the resolution (the names ``resnet18``,
  ``resnet18_bn``, ``resnet18_in``; not a published architecture).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F


def norm2d(kind: str, ch: int) -> nn.Module:
    """``batchnorm`` or ``instancenorm`` (GroupNorm with one group per channel, affine)."""
    if kind == "batchnorm":
        return nn.BatchNorm2d(ch)
    if kind == "instancenorm":
        return nn.GroupNorm(ch, ch, affine=True)  # instance norm with affine, as in DC/MTT/IDC code
    raise ValueError(f"unknown norm {kind!r} (batchnorm | instancenorm)")


def reductions(im_size: int, available: int) -> int:
    """How many 2x reductions the adaptive nets apply at ``im_size``: 32 px -> 3, 64 -> 4, >= 128 -> 5."""
    k = math.floor(math.log2(max(im_size, 8) / 4))
    return max(1, min(available, k, 5))


class BasicBlock(nn.Module):
    """Two 3x3 convs with a residual; ``avgpool_down`` downsamples by average pooling (IDC's ResNet-AP)."""

    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, norm: str, avgpool_down: bool = False) -> None:
        super().__init__()
        self.avgpool_down = avgpool_down and stride != 1
        self.stride = stride
        conv_stride = 1 if avgpool_down else stride
        self.conv1 = nn.Conv2d(cin, cout, 3, conv_stride, 1, bias=False)
        self.n1 = norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = norm2d(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if avgpool_down:
                layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, 1, bias=False)]
                if stride != 1:
                    layers.append(nn.AvgPool2d(stride, stride))
                self.shortcut = nn.Sequential(*layers, norm2d(norm, cout))
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), norm2d(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        if self.avgpool_down:
            out = F.avg_pool2d(out, self.stride, self.stride)
        out = self.n2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


def _stages(width: int, blocks: list[int], norm: str, avgpool_down: bool) -> tuple[nn.Sequential, int]:
    layers: list[nn.Module] = []
    cin = width
    for i, n in enumerate(blocks):
        cout = width * 2 ** i
        for b in range(n):
            layers.append(BasicBlock(cin, cout, (1 if i == 0 else 2) if b == 0 else 1, norm, avgpool_down))
            cin = cout
    return nn.Sequential(*layers), cin


class _Classifier(nn.Module):
    stem: nn.Module
    layers: nn.Module
    fc: nn.Linear

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class ResNet18(_Classifier):
    """ResNet-18 in a named form: ``cifar`` (3x3 s1 stem, no pool) or ``imagenet`` (7x7 s2 + max-pool)."""

    def __init__(self, channels: int, num_classes: int, im_size: int, form: Literal["cifar", "imagenet"],
                 norm: str = "batchnorm", width: int = 64, blocks: tuple[int, ...] = (2, 2, 2, 2)) -> None:
        super().__init__()
        if form == "cifar":
            stem: list[nn.Module] = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), norm2d(norm, width),
                                     nn.ReLU(inplace=True)]
        elif form == "imagenet":
            stem = [nn.Conv2d(channels, width, 7, 2, 3, bias=False), norm2d(norm, width),
                    nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        else:
            raise ValueError(f"unknown ResNet-18 form {form!r} (cifar | imagenet)")
        self.form, self.im_size = form, im_size
        self.stem = nn.Sequential(*stem)
        self.layers, self.feature_dim = _stages(width, list(blocks), norm, avgpool_down=False)
        self.fc = nn.Linear(self.feature_dim, num_classes)


def idc_stem_size(im_size: int) -> str:
    """IDC's ``net_size``: ``small`` at <= 64 px, ``mid`` at <= 128 px, ``large`` above."""
    return "small" if im_size <= 64 else "mid" if im_size <= 128 else "large"


class ResNetAP(_Classifier):
    """IDC's ResNet-AP (depth 10: one basic block per stage), average-pool downsampling, IDC's init."""

    def __init__(self, channels: int, num_classes: int, im_size: int, norm: str = "instancenorm",
                 width: int = 64, blocks: tuple[int, ...] = (1, 1, 1, 1)) -> None:
        super().__init__()
        self.stem_size = idc_stem_size(im_size)
        k = 7 if self.stem_size == "large" else 3
        stem: list[nn.Module] = [nn.Conv2d(channels, width, k, 1, k // 2, bias=False), norm2d(norm, width),
                                 nn.ReLU(inplace=True)]
        if self.stem_size == "mid":
            stem.append(nn.AvgPool2d(2, 2))
        elif self.stem_size == "large":
            stem.append(nn.AvgPool2d(4, 4))
        self.stem = nn.Sequential(*stem)
        self.layers, self.feature_dim = _stages(width, list(blocks), norm, avgpool_down=True)
        self.fc = nn.Linear(self.feature_dim, num_classes)
        for m in self.modules():  # IDC's init (the fc keeps PyTorch's default, as in IDC)
            if isinstance(m, nn.Conv2d):
                m.weight.data.normal_(0.0,
                                      math.sqrt(2.0 / (m.kernel_size[0] * m.kernel_size[1] * m.out_channels)))
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                m.weight.data.fill_(1.0)
                m.bias.data.zero_()


class AdaptiveResNet(_Classifier):
    """A ResNet whose stem follows the resolution (3x3 s1 at 32 px, 3x3 s2 at 64 px, ImageNet stem from
    128 px), the students ``resnet18*``; not a published architecture: use the named forms for paper
    numbers."""

    def __init__(self, blocks: list[int], channels: int, num_classes: int, im_size: int,
                 norm: str = "batchnorm", width: int = 64) -> None:
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8]
        k = reductions(im_size, 5)
        stem_down = max(0, k - 3)
        stem: list[nn.Module]
        if stem_down >= 2:
            stem = [nn.Conv2d(channels, width, 7, 2, 3, bias=False), norm2d(norm, width),
                    nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
        else:
            stem = [nn.Conv2d(channels, width, 3, 1 + stem_down, 1, bias=False), norm2d(norm, width),
                    nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        cin = width
        stage_strides = [1] + [2 if i < min(k, 3) else 1 for i in range(3)]
        for cout, n, stride in zip(widths, blocks, stage_strides):
            for b in range(n):
                layers.append(BasicBlock(cin, cout, stride if b == 0 else 1, norm))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.feature_dim = cin
        self.fc = nn.Linear(cin, num_classes)
