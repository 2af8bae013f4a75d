"""Data I/O: ImageFolder scan, decode, atomic writer + manifest, demo data."""

import json

import numpy as np
import pytest
from PIL import Image

from pipeline.core.image_index import load_class_names, scan_image_folder
from pipeline.core.read import image_dataset, load_rgb
from pipeline.core.write import DistilledSetWriter, read_manifest, safe_name
from pipeline.errors import DataError


def _img(path, color, size=(12, 10)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)


def test_write_then_read_roundtrip(tmp_path):
    """Images and labels written by the writer come back identical through the reader."""
    rng = np.random.default_rng(0)
    w = DistilledSetWriter(tmp_path / "out", method="test", settings={"ipc": 2})
    expected = {}
    for label, cls in enumerate(["n01440764", "n02102040"]):
        for i in range(2):
            arr = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            path = w.add(f"c{label}_i{i}", cls, label, arr, {"seed": 10 * label + i})
            expected[str(path)] = (cls, label, arr)
    idx = scan_image_folder(tmp_path / "out")
    assert idx.classes == ["n01440764", "n02102040"]
    assert len(idx.records) == 4
    for r in idx.records:
        cls, label, arr = expected[r.path]
        assert (r.class_id, r.label) == (cls, label)
        np.testing.assert_array_equal(load_rgb(r.path), arr)  # PNG is lossless
    man = read_manifest(tmp_path / "out")
    assert man["method"] == "test" and man["settings"] == {"ipc": 2}
    assert [e["seed"] for e in man["images"]] == [0, 1, 10, 11]


def test_writer_resumes_without_duplicates(tmp_path):
    arr = np.zeros((4, 4, 3), np.uint8)
    w = DistilledSetWriter(tmp_path, method="m")
    assert w.add("k0", "a", 0, arr) is not None
    w2 = DistilledSetWriter(tmp_path, method="m")  # a re-run reads the manifest
    assert w2.done("k0")
    assert w2.add("k0", "a", 0, arr) is None
    w2.add("k1", "a", 0, arr)
    assert [e["key"] for e in read_manifest(tmp_path)["images"]] == ["k0", "k1"]
    assert not list(tmp_path.rglob("*.tmp"))
    with pytest.raises(DataError, match="belongs to method 'm'"):
        DistilledSetWriter(tmp_path, method="other")


def test_safe_name_cannot_escape():
    assert safe_name("../../etc/passwd") == "etc_passwd"
    assert "/" not in safe_name("a/b") and safe_name("..") == "_"


def test_scan_nested_uppercase_and_skips(tmp_path):
    _img(tmp_path / "b" / "x.JPEG", "red")
    _img(tmp_path / "b" / "sub" / "y.png", "blue")
    _img(tmp_path / "a" / "z.jpg", "green")
    (tmp_path / "a" / "notes.txt").write_text("hi")
    idx = scan_image_folder(tmp_path, extensions=[".jpg", ".jpeg", ".png"])
    assert idx.classes == ["a", "b"]
    assert idx.counts() == {"a": 1, "b": 2}
    assert [s["reason"] for s in idx.skipped] == ["not an image file extension"]
    assert idx.skipped[0]["path"].endswith("notes.txt")


def test_scan_errors_name_the_path(tmp_path):
    with pytest.raises(DataError, match="dataset root not found: .*nope"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "empty_root").mkdir()
    with pytest.raises(DataError, match="no class folders"):
        scan_image_folder(tmp_path / "empty_root")
    _img(tmp_path / "r" / "a" / "1.png", "red")
    (tmp_path / "r" / "b").mkdir()
    with pytest.raises(DataError, match=r"class folder has no images: .*r/b"):
        scan_image_folder(tmp_path / "r")
    idx = scan_image_folder(tmp_path / "r", allow_empty_classes=True)
    assert idx.classes == ["a"] and idx.skipped[0]["reason"] == "empty class folder"


