"""Seeds own every run, the torch augmentations, the 224 px val transform, a pretrained teacher
checkpoint, and the DM ConvNet depth from the resolution."""

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import DMConfig, EvalConfig
from pipeline.errors import DataError
from tuning import augment
from tuning.protocols import TrainSpec, train_student


def _toy(n=24, classes=4, size=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(n, 3, size, size, generator=g) * 0.3
    x[:, 0] += (y.float() - 1.5).view(-1, 1, 1)
    return x, y


def test_a_run_gives_the_same_accuracy_whatever_ran_before_it():
    """MobileNetV2 has dropout, which draws from the global RNG: the run must seed it."""
    x, y = _toy()
    a = TrainSpec(student="mobilenetv2", seed=3, epochs=1, batch_size=8, lr=0.05, augment="none",
                  student_kwargs={"mobilenetv2": {"width_mult": 0.25, "dropout": 0.5}})
    b = TrainSpec(**{**a.to_dict(), "seed": 9, "lr": 0.1})
    first = train_student(a, x, y, x, y, 4)
    train_student(b, x, y, x, y, 4)
    torch.rand(17)  # anything else touching the global RNG in between
    again = train_student(a, x, y, x, y, 4)
    assert again["train_loss"] == first["train_loss"] and again["final"] == first["final"]


def test_random_resized_crop_boxes_and_output():
    _rrc_box, random_resized_crop = augment._rrc_box, augment.random_resized_crop
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        t, left, ch, cw = _rrc_box(32, 32, (0.5, 1.0), (3 / 4, 4 / 3), gen)
        assert 0 <= t and t + ch <= 32 and 0 <= left and left + cw <= 32
        assert 0.5 * 1024 * 0.9 <= ch * cw <= 1024  # area within the scale range (rounding slack)
    x = torch.rand(3, 3, 16, 16)
    out = random_resized_crop(x, torch.Generator().manual_seed(1), (1.0, 1.0), (1.0, 1.0))
    assert torch.allclose(out, x, atol=1e-6)  # full-area square crop = identity
    assert random_resized_crop(x, torch.Generator().manual_seed(1), (0.08, 0.1)).shape == x.shape


def test_flip_jitter_lighting_and_shuffle_patches():
    random_flip, color_jitter, pca_lighting = augment.random_flip, augment.color_jitter, augment.pca_lighting
    shuffle_patches, PCA_EIGVAL, PCA_EIGVEC = augment.shuffle_patches, augment.PCA_EIGVAL, augment.PCA_EIGVEC
    x = torch.rand(64, 3, 8, 8)
    f = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(f[i], x[i].flip(2))) for i in range(64)]
    assert all(flipped[i] or torch.equal(f[i], x[i]) for i in range(64)) and 10 < sum(flipped) < 54
    grey = torch.full((5, 3, 4, 4), 0.5)
    j = color_jitter(grey, torch.Generator().manual_seed(0), 0.4)  # grey: only brightness changes it
    factors = j[:, 0, 0, 0] / 0.5
    assert torch.all((factors >= 0.6 - 1e-6) & (factors <= 1.4 + 1e-6)) and not torch.allclose(j, grey)
    gen = torch.Generator().manual_seed(5)
    lit = pca_lighting(grey, gen, 0.1)
    alpha = torch.randn(5, 3, generator=torch.Generator().manual_seed(5)) * 0.1
    expect = grey + ((alpha * PCA_EIGVAL) @ PCA_EIGVEC.T).view(5, 3, 1, 1)  # eigvec @ (alpha * eigval)
    assert torch.allclose(lit, expect, atol=1e-6)
    img = torch.arange(16.0).view(1, 1, 4, 4)
    sh = shuffle_patches(img, torch.Generator().manual_seed(0), 2)
    blocks = lambda t: sorted(t[0, 0, i:i + 2, k:k + 2].flatten().tolist() for i in (0, 2) for k in (0, 2))
    assert blocks(sh) == blocks(img)  # the four 2x2 patches, moved
    assert any(not torch.equal(shuffle_patches(img, torch.Generator().manual_seed(s), 2),
                               img) for s in range(8))


def test_val_at_224_is_resize_256_then_center_crop(tmp_path):
    from pipeline.core.read import load_image_arrays
    from tuning.evaluate import val_resize_for

    assert val_resize_for(224) == 256 and val_resize_for(32) is None and val_resize_for(224, 300) == 300
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)
    (tmp_path / "c0").mkdir()
    Image.fromarray(arr).save(tmp_path / "c0" / "a.png")
    got = load_image_arrays(tmp_path, 224, resize=val_resize_for(224)).images
    im = Image.fromarray(arr).resize((341, 256), Image.BICUBIC)  # short side 256
    want = np.asarray(im.crop(((341 - 224) // 2, 16, (341 - 224) // 2 + 224, 240)))
    assert np.array_equal(got[0], want)


def test_teacher_checkpoint_is_a_state_dict_of_the_named_student(tmp_path):
    from tuning.evaluate import load_teacher_checkpoint
    from tuning.students import build_student

    net = build_student("convnet3", 3, 10, 32)
    path = tmp_path / "teacher.pt"
    torch.save({f"module.{k}": v for k, v in net.state_dict().items()}, path)  # as saved from DDP
    cfg = EvalConfig(protocol="soft", teacher="convnet3", teacher_checkpoint=str(path))
    state = load_teacher_checkpoint(cfg, 10, 32)
    assert all(torch.equal(state["weights"][k], v) for k, v in net.state_dict().items())
    assert state["mean"].tolist() == pytest.approx([0.485, 0.456, 0.406])
    with pytest.raises(DataError,
                       match="teacher_checkpoint .* does not fit eval.teacher='convnet3' with 5 classes"):
        load_teacher_checkpoint(cfg, 5, 32)
    with pytest.raises(DataError, match="no such file"):
        load_teacher_checkpoint(cfg.model_copy(update={"teacher_checkpoint": str(tmp_path / "x.pt")}), 10, 32)


def test_soft_preset_runs_with_a_checkpoint_and_no_real_train_set(demo_root, tmp_path):
    from tuning.evaluate import evaluate_sets
    from tuning.students import build_student

    torch.save(build_student("convnet", 3, 10, 16).state_dict(), tmp_path / "t.pt")
    distilled = tmp_path / "set"
    for c in sorted(p.name for p in (demo_root / "train").iterdir() if p.is_dir()):
        (distilled / c).mkdir(parents=True)
        for i, src in enumerate(sorted((demo_root / "train" / c).iterdir())[:2]):
            Image.open(src).convert("RGB").resize((16, 16)).save(distilled / c / f"{i}.png")
    cfg = EvalConfig(preset="rded", epochs=5, repeats=1, students=["convnet"], backend="local",
                     student_kwargs={"convnet": {"width": 8}}, teacher="convnet",
                     teacher_checkpoint=str(tmp_path / "t.pt"))
    rows = evaluate_sets({"set": distilled}, demo_root / "val", cfg, tmp_path / "out", log=lambda *_: None)
    assert rows[0]["protocol"] == "soft" and rows[0]["reported"].startswith("best of the last 20%")
    assert rows[0]["runs"][0]["batch_size"] == 20  # 50, capped at IPC 2 x 10 classes
    assert "selected on the test split" in (tmp_path / "out" / "results.md").read_text()


def test_dm_convnet_depth_follows_the_resolution():
    from tuning.convnet import ConvNet

    assert DMConfig().net_depth is None
    assert [ConvNet(3, 10, width=8, depth=DMConfig().net_depth,
                    im_size=s).depth for s in (32, 64, 128)] == [3, 4, 5]
