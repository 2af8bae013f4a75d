"""data.format: parquet (Hugging Face image layout) and WebDataset shards read as the ImageFolder of the same
pictures."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, DataError
from tests.core.shard_sets import CLASSES, _folder, write_parquet_shards, write_wds_shards


@pytest.fixture(scope="module")
def sets(tmp_path_factory, demo_root):
    """The same 3 x 4 pictures as an ImageFolder, parquet shards and tar shards (one corrupt image in
    each)."""
    base = tmp_path_factory.mktemp("formats")
    files = _folder(demo_root, base / "folder", 4)
    bad = b"\x89PNG\r\n\x1a\n-truncated"
    return {"files": files, "folder": base / "folder",
            "parquet": (base / "hf", write_parquet_shards(files, base / "hf", 5, bad)),
            "webdataset": (base / "wds", write_wds_shards(files, base / "wds", 5, bad))}


def test_detect_format_and_errors(sets, tmp_path):
    from pipeline.core.shards import detect_format

    assert detect_format(str(sets["folder"])) == "imagefolder"
    assert detect_format(str(sets["parquet"][0])) == "parquet"  # the HF repo layout: data/*.parquet
    assert detect_format(str(sets["webdataset"][0])) == "webdataset"
    assert detect_format(sets["webdataset"][0].as_uri()) == "webdataset"
    mixed = tmp_path / "mixed"
    (mixed / "cat").mkdir(parents=True)
    (mixed / "x.tar").write_bytes(b"")
    with pytest.raises(ConfigError, match="set data.format"):
        detect_format(str(mixed))
    with pytest.raises(ConfigError, match="data.format must be one of"):
        detect_format(str(mixed), "lmdb")
    with pytest.raises(DataError, match="dataset root not found"):
        detect_format(str(tmp_path / "nope"))


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
@pytest.mark.parametrize("uri", [False, True])
def test_scan_and_decode_match_imagefolder(sets, ray_local, fmt, uri):
    """Same class-id table, same per-class records, byte-identical decoded pixels; the corrupt one a named
    skip."""
    from pipeline.core.image_index import scan_image_folder
    from pipeline.core.read import decode_batch
    from pipeline.core.shards import scan_root

    ref = scan_image_folder(sets["folder"])
    root, keys = sets[fmt]
    index = scan_root(root.as_uri() if uri else str(root))
    assert index.classes == ref.classes == CLASSES
    assert index.counts() == {**ref.counts(), "0": 5}  # the corrupt picture is a record until it is decoded
    prefix = root.as_uri()[len("file://"):] if uri else ""
    got = [(keys[r.path.replace("file://", "", 1) if uri else r.path], r.label) for r in index.records]
    assert [g for g in got if g[0] != "bad"] == [(r.path, r.label) for r in ref.records]
    assert all(r.path.startswith("file://" + prefix) for r in index.records) if uri else True
    assert not [s for s in index.skipped if "validation" in s["path"]]  # the other split is not read

    paths = np.array([r.path for r in index.records], dtype=object)
    out = decode_batch({"path": paths}, 16)
    want = decode_batch({"path": np.array([r.path for r in ref.records], dtype=object)}, 16)
    ok = out["error"] == ""
    assert ok.sum() == len(ref.records)
    np.testing.assert_array_equal(out["image"][ok], want["image"])
    (bad,) = [str(p) for p, e in zip(paths, out["error"]) if e]
    assert bad.endswith("data/train-00000-of-00003.parquet#000000001" if fmt == "parquet"
                        else "shard-000000.tar#bad")  # the key names the shard and the row / key


@pytest.mark.parametrize("fmt", ["parquet", "webdataset"])
def test_data_check_counts_and_names_the_bad_record(sets, ray_local, fmt):
    from pipeline.checks.data_check import check_dataset

    ref = check_dataset(sets["folder"], ipc=1)
    root, _ = sets[fmt]
    rep = check_dataset(root, ipc=1, fmt=fmt)
    assert rep["counts"] == ref["counts"] == {"0": 4, "1": 4, "7": 4}
    (skip,) = rep["skipped"]
    shard = "data/train-00000-of-00003.parquet#000000001" if fmt == "parquet" else "shard-000000.tar#bad"
    assert skip["path"] == f"{root}/{shard}"
    assert "cannot decode" in skip["reason"]


def test_parquet_row_groups_and_missing_bytes(tmp_path, demo_root, ray_local):
    """Rows from every row group of a shard; a row without image bytes is a reason naming shard and row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.core.read import BadImageError, load_rgb
    from pipeline.core.shards import scan_root

    files = _folder(demo_root, tmp_path / "f", 3)
    keys = write_parquet_shards(files, tmp_path / "hf", 9, row_group_size=2)
    for key, f in keys.items():
        np.testing.assert_array_equal(load_rgb(key), np.asarray(Image.open(f).convert("RGB")))
    shard = tmp_path / "nobytes" / "x.parquet"
    shard.parent.mkdir()
    pq.write_table(pa.table({"image": [{"bytes": None, "path": "a.jpg"}], "label": [0]}), shard)
    (index_key,) = [r.path for r in scan_root(str(shard.parent)).records]
    with pytest.raises(BadImageError, match=r"no image bytes in row 0 of shard .*x.parquet"):
        load_rgb(index_key)
    pq.write_table(pa.table({"img": [b"x"], "fine_label": [0]}), tmp_path / "nobytes" / "x.parquet")
    with pytest.raises(DataError, match="columns image, label"):
        scan_root(str(shard.parent))


def test_uri_imagefolder(sets, ray_local):
    """An ImageFolder behind a URI (file:// here, s3:// / gs:// alike) lists once and decodes the same
    pixels."""
    from pipeline.core.image_index import scan_image_folder
    from pipeline.core.read import load_rgb
    from pipeline.core.shards import scan_root

    ref = scan_image_folder(sets["folder"])
    index = scan_root(sets["folder"].as_uri())
    assert index.classes == ref.classes
    assert [(r.path, r.label) for r in index.records] == [("file://" + r.path, r.label) for r in ref.records]
    np.testing.assert_array_equal(load_rgb(index.records[0].path, 16), load_rgb(ref.records[0].path, 16))
