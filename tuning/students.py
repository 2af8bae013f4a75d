"""Student networks for cross-architecture evaluation, torch only, sized by resolution and class count.

``build_student(name, channels, num_classes, im_size)`` is the one entry point. Names:

- ``convnet`` (ConvNet-D, depth from the resolution: 32 px -> 3 ... 256 px -> 6) and
  ``convnet3`` ... ``convnet6`` (fixed depth), instance norm (the DM/MTT stage-1 proxy family);
- ``resnet18_cifar_bn`` / ``resnet18_cifar_in``: ResNet-18 in the CIFAR/PReDD form (3x3 stride-1
  stem, no max-pool), batch / instance norm; ``resnet18_imagenet_bn`` / ``resnet18_imagenet_in``:
  the torchvision/ImageNet form (7x7 stride-2 stem + max-pool). The form is in the name, never
  picked from the resolution, so a config cannot mix them up (tuning/students_resnet.py);
- ``resnet_ap10``: ResNet-AP-10 exactly as IDC (average-pool downsampling, stem by resolution
  as IDC: no pool <= 64 px, AvgPool(2) <= 128 px, 7x7 + AvgPool(4) above), instance norm;
- ``mobilenetv2``, ``shufflenetv2`` (1.0x); ``efficientnet_b0`` (torchvision's layout);
- ``shufflenetv2_predd``, ``mobilenetv2_predd``, ``efficientnet_b0_predd``: PReDD's own definitions (grouped
  3x3 convs in ShuffleNetV2; no dropout or stochastic depth), the pool DIVER reports
  (tuning/students_predd.py);
- ``lenet``: LeNet-5 (tuning/students_lenet.py), the small unseen student of DC/DSA's cross-architecture
tables;
- ``vit_tiny``: ViT-Ti (dim 192, 12 blocks, 3 heads), about 8 x 8 patches whatever the size;
  ``vit_predd``: PReDD's ViT (patch 16, dim 512, depth 10, 8 heads, MLP 512, dropout 0.1).

``resnet18`` = ``resnet18_bn`` and ``resnet18_in``: a resolution-adaptive ResNet-18, not a published
architecture (3x3 stride-1 stem at 32 px, 3x3 stride-2 at 64 px, ImageNet stem from 128 px).

MobileNetV2 and ShuffleNetV2 keep small inputs at full resolution longer (CIFAR-style stems);
the number of 2x reductions grows with ``im_size`` until the ImageNet layout is reached.
Every constructor takes optional keyword overrides (``width``, ``depth`` ...) for quick experiments.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.errors import ConfigError
from tuning.convnet import ConvNet, depth_for_resolution
from tuning.students_effnet import EfficientNetB0
from tuning.students_lenet import LeNet
from tuning.students_predd import PReDDMobileNetV2, PReDDShuffleNetV2
from tuning.students_resnet import AdaptiveResNet, ResNet18, ResNetAP, reductions
from tuning.students_vit import PReDDViT, ViT


# ----------------------------------------------------------------------------- MobileNetV2
class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res else self.conv(x)


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


class MobileNetV2(nn.Module):
    # expansion t, channels c, repeats n, ImageNet stride s
    SETTINGS: ClassVar[list[tuple[int, int, int, int]]] = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2),
                                                           (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, channels: int, num_classes: int, im_size: int, width_mult: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        k = reductions(im_size, 5)
        # reduction points in order: stem, stage 24, 32, 64, 160; the last k are kept
        down = [False] * (5 - k) + [True] * k
        cin = _make_divisible(32 * width_mult)
        layers: list[nn.Module] = [nn.Conv2d(channels, cin, 3, 2 if down[0] else 1, 1, bias=False),
                                   nn.BatchNorm2d(cin), nn.ReLU6(inplace=True)]
        point = 1
        for t, c, n, s in self.SETTINGS:
            cout = _make_divisible(c * width_mult)
            stride = 1
            if s == 2:
                stride = 2 if down[point] else 1
                point += 1
            for i in range(n):
                layers.append(InvertedResidual(cin, cout, stride if i == 0 else 1, t))
                cin = cout
        last = _make_divisible(1280 * max(1.0, width_mult))
        layers += [nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.feature_dim = last
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


# ----------------------------------------------------------------------------- ShuffleNetV2
def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class ShuffleUnit(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        branch = cout // 2
        if stride > 1 or cin != cout:
            self.branch1: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cin, 3, stride, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True))
            b2_in = cin
        else:
            self.branch1 = nn.Identity()
            b2_in = branch
        self.split = not (stride > 1 or cin != cout)
        self.branch2 = nn.Sequential(
            nn.Conv2d(b2_in, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
            nn.Conv2d(branch, branch, 3, stride, 1, groups=branch, bias=False), nn.BatchNorm2d(branch),
            nn.Conv2d(branch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.split:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        else:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        return _channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
    def __init__(self, channels: int, num_classes: int, im_size: int,
                 stage_channels: tuple[int, ...] = (24, 116, 232, 464, 1024),
                 repeats: tuple[int, int, int] = (4, 8, 4)) -> None:
        super().__init__()
        k = reductions(im_size, 5)
        down = [False] * (5 - k) + [True] * k  # stem conv, stem maxpool, stage 2, 3, 4
        c0 = stage_channels[0]
        stem: list[nn.Module] = [nn.Conv2d(channels, c0, 3, 2 if down[0] else 1, 1, bias=False),
                                 nn.BatchNorm2d(c0), nn.ReLU(inplace=True)]
        if down[1]:
            stem.append(nn.MaxPool2d(3, 2, 1))
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        cin = c0
        for i, (cout, n) in enumerate(zip(stage_channels[1:4], repeats)):
            for j in range(n):
                layers.append(ShuffleUnit(cin, cout, (2 if down[2 + i] else 1) if j == 0 else 1))
                cin = cout
        self.stages = nn.Sequential(*layers)
        last = stage_channels[4]
        self.conv5 = nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last),
                                   nn.ReLU(inplace=True))
        self.feature_dim = last
        self.fc = nn.Linear(last, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.conv5(self.stages(self.stem(x))), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


# ----------------------------------------------------------------------------- registry
def _convnet(depth: int | None) -> Callable[..., nn.Module]:
    def make(channels: int, num_classes: int, im_size: int, **kw) -> nn.Module:
        d = kw.pop("depth", depth)
        d = depth_for_resolution(im_size) if d is None else d
        return ConvNet(channels, num_classes, im_size=im_size, depth=d, **kw)
    return make


def _resnet18(form: str, norm: str) -> Callable[..., nn.Module]:
    def make(channels: int, num_classes: int, im_size: int, **kw) -> nn.Module:
        return ResNet18(channels, num_classes, im_size, **{"form": form, "norm": norm, **kw})
    return make


def _legacy_resnet18(norm: str) -> Callable[..., nn.Module]:
    def make(channels: int, num_classes: int, im_size: int, **kw) -> nn.Module:
        return AdaptiveResNet([2, 2, 2, 2], channels, num_classes, im_size, **{"norm": norm, **kw})
    return make


STUDENTS: dict[str, Callable[..., nn.Module]] = {
    "convnet": _convnet(None),
    **{f"convnet{d}": _convnet(d) for d in (3, 4, 5, 6)},
    "resnet_ap10": lambda c, n, s, **kw: ResNetAP(c, n, s, **kw),
    **{f"resnet18_{form}_{tag}": _resnet18(form, norm) for form in ("cifar", "imagenet")
       for tag, norm in (("bn", "batchnorm"), ("in", "instancenorm"))},
    "resnet18": _legacy_resnet18("batchnorm"),
    "resnet18_bn": _legacy_resnet18("batchnorm"),
    "resnet18_in": _legacy_resnet18("instancenorm"),
    "mobilenetv2": lambda c, n, s, **kw: MobileNetV2(c, n, s, **kw),
    "shufflenetv2": lambda c, n, s, **kw: ShuffleNetV2(c, n, s, **kw),
    "efficientnet_b0": lambda c, n, s, **kw: EfficientNetB0(c, n, s, **kw),
    "shufflenetv2_predd": lambda c, n, s, **kw: PReDDShuffleNetV2(c, n, s, **kw),
    "mobilenetv2_predd": lambda c, n, s, **kw: PReDDMobileNetV2(c, n, s, **kw),
    "efficientnet_b0_predd": lambda c, n, s, **kw: EfficientNetB0(
        c, n, s, **{"dropout": 0.0, "stochastic_depth": 0.0, "init": "pytorch", **kw}),
    "vit_tiny": lambda c, n, s, **kw: ViT(c, n, s, **kw),
    "vit_predd": lambda c, n, s, **kw: PReDDViT(c, n, s, **kw),
    "lenet": lambda c, n, s, **kw: LeNet(c, n, s, **kw),
}

LEGACY_STUDENTS = ("resnet18", "resnet18_bn", "resnet18_in")  # resolution-adaptive stems (see the module doc)


def check_students(names: list[str], key: str = "eval.students") -> None:
    """Raise ``ConfigError`` naming any unknown student and the ``key`` that lists it (before any job
    starts)."""
    bad = [n for n in names if n not in STUDENTS]
    if bad:
        raise ConfigError(f"{key}: unknown student(s) {bad}; choose from {', '.join(STUDENTS)}")


def build_student(name: str, channels: int, num_classes: int, im_size: int, **kwargs) -> nn.Module:
    """A freshly initialised student ``name`` for ``channels`` x ``im_size`` x ``im_size`` inputs."""
    check_students([name], key=f"student {name!r}")
    if num_classes < 1 or channels < 1 or im_size < 8:
        raise ConfigError(f"student {name}: need channels >= 1, num_classes >= 1, im_size >= 8 "
                          f"(got {channels}, {num_classes}, {im_size})")
    return STUDENTS[name](channels, num_classes, im_size, **kwargs)
