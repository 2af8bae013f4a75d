"""Students against their reference definitions: parameter counts from the published layer tables
(counted here by hand, anchored on torchvision's published totals) and output shapes at 32-224 px."""

import math

import pytest
import torch
from torch import nn

from pipeline.errors import ConfigError
from tuning.students import LEGACY_STUDENTS, STUDENTS, build_student

SIZES = [32, 64, 128, 224]
K = 10


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ----------------------------------------------------------------------------- reference arithmetic
def conv(cin: int, cout: int, k: int, bias: bool = False, groups: int = 1) -> int:
    return cin // groups * cout * k * k + (cout if bias else 0)


def norm(c: int) -> int:  # BatchNorm2d and affine GroupNorm(C, C): weight + bias
    return 2 * c


def basic_block(cin: int, cout: int) -> int:
    down = conv(cin, cout, 1) + norm(cout) if cin != cout else 0
    return conv(cin, cout, 3) + norm(cout) + conv(cout, cout, 3) + norm(cout) + down


def resnet_ref(stem_k: int, blocks: list[int], classes: int, width: int = 64) -> int:
    """torchvision / PReDD / IDC ResNet with basic blocks: stem conv + norm, 4 stages, fc."""
    total, cin = conv(3, width, stem_k) + norm(width), width
    for i, n in enumerate(blocks):
        cout = width * 2 ** i
        for _ in range(n):
            total, cin = total + basic_block(cin, cout), cout
    return total + cin * classes + classes


