"""EfficientNet-B0 (Tan & Le 2019) in torchvision's layout, the student DIVER's table uses.

Stem 3x3 stride-2 conv (32) + BN + SiLU; seven MBConv stages (expand ratio, kernel, stride,
channels, repeats) = (1,3,1,16,1) (6,3,2,24,2) (6,5,2,40,2) (6,3,2,80,3) (6,5,1,112,3)
(6,5,2,192,4) (6,3,1,320,1); squeeze-excitation with ``max(1, C_in // 4)`` channels (SiLU,
sigmoid); head 1x1 conv to 1280 + BN + SiLU, global pool, dropout 0.2, linear.
Stochastic depth grows linearly to 0.2 over the blocks and the init is torchvision's
(kaiming-normal fan-out convs, uniform(+-1/sqrt(classes)) linear; ``init="pytorch"`` keeps PyTorch's
defaults, as PReDD's). 5,288,548 parameters at 1000 classes. The layout is the same at every resolution (total
stride 32; 32 px ends at 1 x 1).
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

# expand ratio, kernel, stride, output channels, repeats
B0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


def _conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1,
             act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.SiLU(inplace=True))
    return nn.Sequential(*layers)


class MBConv(nn.Module):
    """Inverted residual with squeeze-excitation; stochastic depth ``drop`` on the residual branch."""

    def __init__(self, cin: int, cout: int, expand: int, k: int, stride: int, drop: float) -> None:
        super().__init__()
        hidden = cin * expand
        squeeze = max(1, cin // 4)
        layers: list[nn.Module] = [_conv_bn(cin, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn(hidden, hidden, k, stride, groups=hidden)]
        self.body = nn.Sequential(*layers)
        self.se_reduce = nn.Conv2d(hidden, squeeze, 1)
        self.se_expand = nn.Conv2d(squeeze, hidden, 1)
        self.project = _conv_bn(hidden, cout, 1, act=False)
        self.residual = stride == 1 and cin == cout
        self.drop = drop

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(x)
        s = torch.sigmoid(self.se_expand(F.silu(self.se_reduce(F.adaptive_avg_pool2d(h, 1)))))
        out = self.project(h * s)
        if not self.residual:
            return out
        if self.training and self.drop > 0:  # per-sample stochastic depth (torchvision's "row" mode)
            keep = torch.empty(out.shape[0], 1, 1, 1, device=out.device,
                               dtype=out.dtype).bernoulli_(1 - self.drop)
            out = out * keep / (1 - self.drop)
        return out + x


class EfficientNetB0(nn.Module):
    """EfficientNet-B0 for ``channels`` x ``im_size`` inputs (the size does not change the layout)."""

    def __init__(self, channels: int, num_classes: int, im_size: int, dropout: float = 0.2,
                 stochastic_depth: float = 0.2, init: str = "torchvision") -> None:
        super().__init__()
        self.im_size = im_size
        total = sum(s[4] for s in B0_STAGES)
        layers: list[nn.Module] = [_conv_bn(channels, 32, 3, 2)]
        cin, idx = 32, 0
        for expand, k, stride, cout, repeats in B0_STAGES:
            for r in range(repeats):
                layers.append(MBConv(cin, cout, expand, k, stride if r == 0 else 1,
                                     stochastic_depth * idx / total))
                cin, idx = cout, idx + 1
        layers.append(_conv_bn(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.feature_dim = 1280
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))
        if init not in ("torchvision", "pytorch"):
            raise ValueError(f"unknown EfficientNet init {init!r} (torchvision | pytorch)")
        # torchvision's init; pytorch: the layers' own
        for m in self.modules() if init == "torchvision" else ():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
