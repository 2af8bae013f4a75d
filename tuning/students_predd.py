"""PReDD's evaluation students, as its ``utils_szy.get_network`` builds them (the pool DIVER reports).

Read in Shuzhiyong13/PReDD at commit e33562a (``get_eval_pool('M')``: ViT, EfficientNet, ShuffleNetV2,
MobileNetV2, ResNet18 and the distillation's ConvNet; our versions are written from those definitions):

- ``shufflenetv2_predd`` (networks/shufflenetv2.py): ImageNet stem (3x3 stride-2 conv to 24, max-pool) at
  every resolution, stages 116 / 232 / 464 with 4 / 8 / 4 units, 1x1 conv to 1024, linear. A unit's first
  branch exists only at stride 2; the second branch's 3x3 convolution is *grouped with 2 groups*, not
  depthwise as in the ShuffleNetV2 paper (2,758,862 parameters at 10 classes).
- ``mobilenetv2_predd`` (networks/mobilenetv2.py): the torchvision layout (stride-2 stem at every
  resolution, ReLU6, last 1x1 conv to 1280), **no dropout** before the linear layer, kaiming-normal (fan-out)
  convs and N(0, 0.01) linear weights.
- ``efficientnet_b0_predd`` (networks/efficientnet.py): EfficientNet-B0's layout with SE width
  ``max(1, C_in / 4)``, **no dropout and no stochastic depth**, PyTorch's default initialisation
  (``EfficientNetB0(dropout=0, stochastic_depth=0, init="pytorch")``).

ResNet-18 is ``resnet18_cifar_in`` (networks/resnet.py: 3x3 stride-1 stem, instance norm as
``GroupNorm(C, C)``) and the ViT ``vit_predd`` (tuning/students_vit.py).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.view(b, groups, c // groups, h, w).transpose(1, 2).reshape(b, c, h, w)


class PReDDShuffleUnit(nn.Module):
    """A ShuffleNetV2 unit as PReDD writes it: the 3x3 conv of the second branch has ``groups`` groups."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int = 2) -> None:
        super().__init__()
        self.stride, self.groups = stride, groups
        mid = cout // 2
        if stride == 2:
            self.branch1: nn.Module = nn.Sequential(
                nn.Conv2d(cin, cin, 3, 2, 1, groups=cin, bias=False), nn.BatchNorm2d(cin),
                nn.Conv2d(cin, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))
            b2_in = cin
        else:
            if cin != cout:
                raise ValueError(f"a stride-1 ShuffleNetV2 unit keeps its width ({cin} != {cout})")
            self.branch1 = nn.Identity()
            b2_in = mid
        self.branch2 = nn.Sequential(
            nn.Conv2d(b2_in, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, 3, stride, 1, groups=groups, bias=False), nn.BatchNorm2d(mid),
            nn.Conv2d(mid, mid, 1, bias=False), nn.BatchNorm2d(mid), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
        else:
            x1, x2 = x.chunk(2, dim=1)
            out = torch.cat((x1, self.branch2(x2)), dim=1)
        return _channel_shuffle(out, self.groups)


class PReDDShuffleNetV2(nn.Module):
    """PReDD's ShuffleNetV2 1.0x (module doc); the layout does not depend on ``im_size``."""

    def __init__(self, channels: int, num_classes: int, im_size: int, groups: int = 2,
                 stage_channels: tuple[int, int, int] = (116, 232, 464),
                 repeats: tuple[int, int, int] = (4, 8, 4)
                 ) -> None:
        super().__init__()
        self.im_size = im_size
        self.stem = nn.Sequential(nn.Conv2d(channels, 24, 3, 2, 1, bias=False), nn.BatchNorm2d(24),
                                  nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1))
        layers: list[nn.Module] = []
        cin = 24
        for cout, n in zip(stage_channels, repeats):
            layers.append(PReDDShuffleUnit(cin, cout, 2, groups))
            layers += [PReDDShuffleUnit(cout, cout, 1, groups) for _ in range(n - 1)]
            cin = cout
        self.stages = nn.Sequential(*layers)
        self.conv5 = nn.Sequential(nn.Conv2d(cin, 1024, 1, bias=False), nn.BatchNorm2d(1024),
                                   nn.ReLU(inplace=True))
        self.feature_dim = 1024
        self.fc = nn.Linear(1024, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.conv5(self.stages(self.stem(x))), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


def _conv_bn_relu6(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU6(inplace=True))


class PReDDInvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_residual = stride == 1 and cin == cout
        layers: list[nn.Module] = [_conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [_conv_bn_relu6(hidden, hidden, 3, stride, hidden), nn.Conv2d(hidden, cout, 1, bias=False),
                   nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_residual else self.conv(x)


class PReDDMobileNetV2(nn.Module):
    """PReDD's MobileNetV2 1.0x (module doc): no dropout, its init; the layout does not depend on
    ``im_size``."""

    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                (6, 320, 1, 1))

    def __init__(self, channels: int, num_classes: int, im_size: int) -> None:
        super().__init__()
        self.im_size = im_size
        layers: list[nn.Module] = [_conv_bn_relu6(channels, 32, 3, 2)]
        cin = 32
        for t, c, n, s in self.SETTINGS:
            for i in range(n):
                layers.append(PReDDInvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers.append(_conv_bn_relu6(cin, 1280, 1))
        self.features = nn.Sequential(*layers)
        self.feature_dim = 1280
        self.classifier = nn.Linear(1280, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, 0.01)
                nn.init.zeros_(m.bias)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))
