"""Evaluation recipes at ImageNet scale: EDITS's >100-class recipe and val transform, RDED/SRe2L's batch,
lr, decay, test cadence and pretrained teacher (torchvision / timm layouts), MTT's learned lr and ZCA, and
one normalisation per dataset for every set."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn import functional as F

from pipeline.config import EvalConfig
from pipeline.core.read import load_image_arrays
from pipeline.errors import ConfigError, DataError
from tuning import evaluate, protocols
from tuning.eval_inputs import IMAGENET_MEAN, apply_zca, fit_zca
from tuning.protocols import TrainSpec, resolve_preset
from tuning.students import build_student


def _spec(preset: str, student: str = "convnet", ipc: int | None = None, classes: int | None = None,
          **explicit) -> TrainSpec:
    return TrainSpec.from_config(EvalConfig(preset=preset, **explicit), student, 0, ipc=ipc,
                                 num_classes=classes)


# ----------------------------------------------------------------------------- EDITS (IDC / Minimax)
def test_edits_switches_to_lr_01_wd_1e4_batch_128_above_100_classes():
    few, hundred, many = (_spec("edits", ipc=10, classes=n) for n in (10, 100, 1000))
    assert (few.lr, few.weight_decay, few.batch_size) == (0.01, 5e-4, 64)
    assert (hundred.lr, hundred.weight_decay, hundred.batch_size) == (0.01, 5e-4, 64)  # nclass > 100 only
    assert (many.lr, many.weight_decay, many.batch_size) == (0.1, 1e-4, 128)
    assert _spec("edits", ipc=10, classes=1000, batch_size=256).batch_size == 256  # max(128, batch)
    explicit = _spec("edits", ipc=10, classes=1000, lr=0.05)  # an explicit lr wins; the decay still switches
    assert (explicit.lr, explicit.weight_decay, explicit.batch_size) == (0.05, 1e-4, 128)


def test_edits_val_images_are_resize_size_then_center_crop(tmp_path):
    cfg = resolve_preset(EvalConfig(preset="edits"))
    assert cfg.val_resize == "size" and evaluate.val_resize_for(224, cfg.val_resize) is None
    assert evaluate.val_resize_for(224, None) == 256  # other presets keep Resize(256) + CenterCrop(224)
    rng = np.random.default_rng(0)
    (tmp_path / "c0").mkdir()
    Image.fromarray(rng.integers(0, 256, (300, 400, 3), dtype=np.uint8)).save(tmp_path / "c0" / "a.png")
    got = load_image_arrays(tmp_path, 224, resize=evaluate.val_resize_for(224, cfg.val_resize)).images[0]
    # short side 224
    im = Image.open(tmp_path / "c0" / "a.png").convert("RGB").resize((299, 224), Image.BICUBIC)
    want = np.asarray(im.crop(((299 - 224) // 2, 0, (299 - 224) // 2 + 224, 224)))
    assert np.array_equal(got, want)


def test_edits_imagewoof_config_trains_and_tests_edits_students_at_224():
    from pipeline.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(root / "configs" / "edits_imagewoof.yaml", [])
    ev = resolve_preset(cfg.eval)
    assert ev.image_size == 224 and ev.students == ["convnet6", "resnet_ap10"]
    nets = [build_student(s, 3, 10, 224) for s in ev.students]
    assert nets[0].depth == 6 and nets[1].stem_size == "large"
    assert all(isinstance(m, torch.nn.GroupNorm) and m.num_groups == m.num_channels
               for net in nets for m in net.modules() if isinstance(m, (torch.nn.GroupNorm,
                                                                        torch.nn.BatchNorm2d)))
    text = (root / "configs" / "edits_imagewoof.yaml").read_text()
    assert "ConvNet-6" in text and "ResNet-AP-10" in text and "mixup" not in text


# ----------------------------------------------------------------------------- RDED / SRe2L
@pytest.mark.parametrize(("ipc", "classes", "batch"), [(1, 10, 10), (10, 10, 50), (50, 10, 100), (1, 100, 20),
                                                        (10, 100, 100), (50, 1000, 200), (10, 1000, 100),
                                                        (1, 5, 5)])
def test_rded_batch_follows_ipc_and_class_count(ipc, classes, batch):
    """LINs-lab/RDED argument.py lines 234-256: 10 / 50 / 100 by IPC, x2 at 100 or 1000 classes, <= IPC x
    classes."""
    assert _spec("rded", ipc=ipc, classes=classes).batch_size == batch


def test_rded_adamw_lr_per_student():
    want = {"convnet6": 0.001, "resnet18_imagenet_bn": 0.001, "resnet18_cifar_in": 0.001,
            "efficientnet_b0": 0.002, "mobilenetv2": 0.0025, "vit_tiny": 0.0001}
    assert {s: _spec("rded", s, ipc=10, classes=10).lr for s in want} == want
    assert _spec("rded", "mobilenetv2", ipc=10, classes=10, lr=0.01).lr == 0.01


def test_weight_decay_only_on_weights_with_two_or_more_dims():
    net = build_student("vit_predd", 3, 10, 32)
    decay, rest = protocols.param_groups(net, "weights_2d", 0.01)
    names = {id(p): n for n, p in net.named_parameters()}
    assert decay["weight_decay"] == 0.01 and rest["weight_decay"] == 0.0
    assert all(p.ndim >= 2 and "weight" in names[id(p)] for p in decay["params"])
    skipped = {names[id(p)] for p in rest["params"]}
    assert {"cls", "pos"} <= skipped and any(n.endswith("bias") for n in skipped)
    assert len(decay["params"]) + len(rest["params"]) == len(list(net.parameters()))
    assert _spec("rded", ipc=10, classes=10).decay_params == "weights_2d"
    assert _spec("sre2l", ipc=10, classes=10).decay_params == "weights_2d"
    opt = protocols._optimizer(net, _spec("rded", "vit_tiny", ipc=10, classes=10))
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]


def test_rded_tests_every_10th_epoch_of_the_last_20_percent_and_kl_has_no_t2():
    spec = _spec("rded", ipc=10, classes=10)
    assert [e for e in range(1, 301) if protocols.tested_after(spec, e)] == list(range(250, 301, 10))
    sre2l = _spec("sre2l", ipc=10, classes=10)
    assert [e for e in range(1, 301) if protocols.tested_after(sre2l, e)] == list(range(10, 301, 10))
    assert spec.kl_t_squared is False and sre2l.kl_t_squared is False
    s, t = torch.tensor([[0.0, 1.0, 2.0]]), torch.tensor([[2.0, 1.0, 0.0]])
    kl = F.kl_div(F.log_softmax(s / 20, 1), F.softmax(t / 20, 1), reduction="batchmean")
    assert protocols.soft_label_loss(s, t, 20.0, spec.kl_t_squared).item() == pytest.approx(kl.item())


# ----------------------------------------------------------------------------- pretrained teacher
def _library_resnet18(classes: int, seed: int = 0, counters: bool = True) -> dict[str, torch.Tensor]:
    """A ResNet-18 state dict with torchvision's / timm's key names, random values."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}

    def bn(prefix: str, c: int) -> None:
        sd[f"{prefix}.weight"] = 1 + 0.1 * torch.randn(c, generator=g)
        sd[f"{prefix}.bias"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{prefix}.running_mean"] = 0.1 * torch.randn(c, generator=g)
        sd[f"{prefix}.running_var"] = 1 + 0.1 * torch.rand(c, generator=g)
        if counters:
            sd[f"{prefix}.num_batches_tracked"] = torch.tensor(100)

    def conv(name: str, cout: int, cin: int, k: int) -> None:
        sd[name] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))

    conv("conv1.weight", 64, 3, 7)
    bn("bn1", 64)
    cin = 64
    for stage, cout in enumerate((64, 128, 256, 512), start=1):
        for b in range(2):
            p = f"layer{stage}.{b}"
            conv(f"{p}.conv1.weight", cout, cin if b == 0 else cout, 3)
            bn(f"{p}.bn1", cout)
            conv(f"{p}.conv2.weight", cout, cout, 3)
            bn(f"{p}.bn2", cout)
            if b == 0 and stage > 1:
                conv(f"{p}.downsample.0.weight", cout, cin, 1)
                bn(f"{p}.downsample.1", cout)
        cin = cout
    sd["fc.weight"] = 0.05 * torch.randn(classes, 512, generator=g)
    sd["fc.bias"] = 0.05 * torch.randn(classes, generator=g)
    return sd


