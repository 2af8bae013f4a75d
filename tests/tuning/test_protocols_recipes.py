"""Presets are the peers' recipes, schedule shapes, and a few-epoch run of
each protocol on the demo digits: optimizer, LR at 0, E/2 and E, augmentations, reported number."""

import math

import numpy as np
import pytest
import torch

from pipeline.config import EvalConfig
from pipeline.core.read import load_image_arrays
from tuning import protocols
from tuning.evaluate import aggregate, results_markdown, to_tensor
from tuning.protocols import TrainSpec, resolve_preset, train_student


def _spec(preset: str, student: str = "convnet", ipc: int | None = None, classes: int | None = None,
          **explicit) -> TrainSpec:
    return TrainSpec.from_config(EvalConfig(preset=preset, **explicit), student, 0, ipc=ipc,
                                 num_classes=classes)


def test_diver_preset_is_the_predd_mtt_cross_architecture_recipe():
    for student in ("convnet", "convnet6", "resnet18", "resnet18_bn", "vit_tiny"):
        assert _spec("diver", student).lr == 0.001, student
    for student in ("mobilenetv2", "shufflenetv2", "efficientnet_b0"):
        assert _spec("diver", student).lr == 0.01, student
    s = _spec("diver", "convnet")
    assert (s.batch_size, s.epochs, s.schedule, s.warmup_fraction) == (256, 1000, "warmup_cosine", 0.5)
    assert (s.ema_decay, s.ema_every, s.ema_warmup) == (0.995, "epoch", True)
    assert s.lr_step_unit == "epoch"  # PReDD steps its LinearLR / cosine once per epoch
    assert s.augment == "dsa" and s.dsa_strategy == "color_crop_cutout_flip_scale_rotate"
    assert s.report == "final" and resolve_preset(EvalConfig(preset="diver")).repeats == 5
    assert _spec("diver", "mobilenetv2", lr=0.05).lr == 0.05  # an explicit lr wins over the per-student table


def test_edits_preset_is_the_idc_minimax_train_py():
    s = _spec("edits", ipc=10, classes=10)
    assert (s.optimizer, s.lr, s.momentum, s.weight_decay, s.batch_size) == ("sgd", 0.01, 0.9, 5e-4, 64)
    assert s.augment == "rrc+flip+jitter+lighting+cutmix" and s.mix_alpha == 1.0
    assert tuple(s.rrc_scale) == (0.5, 1.0) and s.jitter == 0.4 and s.lighting == 0.1
    assert (s.schedule, s.lr_step_unit, s.eval_count, s.report) == ("multistep", "epoch", 100, "best")
    # IDC's ipc_epoch (argument.py lines 22-47): 3000 at IPC 1 ... 300 beyond 500
    assert [_spec("edits", ipc=i, classes=10).epochs for i in (1, 2, 10, 11, 50, 51, 200, 201, 500, 501)] == (
        [3000, 2000, 2000, 1500, 1500, 1000, 1000, 500, 500, 300])
    # x2/3 floored to a multiple of 100, at exactly 100 classes only (1000 classes keep the table)
    assert [_spec("edits", ipc=i, classes=100).epochs for i in (1, 10, 50, 200, 500, 1000)] == (
        [2000, 1300, 1000, 600, 300, 200])
    assert [_spec("edits", ipc=i, classes=1000).epochs for i in (1, 10, 50)] == [3000, 2000, 1500]
    assert _spec("edits", ipc=10, classes=10, epochs=7).epochs == 7  # explicit epochs win over the IPC table


