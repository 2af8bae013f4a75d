"""The soft-label teacher streams the real train set: at most a batch of decoded images alive, same
weights."""

from __future__ import annotations

import shutil
import weakref

import numpy as np
import pytest
import torch

from pipeline.config import EvalConfig
from pipeline.core import image_index, read
from pipeline.core.pixels import channel_stats
from tuning.evaluate import fit_teacher, to_tensor

SIZE = 16
BATCH = 128  # the teacher's batch (tuning.protocols.TEACHER_BATCH)


@pytest.fixture(scope="module")
def val(demo_root):
    vx, vy, classes, _ = read.load_image_arrays(demo_root / "val", SIZE)
    return (vx[:200], vy[:200]), classes


def test_histogram_stats_equal_channel_stats():
    from pipeline.core.pixels import pixel_histogram, stats_from_histogram

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(37, 9, 7, 3), dtype=np.uint8)
    x[..., 2] = 200  # a constant channel: the std floor
    hist = sum(pixel_histogram(img) for img in x)
    assert hist.shape == (3, 256) and int(hist[0].sum()) == 37 * 9 * 7
    mean, std = stats_from_histogram(hist)
    ref_mean, ref_std = channel_stats(x)
    np.testing.assert_array_equal(mean, ref_mean)
    np.testing.assert_allclose(std, ref_std, rtol=1e-7)
    assert std[2] == np.float32(1e-3)


def test_teacher_never_holds_more_than_a_batch_of_decoded_images(demo_root, val, monkeypatch):
    """Every decoded image is tracked until it is freed: the peak stays at one batch (the whole set
    before)."""
    (vx, vy), classes = val
    n_train = len(image_index.scan_image_folder(demo_root / "train").records)
    assert n_train > 4 * BATCH
    decode = read.load_rgb
    live, peak, decoded = [0], [0], [0]

    def tracked(*args, **kwargs):
        img = decode(*args, **kwargs)
        live[0] += 1
        decoded[0] += 1
        peak[0] = max(peak[0], live[0])
        weakref.finalize(img, lambda: live.__setitem__(0, live[0] - 1))
        return img

    monkeypatch.setattr(read, "load_rgb", tracked)
    cfg = EvalConfig(protocol="soft", teacher_epochs=2, seed=0)
    state = fit_teacher(demo_root / "train", classes, SIZE, cfg, (vx, vy), log=lambda _m: None)
    assert peak[0] <= BATCH, f"{peak[0]} decoded images alive at once"
    assert decoded[0] == 3 * n_train  # the statistics pass, then every image once per epoch
    assert 0.0 <= state["top1"] <= 100.0


def test_streamed_teacher_has_the_in_memory_teachers_weights(demo_root, val):
    """Same seed, same pixels: the streamed batches are the in-memory ones, so the weights are
    bit-identical."""
    from tuning.protocols import TEACHER_BATCH, TensorBatches, train_teacher

    assert TEACHER_BATCH == BATCH
    (vx, vy), classes = val
    cfg = EvalConfig(protocol="soft", teacher_epochs=2, seed=3)
    streamed = fit_teacher(demo_root / "train", classes, SIZE, cfg, (vx, vy), log=lambda _m: None)
    # as before
    x, y, _, _ = read.load_image_arrays(demo_root / "train", SIZE, classes=classes, skip_bad=True)
    mean, std = channel_stats(x)
    np.testing.assert_array_equal(streamed["mean"], mean)
    np.testing.assert_array_equal(streamed["std"], std)
    model, info = train_teacher(cfg.teacher, TensorBatches(to_tensor(x, mean, std), torch.from_numpy(y)),
                                len(classes), 2, val=(to_tensor(vx, mean, std), torch.from_numpy(vy)), seed=3)
    want = model.state_dict()
    assert set(streamed["weights"]) == set(want)
    assert all(torch.equal(streamed["weights"][k], want[k]) for k in want)
    assert streamed["top1"] == info["final"]


def test_unreadable_files_are_left_out_of_the_stream(demo_root, tmp_path):
    from tuning.stream import scan_stream

    root = tmp_path / "train"
    for cls in ("0", "1"):
        (root / cls).mkdir(parents=True)
        for f in sorted((demo_root / "train" / cls).iterdir())[:3]:
            shutil.copy(f, root / cls / f.name)
    (root / "1" / "zz_broken.png").write_bytes(b"not a png")
    data = scan_stream(root, SIZE)
    assert len(data) == 6 and data.labels.tolist() == [0, 0, 0, 1, 1, 1] and data.classes == ["0", "1"]
    batches = list(data.batches([torch.tensor([5, 0]), torch.tensor([3])]))
    assert [tuple(b[0].shape) for b in batches] == [(2, 3, SIZE, SIZE), (1, 3, SIZE, SIZE)]
    assert [b[1].tolist() for b in batches] == [[1, 0], [1]]
    x, _, _, _ = read.load_image_arrays(root, SIZE, skip_bad=True)
    np.testing.assert_array_equal(batches[0][0].numpy(), to_tensor(x[[5, 0]], data.mean, data.std).numpy())
    forked = scan_stream(root, SIZE, workers=1)  # decoding in a DataLoader worker process: the same batches
    assert len(forked) == 6 and np.array_equal(forked.mean,
                                               data.mean) and np.array_equal(forked.std, data.std)
    again = list(forked.batches([torch.tensor([5, 0]), torch.tensor([3])]))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a,
               b in zip(again, batches, strict=True))
