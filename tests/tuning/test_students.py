"""Students: every architecture trains (forward + backward) at 32 and 64 px, sized by classes and
resolution."""

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from tuning.students import STUDENTS, build_student

NAMES = ["convnet", "convnet4", "resnet_ap10", "resnet18", "resnet18_in", "mobilenetv2", "shufflenetv2",
         "vit_tiny"]


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", NAMES)
def test_forward_backward(name, size):
    torch.manual_seed(0)
    model = build_student(name, channels=3, num_classes=7, im_size=size)
    x = torch.randn(2, 3, size, size)
    logits = model(x)
    assert logits.shape == (2, 7)
    emb = model.embed(x)
    assert emb.ndim == 2 and emb.shape[0] == 2
    loss = nn.functional.cross_entropy(logits, torch.tensor([0, 6]))
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    # the first layer learns (the gradient reaches the input end of the network)
    first = next(p for p in model.parameters() if p.ndim == 4)
    assert first.grad.abs().sum() > 0


def test_registry_has_issue_students():
    for name in ["convnet", "convnet3", "convnet6", "resnet_ap10", "resnet18", "resnet18_bn", "resnet18_in",
                 "mobilenetv2", "shufflenetv2", "vit_tiny"]:
        assert name in STUDENTS


def test_norm_variants():
    bn = build_student("resnet18", 3, 10, 32)
    inn = build_student("resnet18_in", 3, 10, 32)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in inn.modules())
    gns = [m for m in inn.modules() if isinstance(m, nn.GroupNorm)]
    assert gns and all(m.num_groups == m.num_channels for m in gns)  # one group per channel = instance norm


def test_resnet_ap_downsamples_with_average_pooling():
    m = build_student("resnet_ap10", 3, 10, 32)
    convs = [c for c in m.modules() if isinstance(c, nn.Conv2d)]
    assert all(c.stride == (1, 1) for c in convs)
    assert any(isinstance(p, nn.AvgPool2d) for p in m.modules())
    assert sum(1 for mod in m.modules() if type(mod).__name__ == "BasicBlock") == 4  # 1 block x 4 stages


def test_sized_by_resolution_and_channels():
    # ConvNet depth follows the resolution (ConvNet-3 at 32 px, ConvNet-4 at 64 px)
    assert build_student("convnet", 3, 10, 32).depth == 3
    assert build_student("convnet", 3, 10, 64).depth == 4
    assert build_student("convnet6", 3, 10, 64).depth == 6
    # ImageNet-size ResNet-18 gets the 7x7 stride-2 stem; 32 px keeps the 3x3 stride-1 one
    big, small = build_student("resnet18", 3, 10, 224), build_student("resnet18", 3, 10, 32)
    assert big.stem[0].kernel_size == (7, 7) and small.stem[0].kernel_size == (3, 3)
    # ViT-tiny: about 8 x 8 patches whatever the size
    assert build_student("vit_tiny", 3, 10, 32).patch == 4 and build_student("vit_tiny", 3, 10, 64).patch == 8
    one = build_student("resnet18", 1, 5, 32, width=8)
    assert one(torch.randn(2, 1, 32, 32)).shape == (2, 5)


def test_unknown_student_is_config_error():
    with pytest.raises(ConfigError, match="unknown student"):
        build_student("resnet1000", 3, 10, 32)