def effnet_b0_ref(classes: int) -> int:
    """EfficientNet-B0 from the paper's stage table (Tan & Le 2019, Table 1) with torchvision's SE width."""
    stages = [(1, 3, 16, 1), (6, 3, 24, 2), (6, 5, 40, 2), (6, 3, 80, 3), (6, 5, 112, 3), (6, 5, 192, 4),
              (6, 3, 320, 1)]
    total, cin = conv(3, 32, 3) + norm(32), 32
    for e, k, cout, n in stages:
        for _ in range(n):
            hid, sq = cin * e, max(1, cin // 4)
            total += (conv(cin, hid, 1) + norm(hid)) if e != 1 else 0
            total += conv(hid, hid, k, groups=hid) + norm(hid)
            total += conv(hid, sq, 1, bias=True) + conv(sq, hid, 1, bias=True)
            total += conv(hid, cout, 1) + norm(cout)
            cin = cout
    return total + conv(cin, 1280, 1) + norm(1280) + 1280 * classes + classes


def vit_predd_ref(size: int, classes: int, patch: int = 16, dim: int = 512, depth: int = 10, heads: int = 8,
                  dim_head: int = 64, mlp: int = 512) -> int:
    """PReDD's vit-pytorch ViT (LayerNorms commented out): patch linear, cls + pos, blocks, head."""
    inner, tokens = heads * dim_head, (size // patch) ** 2
    block = dim * 3 * inner + (inner * dim + dim) + (dim * mlp + mlp) + (mlp * dim + dim)
    return ((3 * patch * patch * dim + dim) + (tokens + 1) * dim + dim + depth * block + dim * classes
            + classes)


def test_reference_arithmetic_matches_published_totals():
    assert resnet_ref(7, [2, 2, 2, 2], 1000) == 11_689_512  # torchvision resnet18
    assert effnet_b0_ref(1000) == 5_288_548  # torchvision efficientnet_b0
    assert resnet_ref(3, [2, 2, 2, 2], 10) == 11_173_962  # the CIFAR ResNet-18 (kuangliu / PReDD), 10 classes


def idc_ap10_ref(size: int, classes: int) -> int:
    return resnet_ref(7 if size > 128 else 3, [1, 1, 1, 1], classes)


REFERENCE = {
    "resnet18_cifar_bn": lambda s: resnet_ref(3, [2, 2, 2, 2], K),
    "resnet18_cifar_in": lambda s: resnet_ref(3, [2, 2, 2, 2], K),
    "resnet18_imagenet_bn": lambda s: resnet_ref(7, [2, 2, 2, 2], K),
    "resnet18_imagenet_in": lambda s: resnet_ref(7, [2, 2, 2, 2], K),
    "resnet_ap10": lambda s: idc_ap10_ref(s, K),
    "efficientnet_b0": lambda s: effnet_b0_ref(K),
    "vit_predd": lambda s: vit_predd_ref(s, K),
}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", list(REFERENCE))
def test_params_and_output_shape_equal_reference(name, size):
    with torch.device("meta"):  # shapes and counts without the compute (the 224 px nets are big)
        m = build_student(name, 3, K, size).eval()
        assert n_params(m) == REFERENCE[name](size)
        assert m(torch.empty(2, 3, size, size)).shape == (2, K)


def _final_map(m: nn.Module, size: int) -> int:
    with torch.device("meta"):
        return m.to("meta").eval().layers(m.stem(torch.empty(1, 3, size, size))).shape[-1]


@pytest.mark.parametrize("size", SIZES)
def test_resnet18_forms_do_not_depend_on_resolution(size):
    with torch.device("meta"):
        cifar, imnet = build_student("resnet18_cifar_in", 3, K,
                                     size), build_student("resnet18_imagenet_bn", 3, K, size)
    assert cifar.stem[0].kernel_size == (3, 3) and cifar.stem[0].stride == (1, 1)
    assert not any(isinstance(x, nn.MaxPool2d) for x in cifar.modules())
    assert imnet.stem[0].kernel_size == (7, 7) and imnet.stem[0].stride == (2, 2)
    assert isinstance(imnet.stem[3], nn.MaxPool2d)
    assert _final_map(cifar, size) == size // 8 and _final_map(imnet, size) == math.ceil(size / 32)
    assert not any(isinstance(x, nn.BatchNorm2d) for x in cifar.modules())
    assert any(isinstance(x, nn.BatchNorm2d) for x in imnet.modules())


@pytest.mark.parametrize("size,stem_pool,stem_k,final", [(32, None, 3, 4), (64, None, 3, 8), (128, 2, 3, 8),
                                                          (224, 4, 7, 7)])
def test_resnet_ap10_stem_as_idc(size, stem_pool, stem_k, final):
    with torch.device("meta"):
        m = build_student("resnet_ap10", 3, K, size)
    pools = [x for x in m.stem if isinstance(x, nn.AvgPool2d)]
    assert [p.kernel_size for p in pools] == ([] if stem_pool is None else [stem_pool])
    assert m.stem[0].kernel_size == (stem_k, stem_k) and m.stem[0].stride == (1, 1)
    assert all(c.stride == (1, 1) for c in m.modules() if isinstance(c, nn.Conv2d))
    assert _final_map(m, size) == final  # IDC: AvgPool2d(7) ends the 224 px net on a 7 x 7 map


def test_resnet_ap10_uses_idc_init():
    torch.manual_seed(0)
    m = build_student("resnet_ap10", 3, K, 32)
    w = m.layers[3].conv2.weight  # 512 x 512 x 3 x 3
    assert abs(w.std().item() / math.sqrt(2.0 / (9 * 512)) - 1) < 0.02
    gns = [x for x in m.modules() if isinstance(x, nn.GroupNorm)]
    assert gns and all(g.num_groups == g.num_channels and (g.weight == 1).all()
                       and (g.bias == 0).all() for g in gns)


def test_vit_predd_has_no_layernorm_unless_asked():
    m = build_student("vit_predd", 3, K, 64)
    assert m.patch == 16 and len(m.blocks) == 10 and not any(isinstance(x, nn.LayerNorm) for x in m.modules())
    assert m.blocks[0][1].to_qkv.bias is None and m.blocks[0][1].heads == 8
    normed = build_student("vit_predd", 3, K, 64, layer_norm=True)
    assert sum(isinstance(x, nn.LayerNorm) for x in normed.modules()) == 21  # 2 per block + the head's
    with pytest.raises(ValueError, match="patch"):
        build_student("vit_predd", 3, K, 40)


def test_legacy_names_keep_their_old_meaning():
    assert set(LEGACY_STUDENTS) <= set(STUDENTS)
    at64 = build_student("resnet18", 3, K, 64)  # the adaptive stem: 3x3 stride 2 at 64 px
    assert at64.stem[0].kernel_size == (3, 3) and at64.stem[0].stride == (2, 2)
    assert build_student("resnet18_in", 3, K, 224).stem[0].kernel_size == (7, 7)
    with pytest.raises(ConfigError, match="resnet18_cifar_bn"):  # the error lists the explicit names
        build_student("resnet18_cifar", 3, K, 32)


def test_efficientnet_b0_trains():
    torch.manual_seed(0)
    m = build_student("efficientnet_b0", 3, 4, 32)
    loss = nn.functional.cross_entropy(m(torch.randn(2, 3, 32, 32)), torch.tensor([0, 3]))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())
