"""DIVER's configs evaluate PReDD's student pool exactly: parameter counts against hand arithmetic from
PReDD's definitions (Shuzhiyong13/PReDD networks/*.py, commit e33562a), no dropout or stochastic depth."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from pipeline.config import load_config
from tests.tuning.test_students_reference import (
    conv,
    effnet_b0_ref,
    n_params,
    norm,
    resnet_ref,
    vit_predd_ref,
)
from tuning.students import build_student
from tuning.students_effnet import MBConv

ROOT = Path(__file__).resolve().parents[2]
POOL = ["convnet5", "resnet18_cifar_in", "vit_predd", "efficientnet_b0_predd", "shufflenetv2_predd",
        "mobilenetv2_predd"]


def shufflenet_predd_ref(classes: int) -> int:
    """PReDD's ShuffleNetV2 1.0x: branch1 only at stride 2; branch2's 3x3 conv grouped in 2 (not
    depthwise)."""
    total, cin = conv(3, 24, 3) + norm(24), 24
    for cout, n in zip((116, 232, 464), (4, 8, 4)):
        mid = cout // 2
        for i in range(n):
            b2_in = cin if i == 0 else mid
            if i == 0:
                total += conv(cin, cin, 3, groups=cin) + norm(cin) + conv(cin, mid, 1) + norm(mid)
            total += conv(b2_in, mid, 1) + norm(mid) + conv(mid, mid, 3, groups=2) + norm(mid)
            total += conv(mid, mid, 1) + norm(mid)
            cin = cout
    return total + conv(cin, 1024, 1) + norm(1024) + 1024 * classes + classes


def mobilenetv2_ref(classes: int) -> int:
    settings = [(1, 16, 1), (6, 24, 2), (6, 32, 3), (6, 64, 4), (6, 96, 3), (6, 160, 3), (6, 320, 1)]
    total, cin = conv(3, 32, 3) + norm(32), 32
    for t, c, n in settings:
        for _ in range(n):
            hid = cin * t
            total += (conv(cin, hid, 1) + norm(hid)) if t != 1 else 0
            total += conv(hid, hid, 3, groups=hid) + norm(hid) + conv(hid, c, 1) + norm(c)
            cin = c
    return total + conv(cin, 1280, 1) + norm(1280) + 1280 * classes + classes


def test_reference_counts_match_the_published_ones():
    assert shufflenet_predd_ref(10) == 2_758_862  # PReDD's ShuffleNetV2 at 10 classes
    assert mobilenetv2_ref(1000) == 3_504_872  # torchvision mobilenet_v2


@pytest.mark.parametrize("size", [128, 224])
def test_predd_pool_parameter_counts(size):
    want = {"resnet18_cifar_in": resnet_ref(3, [2, 2, 2, 2], 10), "vit_predd": vit_predd_ref(size, 10),
            "efficientnet_b0_predd": effnet_b0_ref(10), "shufflenetv2_predd": shufflenet_predd_ref(10),
            "mobilenetv2_predd": mobilenetv2_ref(10)}
    with torch.device("meta"):
        for name, count in want.items():
            m = build_student(name, 3, 10, size).eval()
            assert n_params(m) == count, name
            assert m(torch.empty(2, 3, size, size)).shape == (2, 10), name
    assert want["shufflenetv2_predd"] == 2_758_862


def test_predd_nets_have_no_dropout_or_stochastic_depth_and_grouped_shuffle_convs():
    for name in ("efficientnet_b0_predd", "mobilenetv2_predd", "shufflenetv2_predd"):
        net = build_student(name, 3, 10, 64)
        assert not any(isinstance(m, nn.Dropout) and m.p > 0 for m in net.modules()), name
        assert all(m.drop == 0 for m in net.modules() if isinstance(m, MBConv)), name
        net.train()
        x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        assert torch.equal(net(x), net(x)), name  # training mode is deterministic: nothing random inside
    shuffle = build_student("shufflenetv2_predd", 3, 10, 64)
    grouped = [m for m in shuffle.modules()
               if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups == 2]
    assert len(grouped) == 16  # one per unit (4 + 8 + 4)
    ours = build_student("efficientnet_b0", 3, 10, 64)
    assert any(isinstance(m, nn.Dropout) and m.p == 0.2 for m in ours.modules())  # torchvision's keeps them


@pytest.mark.parametrize("config", ["diver_imagefruit.yaml", "diver_imagenet1k.yaml"])
def test_diver_configs_evaluate_the_predd_pool(config):
    cfg = load_config(ROOT / "configs" / config, [])
    assert cfg.eval.students == POOL and cfg.eval.preset == "diver"
    assert "convnet5" in cfg.eval.exclude_from_mean  # the proxy stays out of the headline mean
    for student in POOL:
        net = build_student(student, 3, 10, cfg.eval.image_size)
        if student == "resnet18_cifar_in":
            assert net.stem[0].kernel_size == (3, 3) and net.stem[0].stride == (1, 1)
            assert isinstance(net.stem[1], nn.GroupNorm) and net.stem[1].num_groups == 64