def test_rded_and_sre2l_presets():
    r = _spec("rded", ipc=10, classes=10)
    assert (r.protocol, r.optimizer, r.lr, r.weight_decay, r.epochs) == ("soft", "adamw", 0.001, 0.01, 300)
    assert (r.schedule, r.temperature, r.augment) == ("half_cosine", 20.0, "shuffle_patches+rrc+flip+cutmix")
    assert (r.report, r.best_from, r.batch_size) == ("best", 0.8, 50)
    # RDED validation/main.py: ShufflePatches(2), then RandomResizedCrop(scale=(1/2, 1)), then the flip
    assert (tuple(r.rrc_scale), r.shuffle_factor) == ((0.5, 1.0), 2)
    assert _spec("rded", ipc=10, classes=100).batch_size == 100
    assert _spec("rded", ipc=10, classes=1000).batch_size == 100
    assert _spec("rded", ipc=1, classes=10).batch_size == 10  # capped at IPC x classes
    s = _spec("sre2l", ipc=50, classes=10)
    assert (s.schedule, s.temperature, s.augment, tuple(s.rrc_scale)) == ("cosine", 20.0, "rrc+flip+cutmix",
                                                                         (0.08, 1.0))
    # SRe2L validate/train_KD.py: batch 1,024 (capped at IPC x classes), a test every 10 epochs, best over all
    assert (s.optimizer, s.lr, s.batch_size, s.report, s.best_from) == ("adamw", 0.001, 500, "best", 0.0)
    assert s.eval_every == 10 and _spec("sre2l", ipc=10, classes=1000).batch_size == 1024


def test_ema_warmup_is_predd_ema_pytorch_ramp():
    """PReDD's EMA (ema-pytorch 0.7.7, beta 0.995, power 1): copy on the first update, then keep
    min(0.995, 1 - 1/k) at the k-th; so for the first 200 updates the EMA is the mean of the snapshots."""
    net = torch.nn.Linear(1, 1, bias=False)
    ema = protocols._ema(net, TrainSpec(student="convnet", ema_decay=0.995, ema_warmup=True))
    values = [float(v) for v in range(1, 251)]
    seen = []
    for k, v in enumerate(values, start=1):
        with torch.no_grad():
            net.weight.fill_(v)
        ema.update_parameters(net)
        seen.append(float(ema.module.weight.detach()))
        if k in (1, 2, 3, 10, 200):
            assert seen[-1] == pytest.approx(sum(values[:k]) / k, rel=1e-6), k
    want = sum(values[:200]) / 200
    for v in values[200:]:  # past k = 200 the decay is capped at 0.995
        want = 0.995 * want + 0.005 * v
    assert seen[-1] == pytest.approx(want, rel=1e-5)


