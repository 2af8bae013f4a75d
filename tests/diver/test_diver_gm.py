"""Gradient matching (DC/DSA), the built-in stage-1 distiller that overfits its ConvNet: small and cheap."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from pipeline.config import DMConfig, config_from_dict
from pipeline.core.pixels import normalize
from pipeline.diver.gm import DC_LOOPS, distill_gm, gm_loops, layer_distance, match_distance, run_gm
from pipeline.diver.inputs import load_stage1
from pipeline.diver.stage1 import stage1_distiller
from pipeline.errors import ConfigError
from tuning.convnet import ConvNet


def _tiny_real(classes: int = 3, per_class: int = 6, size: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
    """Per class a distinct mean colour plus noise, uint8 ``[N, 3, size, size]``."""
    gen = torch.Generator().manual_seed(0)
    xs, ys = [], []
    for c in range(classes):
        base = torch.zeros(3, 1, 1)
        base[c % 3] = 200.0
        noise = torch.rand((per_class, 3, size, size), generator=gen) * 50
        xs.append((base + noise).clamp(0, 255).to(torch.uint8))
        ys += [c] * per_class
    return torch.cat(xs), torch.tensor(ys)


def test_layer_distance_is_dc_per_row_cosine():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # row 0 parallel (0), row 1 orthogonal (1)
    assert float(layer_distance(a, b)) == pytest.approx(1.0, abs=1e-5)
    assert float(layer_distance(torch.ones(4), -torch.ones(4))) == 0.0  # biases / norms add nothing
    conv = torch.randn(5, 3, 3, 3)
    assert float(layer_distance(conv, conv)) == pytest.approx(0.0, abs=1e-5)
    assert float(layer_distance(conv, -conv)) == pytest.approx(10.0, abs=1e-4)  # 5 rows x (1 - (-1))
    assert float(match_distance([a, conv], [b, -conv])) == pytest.approx(11.0, abs=1e-4)


def test_gm_loops_follow_dc_get_loops_unless_set():
    assert DC_LOOPS[1] == (1, 1) and DC_LOOPS[10] == (10, 50) and DC_LOOPS[50] == (50, 10)
    assert gm_loops(10, DMConfig(method="gm")) == (10, 50)
    assert gm_loops(10, DMConfig(method="gm", outer_loop=2, inner_loop=3)) == (2, 3)
    with pytest.raises(ConfigError, match="outer_loop"):
        gm_loops(7, DMConfig(method="gm"))
    with pytest.raises(ValueError, match="method is dm"):
        DMConfig(outer_loop=2)


def _match_objective(syn01: torch.Tensor, real_u8: torch.Tensor, real_y: torch.Tensor, ipc: int,
                     mean: list[float], std: list[float], seeds=(201, 202, 203)) -> float:
    """The matching distance under fixed held-out random ConvNets (no augmentation), summed over classes."""
    syn, real = normalize(syn01, mean, std), normalize(real_u8.float() / 255, mean, std)
    total = 0.0
    for s in seeds:
        torch.manual_seed(s)
        net = ConvNet(3, 3, width=8, depth=2, im_size=8)
        params = list(net.parameters())
        for c in range(3):
            r, y_r = real[real_y == c], real_y[real_y == c]
            g_r = torch.autograd.grad(F.cross_entropy(net(r), y_r), params)
            x_s = syn[c * ipc:(c + 1) * ipc]
            g_s = torch.autograd.grad(F.cross_entropy(net(x_s), torch.full((ipc,), c)), params)
            total += float(match_distance(g_r, g_s))
    return total


def test_gm_shapes_labels_loss_decreases_and_seeds_reproduce():
    x, y = _tiny_real()
    mean, std = [0.5] * 3, [0.25] * 3
    cfg = DMConfig(method="gm", ipc=2, iterations=12, batch_real=6, net_width=8, net_depth=2, init="noise",
                   dsa=False, seed=4, outer_loop=2, inner_loop=1, batch_train=4)
    quiet = lambda _m: None
    start, _, _ = distill_gm(x, y, 3, 2, cfg.model_copy(update={"iterations": 1, "lr_img": 0.0}), mean, std,
                             log=quiet)
    syn, syn_y, stats = distill_gm(x, y, 3, 2, cfg, mean, std, log=quiet)
    assert syn.shape == (6, 3, 8, 8) and syn_y.tolist() == [0, 0, 1, 1, 2, 2]
    assert float(syn.min()) >= 0 and float(syn.max()) <= 1
    assert (stats["outer_loop"], stats["inner_loop"]) == (2, 1)
    before, after = _match_objective(start, x, y, 2, mean, std), _match_objective(syn, x, y, 2, mean, std)
    assert after < 0.9 * before, (before, after)
    again, _, _ = distill_gm(x, y, 3, 2, cfg, mean, std, log=quiet)
    assert torch.equal(syn, again)  # reproducible under its seed
    other, _, _ = distill_gm(x, y, 3, 2, cfg.model_copy(update={"seed": 5}), mean, std, log=quiet)
    assert not torch.equal(syn, other)
    with_dsa, _, _ = distill_gm(x, y, 3, 2, cfg.model_copy(update={"dsa": True, "iterations": 2}), mean, std,
                                log=quiet)
    assert with_dsa.shape == syn.shape


def test_run_gm_writes_a_gm_set_and_diver_dispatches_on_method(demo_root, tmp_path):
    cfg = DMConfig(method="gm", ipc=1, iterations=2, batch_real=4, net_width=8, seed=1)
    info = run_gm(demo_root / "train", tmp_path / "gm", cfg, max_per_class=6, log=lambda _m: None)
    assert info["images"] == 10 and (info["outer_loop"], info["inner_loop"]) == (1, 1)
    manifest = json.loads((tmp_path / "gm" / "manifest.json").read_text())
    assert manifest["method"] == "gm" and len(manifest["images"]) == 10
    assert len(load_stage1(tmp_path / "gm")) == 10 and (tmp_path / "gm" / "gm_done.json").is_file()
    assert stage1_distiller("gm") is run_gm and stage1_distiller("dm").__name__ == "run_dm"
    raw = {"method": "diver", "data": {"root": "x"}, "diver": {"stage1": {"method": "gm", "ipc": 1}}}
    assert config_from_dict(raw).diver.stage1.method == "gm"
