"""Student networks for cross-architecture evaluation, torch only, sized by resolution and class count.

``build_student(name, channels, num_classes, im_size)`` is the one entry point. Names:

- ``convnet`` (ConvNet-D, depth from the resolution: 32 px -> 3 ... 256 px -> 6) and
  ``convnet3`` ... ``convnet6`` (fixed depth), instance norm;
- ``resnet_ap10``: ResNet-AP-10 (IDC/MTT evaluations): one basic block per stage, average
  pooling instead of strided convolutions, instance norm;
- ``resnet18`` / ``resnet18_bn`` (batch norm) and ``resnet18_in`` (instance norm);
- ``mobilenetv2``, ``shufflenetv2`` (1.0x);
- ``vit_tiny``: ViT-Ti (dim 192, 12 blocks, 3 heads), about 8 x 8 patches whatever the size.

Small inputs keep their resolution longer (CIFAR-style stems); the number of 2x reductions
grows with ``im_size`` until the ImageNet layout is reached, so 32 px and 224 px both end
on a small feature map. Every constructor takes optional keyword overrides (``width``,
``depth`` ...) for quick experiments.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from pipeline.errors import ConfigError
from tuning.convnet import ConvNet, depth_for_resolution


def _norm2d(kind: str, ch: int) -> nn.Module:
    if kind == "batchnorm":
        return nn.BatchNorm2d(ch)
    if kind == "instancenorm":
        return nn.GroupNorm(ch, ch, affine=True)  # instance norm with affine, as in DC/MTT code
    raise ValueError(f"unknown norm {kind!r} (batchnorm | instancenorm)")


def _reductions(im_size: int, available: int) -> int:
    """How many 2x reductions a net with ``available`` reduction points applies at ``im_size``.

    32 px -> 3, 64 -> 4, 128 and above -> 5 (the ImageNet layout), capped by ``available``.
    """
    k = math.floor(math.log2(max(im_size, 8) / 4))
    return max(1, min(available, k, 5))


# ----------------------------------------------------------------------------- ResNets
class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int, norm: str, avgpool_down: bool = False) -> None:
        super().__init__()
        self.avgpool_down = avgpool_down and stride != 1
        conv_stride = 1 if avgpool_down else stride
        self.conv1 = nn.Conv2d(cin, cout, 3, conv_stride, 1, bias=False)
        self.n1 = _norm2d(norm, cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.n2 = _norm2d(norm, cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            if avgpool_down:
                layers: list[nn.Module] = [nn.Conv2d(cin, cout, 1, 1, bias=False)]
                if stride != 1:
                    layers.append(nn.AvgPool2d(2, 2))
                self.shortcut = nn.Sequential(*layers, _norm2d(norm, cout))
            else:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm2d(norm, cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.n1(self.conv1(x)))
        if self.avgpool_down:
            out = F.avg_pool2d(out, 2, 2)
        out = self.n2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """ResNet with basic blocks. ``avgpool_down`` gives the ResNet-AP variant (IDC)."""

    def __init__(self, blocks: list[int], channels: int, num_classes: int, im_size: int,
                 norm: str = "batchnorm", width: int = 64, avgpool_down: bool = False) -> None:
        super().__init__()
        widths = [width, width * 2, width * 4, width * 8]
        # reduction points: stem (2) + stages 2..4 (3); small inputs skip the stem's.
        k = _reductions(im_size, 5)
        stem_down = max(0, k - 3)
        stem: list[nn.Module]
        if avgpool_down:
            stem = [nn.Conv2d(channels, width, 3, 1, 1, bias=False), _norm2d(norm, width), nn.ReLU(inplace=True)]
            stem += [nn.AvgPool2d(2, 2) for _ in range(stem_down)]
        elif stem_down >= 2:  # the ImageNet stem
            stem = [nn.Conv2d(channels, width, 7, 2, 3, bias=False), _norm2d(norm, width), nn.ReLU(inplace=True),
                    nn.MaxPool2d(3, 2, 1)]
        else:
            stem = [nn.Conv2d(channels, width, 3, 1 + stem_down, 1, bias=False), _norm2d(norm, width),
                    nn.ReLU(inplace=True)]
        self.stem = nn.Sequential(*stem)
        layers: list[nn.Module] = []
        cin = width
        stage_strides = [1] + [2 if i < min(k, 3) else 1 for i in range(3)]
        for cout, n, stride in zip(widths, blocks, stage_strides):
            for b in range(n):
                layers.append(BasicBlock(cin, cout, stride if b == 0 else 1, norm, avgpool_down))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.feature_dim = cin
        self.fc = nn.Linear(cin, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.layers(self.stem(x)), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


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
    SETTINGS: ClassVar[list[tuple[int, int, int, int]]] = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1)]

    def __init__(self, channels: int, num_classes: int, im_size: int, width_mult: float = 1.0,
                 dropout: float = 0.2) -> None:
        super().__init__()
        k = _reductions(im_size, 5)
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
        k = _reductions(im_size, 5)
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
        self.conv5 = nn.Sequential(nn.Conv2d(cin, last, 1, bias=False), nn.BatchNorm2d(last), nn.ReLU(inplace=True))
        self.feature_dim = last
        self.fc = nn.Linear(last, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.conv5(self.stages(self.stem(x))), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


# ----------------------------------------------------------------------------- ViT
class ViT(nn.Module):
    """A plain pre-norm ViT with a class token and learned position embeddings."""

    def __init__(self, channels: int, num_classes: int, im_size: int, patch: int | None = None,
                 dim: int = 192, depth: int = 12, heads: int = 3, mlp_ratio: float = 4.0,
                 dropout: float = 0.0) -> None:
        super().__init__()
        patch = patch or max(2, min(16, im_size // 8))
        if im_size % patch:
            raise ValueError(f"im_size {im_size} is not a multiple of the patch size {patch}")
        self.patch = patch
        n_tokens = (im_size // patch) ** 2
        self.to_tokens = nn.Conv2d(channels, dim, patch, patch)
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, n_tokens + 1, dim) * 0.02)
        layer = nn.TransformerEncoderLayer(dim, heads, int(dim * mlp_ratio), dropout, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.feature_dim = dim
        self.head = nn.Linear(dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        t = self.to_tokens(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.cls.expand(t.shape[0], -1, -1), t], dim=1) + self.pos
        return self.norm(self.blocks(t))[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


# ----------------------------------------------------------------------------- registry
def _convnet(depth: int | None) -> Callable[..., nn.Module]:
    def make(channels: int, num_classes: int, im_size: int, **kw) -> nn.Module:
        d = kw.pop("depth", depth)
        d = depth_for_resolution(im_size) if d is None else d
        return ConvNet(channels, num_classes, im_size=im_size, depth=d, **kw)
    return make


STUDENTS: dict[str, Callable[..., nn.Module]] = {
    "convnet": _convnet(None),
    **{f"convnet{d}": _convnet(d) for d in (3, 4, 5, 6)},
    "resnet_ap10": lambda c, n, s, **kw: ResNet([1, 1, 1, 1], c, n, s, **{"norm": "instancenorm",
                                                                           "avgpool_down": True, **kw}),
    "resnet18": lambda c, n, s, **kw: ResNet([2, 2, 2, 2], c, n, s, **{"norm": "batchnorm", **kw}),
    "resnet18_bn": lambda c, n, s, **kw: ResNet([2, 2, 2, 2], c, n, s, **{"norm": "batchnorm", **kw}),
    "resnet18_in": lambda c, n, s, **kw: ResNet([2, 2, 2, 2], c, n, s, **{"norm": "instancenorm", **kw}),
    "mobilenetv2": lambda c, n, s, **kw: MobileNetV2(c, n, s, **kw),
    "shufflenetv2": lambda c, n, s, **kw: ShuffleNetV2(c, n, s, **kw),
    "vit_tiny": lambda c, n, s, **kw: ViT(c, n, s, **kw),
}


def student_names() -> list[str]:
    return list(STUDENTS)


def check_students(names: list[str]) -> None:
    """Raise ``ConfigError`` naming any unknown student (before any job starts)."""
    bad = [n for n in names if n not in STUDENTS]
    if bad:
        raise ConfigError(f"unknown student(s) {bad}; choose from {', '.join(STUDENTS)}")


def build_student(name: str, channels: int, num_classes: int, im_size: int, **kwargs) -> nn.Module:
    """A freshly initialised student ``name`` for ``channels`` x ``im_size`` x ``im_size`` inputs."""
    check_students([name])
    if num_classes < 1 or channels < 1 or im_size < 8:
        raise ConfigError(f"student {name}: need channels >= 1, num_classes >= 1, im_size >= 8 "
                          f"(got {channels}, {num_classes}, {im_size})")
    return STUDENTS[name](channels, num_classes, im_size, **kwargs)
