"""Protocols: soft-label KL vs a hand computation, CutMix/mixup weights, presets, seeded training."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import EvalConfig
from pipeline.errors import ConfigError
from tuning.protocols import PRESETS, TrainSpec, mix_batch, resolve_preset, soft_label_loss, train_student


def test_soft_label_loss_matches_hand_computed_kl():
    s = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    t = torch.tensor([[3.0, 2.0, 1.0], [1.0, 0.0, -1.0]])
    temp = 2.0

    def softmax(v):
        e = [math.exp(x / temp) for x in v]
        return [x / sum(e) for x in e]

    kl = 0.0
    for sv, tv in zip(s.tolist(), t.tolist()):
        ps, pt = softmax(sv), softmax(tv)
        kl += sum(q * (math.log(q) - math.log(p)) for p, q in zip(ps, pt))
    expected = kl / 2  # batch mean, no T^2 (SRe2L / RDED's KLDivLoss)
    assert soft_label_loss(s, t, temp).item() == pytest.approx(expected, rel=1e-6)
    assert soft_label_loss(s, t, temp, t_squared=True).item() == pytest.approx(expected * temp ** 2, rel=1e-6)
    # identical logits: zero loss
    assert soft_label_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-7)


def test_cutmix_lambda_is_the_kept_area():
    x = torch.zeros(4, 1, 10, 10)
    x[:2] = 1.0  # images 0,1 are ones, 2,3 zeros
    rng, gen = np.random.default_rng(3), torch.Generator().manual_seed(3)
    out, perm, lam = mix_batch(x, "cutmix", 1.0, rng, gen)
    checked = 0
    for i in range(4):
        kept = (out[i] == x[i]).float().mean().item()
        if x[i].sum() != x[perm[i]].sum():  # partner differs: pasted area is visible
            assert kept == pytest.approx(lam)
            checked += 1
    assert checked > 0 and 0.0 < lam < 1.0
    mixed, perm2, lam2 = mix_batch(x, "mixup", 1.0, np.random.default_rng(0),
                                   torch.Generator().manual_seed(0))
    assert torch.allclose(mixed, lam2 * x + (1 - lam2) * x[perm2])


def test_presets_fill_and_explicit_fields_win():
    cfg = resolve_preset(EvalConfig(preset="diver", epochs=7))
    assert cfg.epochs == 7  # explicit
    assert cfg.ema_decay == PRESETS["diver"]["ema_decay"] and cfg.repeats == 5 and cfg.augment == "dsa"
    assert resolve_preset(EvalConfig(preset="mtt")).schedule == "step"
    assert resolve_preset(EvalConfig(preset="rded")).protocol == "soft"
    with pytest.raises(ConfigError, match="unknown eval.preset"):
        resolve_preset(EvalConfig(preset="nope"))


def _toy(n=40, classes=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    x[:, 0] += (y.float() - 1.5).view(-1, 1, 1)  # class signal in the mean of channel 0
    return x, y


def test_training_is_seeded_and_learns_a_toy_task():
    x, y = _toy()
    vx, vy = _toy(seed=1)
    spec = TrainSpec(student="convnet3", seed=5, epochs=8, batch_size=16, lr=0.05, augment="none",
                     student_kwargs={"convnet3": {"width": 8, "depth": 2}})
    a = train_student(spec, x, y, vx, vy, 4)
    b = train_student(spec, x, y, vx, vy, 4)
    assert a["final"] == b["final"] and a["train_loss"] == b["train_loss"]
    assert a["final"] > 60.0  # chance is 25%
    frozen = train_student(TrainSpec(**{**spec.to_dict(), "lr": 0.0}), x, y, vx, vy, 4)
    assert frozen["final"] < a["final"]


def test_augmented_ema_and_soft_paths_run():
    x, y = _toy(n=16)
    base = {"student": "convnet3", "epochs": 2, "batch_size": 8,
            "student_kwargs": {"convnet3": {"width": 8, "depth": 2}}, "eval_every": 1}
    r = train_student(TrainSpec(**base, augment="dsa+cutmix", ema_decay=0.9), x, y, x, y, 4)
    assert len(r["history"]) == 2 and math.isfinite(r["train_loss"])
    assert r["best"] == max(h["top1"] for h in r["history"])
    with pytest.raises(ConfigError, match="teacher"):
        train_student(TrainSpec(**base, protocol="soft"), x, y, x, y, 4)
    from tuning.students import build_student

    teacher = build_student("convnet3", 3, 4, 16, width=8, depth=2)
    soft = train_student(TrainSpec(**base, protocol="soft", augment="mixup"), x, y, x, y, 4, teacher=teacher)
    assert math.isfinite(soft["train_loss"]) and soft["train_loss"] >= 0