def test_schedule_shapes_at_0_half_and_end():
    lr_factor = protocols.lr_factor
    e = 300
    assert [lr_factor("cosine", t, e) for t in (0, e // 2, e)] == pytest.approx([1.0, 0.5, 0.0], abs=1e-12)
    assert [lr_factor("half_cosine", t, e) for t in (0, e // 2, e)] == (
        pytest.approx([1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5]))
    assert [lr_factor("multistep", t, e) for t in (0, 199, 200, 249, 250, e)] == (
        pytest.approx([1.0, 1.0, 0.2, 0.2, 0.04, 0.04]))
    assert [lr_factor("warmup_cosine", t, e) for t in (0, e // 4 - 1, e // 2, e)] == (
        pytest.approx([1 / 150, 75 / 150, 1.0, 0.0], abs=1e-12))


@pytest.fixture(scope="module")
def digits(demo_root):
    x, y, classes, _ = load_image_arrays(demo_root / "train", 16)
    pick = np.concatenate([np.flatnonzero(y == c)[:4] for c in range(len(classes))])  # IPC 4
    vx, vy, _, _ = load_image_arrays(demo_root / "val", 16)
    mean, std = np.full(3, 0.5, np.float32), np.full(3, 0.25, np.float32)
    return (to_tensor(x[pick], mean, std), torch.from_numpy(y[pick]), to_tensor(vx[:100], mean, std),
            torch.from_numpy(vy[:100]), len(classes), (mean, std))


EXPECTED_OPS = {"diver": {"dsa"}, "edits": {"random_resized_crop", "random_flip", "color_jitter",
                                            "pca_lighting"},
                "rded": {"shuffle_patches", "random_resized_crop", "random_flip"},
                "sre2l": {"random_resized_crop", "random_flip"}}


@pytest.mark.parametrize("preset", ["diver", "edits", "rded", "sre2l"])
def test_each_protocol_trains_on_the_demo_digits(preset, digits, monkeypatch):
    x, y, vx, vy, nc, norm = digits
    epochs = 10
    spec = TrainSpec.from_config(EvalConfig(preset=preset, epochs=epochs,
                                            student_kwargs={"convnet": {"width": 8}}),
                                 "convnet", 0, ipc=4, num_classes=nc)
    called: set[str] = set()
    order: list[str] = []
    for name in ("dsa", "random_resized_crop", "random_flip", "color_jitter", "pca_lighting",
                 "shuffle_patches"):
        fn = getattr(protocols, name)
        monkeypatch.setattr(protocols, name,
                            lambda *a, _f=fn, _n=name, **k: (called.add(_n), order.append(_n),
                                                             _f(*a, **k))[2])
    mixed: list[str] = []
    mix = protocols.mix_batch
    monkeypatch.setattr(protocols, "mix_batch", lambda x_, kind, *a: (mixed.append(kind),
                                                                      mix(x_, kind, *a))[1])
    teacher = None
    if spec.protocol == "soft":
        from tuning.students import build_student

        teacher = build_student("convnet", 3, nc, 16, width=8)
    res = train_student(spec, x, y, vx, vy, nc, teacher=teacher, norm=norm)
    assert called == EXPECTED_OPS[preset]
    if preset == "rded":  # RDED validation/main.py: ShufflePatches before RandomResizedCrop, then the flip
        assert order[:3] == ["shuffle_patches", "random_resized_crop", "random_flip"]
    assert set(mixed) == ({"cutmix"} if preset != "diver" else set())
    assert len(mixed) == (0 if preset == "diver" else epochs * math.ceil(len(y) / spec.batch_size))
    lr = res["lr_per_epoch"]  # at the start of each epoch, then after the last
    base = spec.lr
    assert res["optimizer"] == ("AdamW" if preset in ("rded", "sre2l") else "SGD")
    want = {"diver": [1 / 5, 1.0, 0.0], "edits": [1.0, 1.0, 0.04],
            "rded": [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5], "sre2l": [1.0, 0.5, 0.0]}[preset]
    assert [lr[0] / base, lr[epochs // 2] / base, lr[epochs] / base] == pytest.approx(want, abs=1e-9)
    tested = [h["epoch"] for h in res["history"]]
    if preset == "diver":
        assert tested == [epochs] and res["reported"] == res["final"] and res["report"] == "final"
    elif preset == "edits":  # every epochs // 100 (= 1 here) epochs; the run's best
        assert tested == list(range(1, epochs + 1))
        assert res["reported"] == res["best"] == max(h["top1"] for h in res["history"])
        assert res["report"] == "best (selected on the test split)"
    else:  # RDED: every 10th epoch of the last 20%; SRe2L: every 10th epoch; both and the last: epoch 10 here
        assert tested == [10] and res["best"] == max(h["top1"] for h in res["history"])
        assert res["reported"] == res["best"] and "test split" in res["report"]
        assert ("last 20%" in res["report"]) == (preset == "rded")
    assert 0.0 <= res["final"] <= 100.0 and math.isfinite(res["train_loss"])
    cfg = resolve_preset(EvalConfig(preset=preset, students=["convnet"], repeats=1))
    row = aggregate([{**res, "set": "s"}], {"s": {"method": "m", "ipc": 4, "dir": "d", "n_images": len(y)}},
                    cfg, "digits")[0]
    assert row["top1_mean"] == round(res["reported"], 2) and row["final_mean"] == round(res["final"], 2)
    assert row["best_mean"] == round(res["best"], 2) and row["reported"] == res["report"]
    assert row["epochs"] == epochs
    assert res["report"] in results_markdown([row])