def _reference_logits(sd: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """torchvision's ResNet-18 forward (eval mode) written with functional ops on the raw state dict."""
    def bn(h, p):
        return F.batch_norm(h, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"],
                            sd[f"{p}.bias"], False, 0.0, 1e-5)

    h = F.relu(bn(F.conv2d(x, sd["conv1.weight"], stride=2, padding=3), "bn1"))
    h = F.max_pool2d(h, 3, 2, 1)
    for stage in range(1, 5):
        for b in range(2):
            p, stride = f"layer{stage}.{b}", (2 if stage > 1 and b == 0 else 1)
            out = F.relu(bn(F.conv2d(h, sd[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1"))
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
            short = h
            if f"{p}.downsample.0.weight" in sd:
                short = bn(F.conv2d(h, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            h = F.relu(out + short)
    return F.linear(F.adaptive_avg_pool2d(h, 1).flatten(1), sd["fc.weight"], sd["fc.bias"])


@pytest.mark.parametrize("layout", ["torchvision", "timm"])
def test_teacher_checkpoint_loads_library_resnet18_layouts(tmp_path, layout):
    from safetensors.torch import save_file

    sd = _library_resnet18(10, counters=layout == "torchvision")  # timm's hub files drop num_batches_tracked
    if layout == "torchvision":
        path = tmp_path / "resnet18.pth"
        torch.save(sd, path)
    else:
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    cfg = resolve_preset(EvalConfig(preset="rded", teacher_checkpoint=str(path)))
    assert cfg.teacher == "resnet18_imagenet_bn"
    state = evaluate.load_teacher_checkpoint(cfg, 10, 64)
    teacher = evaluate._teacher_from(state, "cpu")
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = teacher(x)
    assert torch.allclose(got, _reference_logits(sd, x), atol=1e-4, rtol=1e-4)
    assert state["mean"].tolist() == pytest.approx(list(IMAGENET_MEAN))


def test_teacher_checkpoint_of_another_net_is_named(tmp_path):
    sd = _library_resnet18(10)
    sd["layer1.2.conv1.weight"] = sd["layer1.0.conv1.weight"]  # a third block: a ResNet-34, not a ResNet-18
    torch.save({"state_dict": sd}, tmp_path / "r34.pth.tar")
    cfg = resolve_preset(EvalConfig(preset="rded", teacher_checkpoint=str(tmp_path / "r34.pth.tar")))
    with pytest.raises(DataError, match="layer1.2.conv1.weight"):
        evaluate.load_teacher_checkpoint(cfg, 10, 64)


def _tiny_sets(root: Path, colours: dict[str, tuple[int, int, int]], classes=("a", "b"), n: int = 2,
               size: int = 16) -> dict[str, Path]:
    """One folder per set, every image of a set a flat colour (so each set's own statistics differ)."""
    sets = {}
    for name, rgb in colours.items():
        for c in classes:
            (root / name / c).mkdir(parents=True)
            for i in range(n):
                colour = tuple(min(255, v + 10 * i) for v in rgb)
                Image.new("RGB", (size, size), colour).save(root / name / c / f"{i}.png")
        sets[name] = root / name
    return sets


def _split(root: Path, classes=("a", "b"), size: int = 16, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i}.png")
    return root


def _fake_training(monkeypatch) -> list[dict]:
    seen: list[dict] = []

    def fake(spec, train_x, train_y, val_x, val_y, num_classes, teacher=None, device="cpu", norm=None, **_):
        seen.append({"spec": spec, "norm": norm, "train_x": train_x, "val_x": val_x, "teacher": teacher})
        return {"student": spec["student"], "seed": spec["seed"], "final": 10.0, "best": 10.0,
                "best_epoch": 1,
                "reported": 10.0, "report": "final", "train_loss": 1.0, "history": [], "lr_per_epoch": [],
                "seconds": 0.0, "epochs": spec["epochs"], "batch_size": spec["batch_size"], "lr": spec["lr"],
                "optimizer": "SGD"}

    monkeypatch.setattr(evaluate, "train_student", fake)
    return seen


def test_rded_without_a_teacher_checkpoint_stops_before_loading_or_training(tmp_path, monkeypatch):
    seen = _fake_training(monkeypatch)
    monkeypatch.setattr(evaluate, "fit_teacher", lambda *a, **k: pytest.fail("trained a teacher"))
    monkeypatch.setattr(evaluate, "load_image_arrays", lambda *a, **k: pytest.fail("loaded images"))
    sets = _tiny_sets(tmp_path / "sets", {"s": (200, 0, 0)})
    cfg = EvalConfig(preset="rded", students=["convnet"], backend="local")
    with pytest.raises(ConfigError, match="eval.teacher_checkpoint") as err:
        evaluate.evaluate_sets(sets, tmp_path / "val", cfg, tmp_path / "out", train_root=tmp_path / "train",
                               log=lambda *_: None)
    assert "scratch" in str(err.value) and not seen
    with pytest.raises(ConfigError, match="eval.teacher_checkpoint"):
        evaluate.check_eval(EvalConfig(preset="sre2l"))
    evaluate.check_eval(EvalConfig(preset="rded", teacher_checkpoint="scratch"))  # asked for by name
    with pytest.raises(DataError, match="eval.teacher_checkpoint .*missing.pt: no such file"):
        evaluate.check_eval(EvalConfig(preset="rded", teacher_checkpoint=str(tmp_path / "missing.pt")))


def test_semdistill_run_with_rded_and_no_teacher_stops_before_distilling(tmp_path, monkeypatch):
    import argparse

    import yaml

    from pipeline import run

    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"method": "diver", "output": {"dir": str(tmp_path / "out")},
                                   "eval": {"preset": "rded", "students": ["convnet"]}}))
    monkeypatch.setattr(run, "run_config", lambda *a, **k: pytest.fail("distilled"))
    args = argparse.Namespace(config=str(cfg), overrides=[], print_config=False, from_stage=None)
    with pytest.raises(ConfigError, match="eval.teacher_checkpoint"):
        run.main(args)


# ----------------------------------------------------------------------------- normalisation
def test_every_set_and_the_val_set_share_the_train_splits_statistics(tmp_path, monkeypatch):
    seen = _fake_training(monkeypatch)
    sets = _tiny_sets(tmp_path / "sets", {"red": (250, 0, 0), "grey": (90, 90, 90)})
    train, val = _split(tmp_path / "train", seed=1), _split(tmp_path / "val", seed=2)
    cfg = EvalConfig(students=["convnet"], repeats=1, backend="local", epochs=1)
    rows = evaluate.evaluate_sets(sets, val, cfg, tmp_path / "out", train_root=train, log=lambda *_: None)
    want = load_image_arrays(train, 16).images.reshape(-1, 3).astype(np.float64) / 255.0
    red, grey = seen[0]["norm"], seen[1]["norm"]
    for got in (red, grey):
        assert np.allclose(got[0], want.mean(0), atol=1e-5) and np.allclose(got[1], want.std(0), atol=1e-5)
    assert np.array_equal(red[0], grey[0]) and np.array_equal(red[1], grey[1])
    # the val set is normalised once, the same for both
    assert torch.equal(seen[0]["val_x"], seen[1]["val_x"])
    assert {r["normalization"] for r in rows} == {"train"}


def test_imagenet_class_ids_get_imagenets_statistics(tmp_path, monkeypatch):
    seen = _fake_training(monkeypatch)
    wnids = ("n01440764", "n02102040")
    sets = _tiny_sets(tmp_path / "sets", {"s": (10, 200, 10)}, classes=wnids)
    val = _split(tmp_path / "val", classes=wnids)
    cfg = EvalConfig(students=["convnet"], repeats=1, backend="local", epochs=1)
    rows = evaluate.evaluate_sets(sets, val, cfg, tmp_path / "out", log=lambda *_: None)
    assert seen[0]["norm"][0].tolist() == pytest.approx(list(IMAGENET_MEAN))
    assert rows[0]["normalization"] == "imagenet"


# ----------------------------------------------------------------------------- MTT
def test_mtt_uses_the_learned_lr_saved_beside_the_images(tmp_path, monkeypatch):
    seen = _fake_training(monkeypatch)
    sets = _tiny_sets(tmp_path / "sets", {"learned": (100, 0, 0), "plain": (0, 100, 0)})
    torch.save(torch.tensor(0.0237), sets["learned"] / "lr_best.pt")
    val = _split(tmp_path / "val")
    cfg = EvalConfig(preset="mtt", students=["convnet"], repeats=1, backend="local", epochs=1)
    evaluate.evaluate_sets(sets, val, cfg, tmp_path / "out", log=lambda *_: None)
    lrs = [s["spec"]["lr"] for s in seen]
    assert lrs == [pytest.approx(0.0237), 0.01]  # the set's learned lr, else evaluate_synset's fixed 0.01
    assert _spec("mtt", lr=0.05).lr == 0.05


def test_zca_whitens_the_train_split_and_is_a_cifar_option(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 3, 4, 4, generator=g) @ torch.randn(4, 4, generator=g)  # correlated pixels
    zca = fit_zca(x, 1e-6)
    white = apply_zca(x, zca).reshape(400, -1).double()
    cov = torch.cov(white.T)
    assert torch.allclose(cov, torch.eye(48, dtype=torch.float64), atol=1e-2)
    assert torch.allclose(zca["matrix"], zca["matrix"].T, atol=1e-5)  # ZCA, not PCA: symmetric
    with pytest.raises(ConfigError, match="eval.zca"):
        fit_zca(torch.zeros(2, 3, 128, 128), 0.1)
    with pytest.raises(ConfigError, match="eval.zca .* eval.normalize=imagenet"):
        evaluate.check_eval(EvalConfig(zca=True, normalize="imagenet"))


def test_zca_option_whitens_every_set_and_the_val_set_with_the_train_splits_fit(tmp_path, monkeypatch):
    seen = _fake_training(monkeypatch)
    sets = _tiny_sets(tmp_path / "sets", {"s": (120, 30, 200)}, size=8)
    train, val = _split(tmp_path / "train", size=8, seed=3), _split(tmp_path / "val", size=8, seed=4)
    cfg = EvalConfig(students=["convnet3"], repeats=1, backend="local", epochs=1, zca=True)
    evaluate.evaluate_sets(sets, val, cfg, tmp_path / "out", train_root=train, log=lambda *_: None)
    mean, std = seen[0]["norm"]
    zca = fit_zca(evaluate.to_tensor(load_image_arrays(train, 8).images, mean, std), 0.1)
    want_val = apply_zca(evaluate.to_tensor(load_image_arrays(val, 8).images, mean, std), zca)
    assert torch.allclose(seen[0]["val_x"], want_val, atol=1e-5)
    want_set = apply_zca(evaluate.to_tensor(load_image_arrays(sets["s"], 8).images, mean, std), zca)
    assert torch.allclose(seen[0]["train_x"], want_set, atol=1e-5)


def test_print_config_shows_the_edits_imagenet1k_recipe(capsys):
    import yaml

    from pipeline.cli import main

    root = Path(__file__).resolve().parents[2]
    assert main(["run", str(root / "configs" / "edits_imagenet1k.yaml"), "--print-config"]) == 0
    ev = yaml.safe_load(capsys.readouterr().out)["eval"]
    assert ev["recipe_above_classes"] == {"100": {"lr": 0.1, "weight_decay": 1e-4, "min_batch": 128}}
    assert (ev["val_resize"], ev["normalize"], ev["report"]) == ("size", "auto", "best")
