"""Every bad input we know of, against the reader, the writer, config and model loading.

Per-image faults are skipped with a reason (BadImageError / skipped entries); configuration
faults raise ConfigError / DataError / ModelLoadError with a message naming the key or path.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from pipeline.core.image_index import (
    disambiguate_class_names,
    duplicate_class_names,
    index_fingerprint,
    load_class_names,
    scan_image_folder,
)
from pipeline.core.read import BadImageError, decode_batch, load_rgb
from pipeline.core.write import DistilledSetWriter, component_name, read_manifest
from pipeline.errors import ConfigError, DataError, ModelLoadError


def _png(path, w, h, bitdepth, colortype, raw_rows: bytes | None = None) -> None:
    """A hand-made PNG (16-bit RGB, or a header that claims a huge size)."""
    def chunk(t: bytes, d: bytes) -> bytes:
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, bitdepth, colortype, 0, 0, 0)
    idat = zlib.compress(raw_rows if raw_rows is not None else b"\0")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _img(path, color="red", size=(12, 10), mode="RGB", **save):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


# ---- per-image faults: load_rgb --------------------------------------------------------------


def test_corrupt_and_truncated_jpeg(tmp_path):
    full = _img(tmp_path / "full.jpg", "red", (64, 64))
    data = full.read_bytes()
    (tmp_path / "trunc.jpg").write_bytes(data[: len(data) // 2])
    (tmp_path / "corrupt.jpg").write_bytes(data[:200] + bytes(range(256)) * 4)
    with pytest.raises(BadImageError,
                       match="cannot decode: OSError: (image file is truncated|Truncated File Read)"):
        load_rgb(str(tmp_path / "trunc.jpg"))
    with pytest.raises(BadImageError, match="cannot decode"):
        load_rgb(str(tmp_path / "corrupt.jpg"), size=16)
    # the same files through the run's batch decoder: rows kept, reason in ``error``
    out = decode_batch({"path": np.array([str(full), str(tmp_path / "trunc.jpg")])}, size=8)
    assert out["error"][0] == "" and out["error"][1].startswith("cannot decode")
    assert out["image"][1].sum() == 0 and out["image"][0][0, 0, 0] > 200


def test_zero_byte_and_non_image_with_image_extension(tmp_path):
    (tmp_path / "zero.jpg").write_bytes(b"")
    (tmp_path / "text.png").write_text("this is not a PNG")
    (tmp_path / "pdf.JPEG").write_bytes(b"%PDF-1.4\n%....")
    with pytest.raises(BadImageError, match="^zero-byte file$"):
        load_rgb(str(tmp_path / "zero.jpg"))
    for name in ("text.png", "pdf.JPEG"):
        with pytest.raises(BadImageError, match="cannot decode: UnidentifiedImageError"):
            load_rgb(str(tmp_path / name))


def test_grayscale_cmyk_rgba_palette(tmp_path):
    _img(tmp_path / "g.png", 77, (6, 4), "L")
    _img(tmp_path / "c.jpg", (0, 255, 255, 0), (16, 16), "CMYK")  # full magenta + yellow = red
    _img(tmp_path / "t.png", (255, 0, 0, 0), (6, 4), "RGBA")  # fully transparent -> white
    _img(tmp_path / "h.png", (0, 0, 255, 128), (6, 4), "RGBA")  # half transparent blue over white
    p = Image.new("P", (6, 4), 1)
    p.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    p.save(tmp_path / "p.png")
    assert load_rgb(str(tmp_path / "g.png")).reshape(-1, 3).tolist() == [[77, 77, 77]] * 24
    red = load_rgb(str(tmp_path / "c.jpg"))[8, 8]
    assert red[0] > 240 and red[1] < 15 and red[2] < 15
    assert load_rgb(str(tmp_path / "t.png"))[0, 0].tolist() == [255, 255, 255]
    assert load_rgb(str(tmp_path / "h.png"))[0, 0].tolist() == [127, 127, 255]
    assert load_rgb(str(tmp_path / "p.png"))[0, 0].tolist() == [10, 200, 30]


def test_16_bit_png_uses_the_full_range(tmp_path):
    """16-bit gray: 65535 -> 255, 32896 -> 128, and a dark image (257) -> 1, not stretched to white."""
    arr = np.array([[65535, 32896, 257, 0]] * 3, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I")
    assert load_rgb(str(tmp_path / "g16.png"))[0, :, 0].tolist() == [255, 128, 1, 0]
    Image.fromarray(np.full((3, 3), 257, np.uint16)).save(tmp_path / "dark16.png")
    assert load_rgb(str(tmp_path / "dark16.png"))[0, 0].tolist() == [1, 1, 1]
    rows = b"".join(b"\0" + struct.pack(">HHH", 65535, 0, 32896) * 4 for _ in range(3))
    _png(tmp_path / "rgb16.png", 4, 3, 16, 2, rows)
    assert load_rgb(str(tmp_path / "rgb16.png"))[0, 0].tolist() == [255, 0, 128]


def test_1x1_is_skipped_and_2x2_is_upscaled(tmp_path):
    _img(tmp_path / "one.png", "red", (1, 1))
    _img(tmp_path / "two.png", "blue", (2, 2))
    with pytest.raises(BadImageError, match=r"too small \(1x1\)"):
        load_rgb(str(tmp_path / "one.png"), size=32)
    assert load_rgb(str(tmp_path / "two.png"), size=32)[31, 31].tolist() == [0, 0, 255]


def test_10000x10000_images_decode_to_size(tmp_path):
    """Real 10,000 x 10,000 JPEG and PNG: decoded (JPEG via DCT draft, PNG via box reduce) to 32 px."""
    big = Image.new("L", (10_000, 10_000), 40)
    big.paste(200, (0, 0, 10_000, 5_000))  # top half light, bottom half dark
    big.save(tmp_path / "big.jpg", quality=80)
    big.save(tmp_path / "big.png", compress_level=1)
    del big
    for name in ("big.jpg", "big.png"):
        out = load_rgb(str(tmp_path / name), size=32)
        assert out.shape == (32, 32, 3)
        assert abs(int(out[2, 16, 0]) - 200) <= 3 and abs(int(out[29, 16, 0]) - 40) <= 3


def test_decompression_bomb_is_skipped_without_decoding(tmp_path):
    _png(tmp_path / "bomb.png", 30_000, 30_000, 8, 0)  # header only: 900 Mpx claimed
    with pytest.raises(BadImageError, match="too large"):
        load_rgb(str(tmp_path / "bomb.png"), size=32)


def test_exif_rotated_photo(tmp_path):
    """Orientation 6 (rotate 90 deg CW to display): a 20x10 image with red left / blue right
    must load as 10 wide, 20 high, red on top."""
    im = Image.new("RGB", (20, 10), "blue")
    im.paste((255, 0, 0), (0, 0, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6
    im.save(tmp_path / "rot.jpg", exif=exif.tobytes(), quality=95)
    out = load_rgb(str(tmp_path / "rot.jpg"))
    assert out.shape == (20, 10, 3)
    assert out[2, 5, 0] > 200 and out[2, 5, 2] < 60  # top: red
    assert out[17, 5, 2] > 200 and out[17, 5, 0] < 60  # bottom: blue


# ---- per-image faults: scan_image_folder -------------------------------------------------------


def test_uppercase_extensions_are_images(tmp_path):
    for name in ("A.JPG", "B.JPEG", "C.PNG", "d.Png", "e.WebP"):
        _img(tmp_path / "cls" / name, "red", (4, 4))
    idx = scan_image_folder(tmp_path)
    assert sorted(os.path.basename(r.path) for r in idx.records) == ["A.JPG", "B.JPEG", "C.PNG", "d.Png",
                                                                     "e.WebP"]
    assert all(load_rgb(r.path)[0, 0, 0] > 200 for r in idx.records)


def test_symlinks_followed_broken_and_looped(tmp_path):
    real = _img(tmp_path / "store" / "x.png", "red", (4, 4))
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    _img(root / "a" / "own.png", "blue", (4, 4))
    os.symlink(real, root / "a" / "link.png")
    os.symlink(tmp_path / "store" / "missing.png", root / "a" / "broken.png")
    os.symlink(root / "a", root / "a" / "loop")  # a folder link back to its parent
    idx = scan_image_folder(root)
    names = sorted(os.path.relpath(r.path, root) for r in idx.records)
    assert names == ["a/link.png", "a/own.png"]  # the loop is not walked again
    reasons = {os.path.relpath(s["path"], root): s["reason"] for s in idx.skipped}
    assert reasons["a/broken.png"] == "symlink not followed or broken"
    assert reasons["a/loop"].startswith("folder already scanned")
    no_follow = scan_image_folder(root, follow_symlinks=False)
    assert [os.path.relpath(r.path, root) for r in no_follow.records] == ["a/own.png"]


def test_unicode_and_spaces_in_names_roundtrip(tmp_path, ray_local):
    from pipeline.core.read import image_dataset

    root = tmp_path / "données réelles"
    _img(root / "café au lait" / "ñandú 1.png", (200, 150, 100), (8, 8))
    _img(root / "日本 犬" / "写真 #2.JPG", (0, 0, 200), (8, 8))
    idx = scan_image_folder(root)
    assert idx.classes == ["café au lait", "日本 犬"]
    rows = sorted(image_dataset(idx, size=8).take_all(), key=lambda r: r["label"])
    assert [r["error"] for r in rows] == ["", ""]
    assert rows[0]["image"][0, 0].tolist() == [200, 150, 100]
    out = tmp_path / "out"
    w = DistilledSetWriter(out, "test")
    for r in rows:
        w.add(f"{r['class_id']} #0", r["class_id"], r["label"], r["image"])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["café au lait", "日本 犬"]
    back = scan_image_folder(out)
    assert back.classes == idx.classes  # a distilled set reads back with the real set's class ids
    assert load_rgb(back.records[0].path)[0, 0].tolist() == [200, 150, 100]


def test_class_with_fewer_images_than_ipc(tmp_path):
    from pipeline.core.skips import check_class_counts

    _img(tmp_path / "a" / "1.png")
    _img(tmp_path / "a" / "2.png")
    _img(tmp_path / "b" / "1.png")
    counts = scan_image_folder(tmp_path).counts()
    assert counts == {"a": 2, "b": 1}
    with pytest.raises(DataError, match=r"1 classes have fewer usable images than ipc=2: b \(1\)"):
        check_class_counts(counts, ipc=2)
    assert check_class_counts(counts, ipc=2, policy="shrink") == {"a": 2, "b": 1}
    assert check_class_counts(counts, ipc=1) == {"a": 1, "b": 1}


def test_empty_class_and_class_of_only_bad_files(tmp_path):
    from pipeline.core.skips import check_class_counts

    _img(tmp_path / "a" / "1.png")
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="class folder has no images: .*empty"):
        scan_image_folder(tmp_path)
    idx = scan_image_folder(tmp_path, allow_empty_classes=True)
    assert idx.classes == ["a"]
    assert {os.path.basename(s["path"]): s["reason"] for s in idx.skipped} == {
        "empty": "empty class folder", "notes": "empty class folder",
        "readme.txt": "not an image file extension"}
    with pytest.raises(DataError, match=r"classes with no usable images: \['bad'\]"):
        check_class_counts({"a": 3, "bad": 0}, ipc=1, policy="shrink")


def test_duplicate_class_names_and_ids(tmp_path):
    (tmp_path / "names.txt").write_text("n02012849 crane\nn03126707 Crane\nn01440764 tench\n")
    ids = ["n01440764", "n02012849", "n03126707"]
    names = load_class_names(tmp_path / "names.txt", ids)
    assert duplicate_class_names(names) == {"crane": ["n02012849", "n03126707"]}
    assert disambiguate_class_names(names) == {
        "n01440764": "tench", "n02012849": "crane (n02012849)", "n03126707": "Crane (n03126707)"}
    _img(tmp_path / "ds" / "a" / "1.png")
    with pytest.raises(ConfigError, match=r"data.classes lists these class ids more than once: \['a'\]"):
        scan_image_folder(tmp_path / "ds", classes=["a", "a"])


def test_dataset_fingerprint_tells_datasets_apart(tmp_path):
    """A cache (captions, features) keyed by a fingerprint cannot be reused for another dataset."""
    for root, cls in ((tmp_path / "d1", "a"), (tmp_path / "d2", "a"), (tmp_path / "d3", "b")):
        _img(root / cls / "1.png")
    _img(tmp_path / "d2" / "a" / "2.png")
    fp = [index_fingerprint(scan_image_folder(tmp_path / d)) for d in ("d1", "d2", "d3")]
    assert len(set(fp)) == 3
    assert index_fingerprint(scan_image_folder(tmp_path / "d1")) == fp[0]  # stable
    moved = tmp_path / "moved"
    os.rename(tmp_path / "d1", moved)  # same files elsewhere: same dataset
    assert index_fingerprint(scan_image_folder(moved)) == fp[0]


# ---- the writer: names cannot escape, collide or vanish --------------------------------------------


def test_class_ids_cannot_write_outside_and_do_not_collide(tmp_path):
    out = tmp_path / "out"
    w = DistilledSetWriter(out, "test")
    img = np.zeros((4, 4, 3), np.uint8)
    ids = ["../../escape", "/abs/path", "a/b", "a_b", "..", ".hidden", "tab\tname", "ok id"]
    paths = [w.add(f"k{i}", cid, i, img) for i, cid in enumerate(ids)]
    for p in paths:
        assert p.resolve().is_relative_to(out.resolve())
        assert p.parent.parent == out  # exactly one class folder level
    assert len({p.parent for p in paths}) == len(ids)  # no two ids share a folder
    assert not (tmp_path / "escape").exists() and not list(tmp_path.glob("*.png"))
    assert component_name("ok id") == "ok id" and component_name("a/b") != component_name("a_b")
    w._files["x/fresh.png"] = "someone-else"  # another key already owns this file name
    with pytest.raises(DataError, match="keys 'someone-else' and 'fresh' map to the same file"):
        w.add("fresh", "x", 0, img)


def test_writer_redoes_vanished_files_and_rejects_broken_manifest(tmp_path):
    img = np.full((4, 4, 3), 9, np.uint8)
    w = DistilledSetWriter(tmp_path, "m")
    p0 = w.add("k0", "a", 0, img)
    w.add("k1", "a", 0, img)
    entry = read_manifest(tmp_path)["images"][0]
    assert len(entry["sha256"]) == 64
    p0.unlink()
    w2 = DistilledSetWriter(tmp_path, "m")
    assert [e["key"] for e in w2.dropped] == ["k0"] and not w2.done("k0") and w2.done("k1")
    assert w2.add("k0", "a", 0, img) == p0 and p0.is_file()
    (tmp_path / "manifest.json").write_text('{"method": "m", "images": [')  # torn by hand
    with pytest.raises(DataError, match="manifest.json is not valid JSON"):
        DistilledSetWriter(tmp_path, "m")


# ---- configuration faults: fail fast, name the key -------------------------------------------------


def test_config_wrong_type_and_unknown_key(tmp_path, capsys):
    from pipeline.cli import main
    from pipeline.config import load_config

    (tmp_path / "c.yaml").write_text("edits:\n  ipc: ten\n  k_imgae: 5\nray:\n  pool_sizes: {embed: two}\n")
    with pytest.raises(ConfigError) as err:
        load_config(tmp_path / "c.yaml")
    msg = str(err.value)
    assert "edits.ipc: Input should be a valid integer" in msg and "'ten'" in msg
    assert "edits.k_imgae: unknown key" in msg
    assert "ray.pool_sizes.embed" in msg
    with pytest.raises(ConfigError, match="debug.fail_every_n_batches"):
        load_config(None, ["debug.fail_every_n_batches=0"])
    with pytest.raises(ConfigError, match="debug.fault_mode"):
        load_config(None, ["debug.fault_mode=explode"])
    assert main(["run", str(tmp_path / "c.yaml"), "--print-config"]) == 2
    err_text = capsys.readouterr().err
    assert err_text.startswith("semdistill: error: invalid config") and "Traceback" not in err_text


def test_missing_model_path_names_role_and_never_downloads(tmp_path):
    from actors.loading import load_pretrained

    calls = []
    missing = tmp_path / "models" / "my-dit"
    with pytest.raises(ModelLoadError) as err:
        load_pretrained("dit", str(missing), lambda *a, **k: calls.append(a))
    msg = str(err.value)
    assert msg.startswith("models.dit: local model path does not exist: ") and str(missing) in msg
    assert "no download is attempted" in msg
    assert calls == []  # the loader (from_pretrained) was never called
    with pytest.raises(ModelLoadError, match=r"models.vae: .*zoo"):
        load_pretrained("vae", "zoo:no-such-role", lambda *a, **k: calls.append(a))
    assert calls == []


def test_data_root_and_class_names_faults(tmp_path):
    with pytest.raises(DataError, match="dataset root not found"):
        scan_image_folder(tmp_path / "nope")
    (tmp_path / "file.txt").write_text("x")
    with pytest.raises(DataError, match="not a folder"):
        scan_image_folder(tmp_path / "file.txt")
    with pytest.raises(DataError, match="class-name table not found"):
        load_class_names(tmp_path / "names.json", ["a"])
    (tmp_path / "names.json").write_text(json.dumps({"a": "apple", "zz": "not in the data"}))
    assert load_class_names(tmp_path / "names.json", ["a", "b"]) == {"a": "apple", "b": "b"}
    (tmp_path / "idx.json").write_text(json.dumps({"0": ["n01", "tench"],
                                                   "1": ["n02", ["goldfish", "Carassius"]]}))
    assert load_class_names(tmp_path / "idx.json", ["n01", "n02"]) == {"n01": "tench",
                                                                       "n02": "goldfish, Carassius"}
    (tmp_path / "torn.json").write_text('{"a": "app')
    with pytest.raises(DataError, match="torn.json cannot be read"):
        load_class_names(tmp_path / "torn.json", ["a"])
    (tmp_path / "num.json").write_text("42")
    with pytest.raises(DataError, match="must be a JSON object"):
        load_class_names(tmp_path / "num.json", ["a"])


def test_jpeg_with_trailing_garbage_decodes(tmp_path):
    """A JPEG with trailing garbage after EOI still decodes (common in scraped data)."""
    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "green").save(buf, format="JPEG")
    (tmp_path / "tail.jpg").write_bytes(buf.getvalue() + b"\0garbage" * 10)
    assert load_rgb(str(tmp_path / "tail.jpg"))[4, 4, 1] > 100
