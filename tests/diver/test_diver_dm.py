"""DM (the built-in stage-1 distiller), its ConvNet and its differentiable siamese augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.config import DMConfig
from pipeline.core.pixels import normalize
from pipeline.diver.dm import distill_dm, load_real, real_stats, run_dm
from pipeline.diver.inputs import load_stage1
from tuning.augment import dsa
from tuning.convnet import ConvNet, depth_for_resolution


def test_convnet_shapes_and_depth_by_resolution():
    assert [depth_for_resolution(s) for s in (32, 64, 128, 224, 256)] == [3, 4, 5, 6, 6]
    net = ConvNet(3, 10, width=16, depth=None, im_size=64)
    x = torch.randn(2, 3, 64, 64)
    assert net.depth == 4 and net.embed(x).shape == (2, 16 * 4 * 4) and net(x).shape == (2, 10)
    assert ConvNet(1, 10, width=8, depth=3,
                   im_size=28).embed(torch.randn(1, 1, 28, 28)).shape == (1, 8 * 4 * 4)
    with pytest.raises(ValueError, match="too small"):
        ConvNet(3, 10, depth=6, im_size=32)


def test_dsa_is_siamese_seeded_and_differentiable():
    x = torch.rand(6, 3, 16, 16, requires_grad=True)
    for strategy in ("color", "crop", "cutout", "flip", "scale", "rotate"):
        a = dsa(x, seed=11, strategy=strategy)
        assert torch.equal(a[:2], dsa(x[:2], seed=11, strategy=strategy))  # same seed, other batch size
        assert torch.equal(a, dsa(x, seed=11, strategy=strategy))
    # flip with a seed whose draw flips: exactly the mirrored images
    flips = [torch.equal(dsa(x, s, "flip"), x.flip(3)) for s in range(8)]
    assert any(flips) and not all(flips)
    y = dsa(x, seed=3)
    y.sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    per_image = dsa(x, seed=5, strategy="rotate", siamese=False)
    assert not torch.allclose(per_image[0], dsa(x[1:2], seed=5, strategy="rotate", siamese=False)[0])


def _dm_objective(syn01, real_u8, real_y, ipc, mean, std, seeds=(101, 102, 103, 104)):
    """Mean-embedding distance under fixed held-out random ConvNets (no augmentation)."""
    total = 0.0
    syn = normalize(syn01, mean, std)
    real = normalize(real_u8.float() / 255, mean, std)
    for s in seeds:
        torch.manual_seed(s)
        net = ConvNet(3, 10, width=16, depth=3, im_size=32).eval()
        with torch.no_grad():
            for c in range(10):
                mr = net.embed(real[real_y == c]).mean(0)
                ms = net.embed(syn[c * ipc:(c + 1) * ipc]).mean(0)
                total += float(((mr - ms) ** 2).sum())
    return total


def test_dm_moves_synthetic_embeddings_toward_the_real_class(demo_root):
    images, labels, classes = load_real(demo_root / "train", max_per_class=40)
    assert images.shape[1:] == (3, 32, 32) and classes == [str(i) for i in range(10)]
    mean, std = real_stats(images)
    cfg = DMConfig(ipc=2, iterations=40, batch_real=32, net_width=16, init="noise", lr_img=1.0, seed=0)
    start, _, _ = distill_dm(images, labels, 10, 2, cfg.model_copy(update={"iterations": 1, "lr_img": 0.0}),
                             mean, std, log=lambda _m: None)
    syn, syn_y, _ = distill_dm(images, labels, 10, 2, cfg, mean, std, log=lambda _m: None)
    assert syn.shape == (20, 3, 32, 32) and syn_y.tolist() == [c for c in range(10) for _ in range(2)]
    assert float(syn.min()) >= 0 and float(syn.max()) <= 1
    before = _dm_objective(start, images, labels, 2, mean, std)
    after = _dm_objective(syn, images, labels, 2, mean, std)
    assert after < 0.5 * before, (before, after)
    again, _, _ = distill_dm(images, labels, 10, 2, cfg, mean, std, log=lambda _m: None)
    assert torch.equal(syn, again)  # deterministic under its seed


def test_run_dm_writes_pt_imagefolder_manifest_and_resumes(demo_root, tmp_path):
    cfg = DMConfig(ipc=1, iterations=3, batch_real=8, net_width=8, seed=1)
    info = run_dm(demo_root / "train", tmp_path / "dm", cfg, max_per_class=10, log=lambda _m: None)
    assert info["images"] == 10
    manifest = json.loads((tmp_path / "dm" / "manifest.json").read_text())
    assert manifest["method"] == "dm" and len(manifest["images"]) == 10
    assert sorted(p.name for p in (tmp_path / "dm").iterdir() if p.is_dir()) == [str(i) for i in range(10)]
    s = load_stage1(tmp_path / "dm")  # images.pt, de-normalised with the stats it carries
    png = load_stage1(tmp_path / "dm", fmt="imagefolder")
    assert s.fmt == "pt" and len(s) == 10
    np.testing.assert_allclose(s.images.numpy(), png.images.numpy(), atol=1 / 255 + 1e-6)
    mtime = (tmp_path / "dm" / "images.pt").stat().st_mtime_ns
    run_dm(demo_root / "train", tmp_path / "dm", cfg, max_per_class=10, log=lambda _m: None)
    assert (tmp_path / "dm" / "images.pt").stat().st_mtime_ns == mtime  # resumed, not recomputed


def test_cli_distill_dm(tmp_path):
    from pipeline.cli import main
    from pipeline.core.write import atomic_save_image

    rng = np.random.default_rng(0)
    for c in ("a", "b", "c"):
        for i in range(4):
            atomic_save_image(tmp_path / "real" / c / f"{i}.png",
                              rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    rc = main(["distill", "dm", "--data", str(tmp_path / "real"), "--ipc", "2", "--out",
               str(tmp_path / "out"), "--iterations", "2"])
    assert rc == 0
    s = load_stage1(tmp_path / "out")
    assert s.images.shape == (6, 3, 16, 16) and s.classes == ["a", "b", "c"]