def test_load_rgb_modes_and_bad_files(tmp_path):
    Image.new("L", (6, 4), 128).save(tmp_path / "g.png")
    Image.new("RGBA", (6, 4), (255, 0, 0, 0)).save(tmp_path / "t.png")  # transparent -> white
    Image.new("CMYK", (6, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    assert load_rgb(str(tmp_path / "g.png")).shape == (4, 6, 3)
    assert load_rgb(str(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]
    assert load_rgb(str(tmp_path / "c.jpg"), size=8).shape == (8, 8, 3)
    from pipeline.core.read import BadImageError

    (tmp_path / "zero.jpg").write_bytes(b"")
    with pytest.raises(BadImageError, match="zero-byte"):
        load_rgb(str(tmp_path / "zero.jpg"))
    (tmp_path / "fake.png").write_text("not an image at all")
    with pytest.raises(BadImageError, match="cannot decode"):
        load_rgb(str(tmp_path / "fake.png"))
    _img(tmp_path / "full.jpg", "red", size=(64, 64))
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError):
        load_rgb(str(tmp_path / "trunc.jpg"))


def test_class_names_table(tmp_path):
    (tmp_path / "n.json").write_text(json.dumps({"n01": "tench"}))
    assert load_class_names(tmp_path / "n.json", ["n01", "n_02"]) == {"n01": "tench", "n_02": "n 02"}
    (tmp_path / "n.txt").write_text("n01 tench, Tinca tinca\n")
    assert load_class_names(tmp_path / "n.txt", ["n01"]) == {"n01": "tench, Tinca tinca"}


def test_demo_data_is_real_and_reproducible(demo_root, tmp_path):
    from pipeline.core.digits import write_demo_dataset

    summary = json.loads((demo_root / "dataset.json").read_text())
    assert sum(summary["counts"]["train"].values()) + sum(summary["counts"]["val"].values()) == 1797
    train = scan_image_folder(demo_root / "train")
    assert train.classes == [str(i) for i in range(10)]
    img = load_rgb(train.records[0].path)
    assert img.shape == (32, 32, 3) and img.min() < 100 < img.max()  # ink and paper
    again = write_demo_dataset(tmp_path / "again")
    assert again["counts"] == summary["counts"]
    f = min((demo_root / "val" / "3").iterdir()).name
    assert (tmp_path / "again" / "val" / "3" / f).read_bytes() == (demo_root / "val" / "3" / f).read_bytes()


def test_image_dataset_reports_bad_files(tmp_path, ray_local):
    _img(tmp_path / "a" / "ok.png", "red")
    (tmp_path / "a" / "bad.jpg").write_bytes(b"\xff\xd8\xff garbage")
    idx = scan_image_folder(tmp_path)
    rows = sorted(image_dataset(idx, size=16).take_all(), key=lambda r: r["path"])
    assert [r["path"].rsplit("/", 1)[1] for r in rows] == ["bad.jpg", "ok.png"]
    assert rows[0]["error"].startswith("cannot decode") and rows[1]["error"] == ""
    assert rows[1]["image"].shape == (16, 16, 3) and rows[1]["image"][0, 0].tolist() == [255, 0, 0]


def test_atomic_writes_get_the_umask_mode_not_mkstemps_private_one(tmp_path):
    import os
    import stat

    import torch

    from pipeline.core.write import atomic_folder, atomic_save_image, atomic_torch_save, atomic_write_bytes

    old = os.umask(0o022)
    try:
        atomic_write_bytes(tmp_path / "a.json", b"{}")
        atomic_save_image(tmp_path / "c" / "x.png", np.zeros((4, 4, 3), np.uint8))
        atomic_torch_save(tmp_path / "t.pt", torch.zeros(3))
        with atomic_folder(tmp_path / "model") as tmp:  # mkdtemp makes it 0700
            (tmp / "config.json").write_text("{}")
        os.umask(0o077)
        atomic_write_bytes(tmp_path / "private.json", b"{}")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "c" / "x.png").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "t.pt").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "model").stat().st_mode) == 0o755  # readable by the team, like a mkdir
    assert stat.S_IMODE((tmp_path / "private.json").stat().st_mode) == 0o600
