"""`semdistill export` round trips (export, read back, identical pixels and labels)."""

from __future__ import annotations

import importlib.util
import io
import json
import tarfile

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from pipeline.cli import build_parser, main
from pipeline.core.write import DistilledSetWriter
from pipeline.diver.inputs import PRESETS, load_stage1
from pipeline.export import export_set

CLASSES = ["n01440764", "n02102040", "n03000684"]
MEAN, STD = PRESETS["cifar10"]


@pytest.fixture
def distilled(tmp_path):
    """A DIVER-like set written by the project's own writer (2 images per class), results.md beside it."""
    rng = np.random.default_rng(0)
    root = tmp_path / "run" / "diver"
    writer = DistilledSetWriter(root, "diver", {"seed": 42, "gamma": 0.1, "input": "/data/mtt/ipc2",
                                                "normalization": {"mean": MEAN, "std": STD}})
    pixels = {}
    for label, cid in enumerate(CLASSES):
        for k in range(2):
            arr = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
            key = f"c{cid}_i{k:03d}"
            writer.add(key, cid, label, arr, {"index": k, "seed": 1000 + 10 * label + k})
            pixels[key] = arr
    (tmp_path / "run" / "results.md").write_text("# Results\n\n| set | student | acc |\n|---|---|---|\n"
                                                 "| diver | convnet | 31.5 +- 0.4 |\n")
    return root, pixels


def _decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def test_hf_parquet_round_trip_and_card(distilled, tmp_path):
    root, pixels = distilled
    files = export_set(root, "hf", tmp_path / "hf", shard_size=4)
    assert [f.name for f in files] == ["train-00000-of-00002.parquet", "train-00001-of-00002.parquet"]
    table = pq.read_table([str(f) for f in files])  # pyarrow; `datasets` below when installed
    rows = table.to_pylist()
    assert [r["key"] for r in rows] == sorted(pixels, key=lambda k: (CLASSES.index(k[1:10]), k))
    for r in rows:
        assert np.array_equal(_decode(r["image"]["bytes"]), pixels[r["key"]])
        assert CLASSES[r["label"]] == r["class_id"] and r["image"]["path"].startswith(r["class_id"] + "/")
    assert [r["seed"] for r in rows] == [1000, 1001, 1010, 1011, 1020, 1021]
    features = json.loads(pq.read_schema(files[0]).metadata[b"huggingface"])["info"]["features"]
    assert features["label"] == {"names": CLASSES,
                                 "_type": "ClassLabel"} and features["image"]["_type"] == "Image"
    card = (tmp_path / "hf" / "README.md").read_text()
    for text in ("method: `diver`", "source set: `/data/mtt/ipc2`", "run seed: `42`", "| `gamma` | `0.1` |",
                 "| diver | convnet | 31.5 +- 0.4 |", "path: data/train-*", "'2': n03000684"):
        assert text in card, text


@pytest.mark.skipif(importlib.util.find_spec("datasets") is None, reason="`datasets` is not installed")
def test_hf_export_loads_with_datasets(distilled, tmp_path):
    from datasets import load_dataset

    root, pixels = distilled
    export_set(root, "hf", tmp_path / "hf")
    ds = load_dataset("parquet", data_files=str(tmp_path / "hf" / "data" / "*.parquet"), split="train")
    assert ds.features["label"].names == CLASSES
    assert np.array_equal(np.asarray(ds[0]["image"].convert("RGB")), pixels[ds[0]["key"]])


def test_webdataset_round_trip(distilled, tmp_path):
    root, pixels = distilled
    files = export_set(root, "webdataset", tmp_path / "wds", shard_size=5)
    assert [f.name for f in files] == ["shard-000000.tar", "shard-000001.tar"]
    members: dict[str, dict[str, bytes]] = {}
    for f in files:
        with tarfile.open(f) as tar:
            for m in tar.getmembers():
                stem, ext = m.name.split(".", 1)
                members.setdefault(stem, {})[ext] = tar.extractfile(m).read()
    assert sorted(members) == sorted(pixels)
    for key, parts in members.items():
        assert np.array_equal(_decode(parts["png"]), pixels[key])
        meta = json.loads(parts["json"])
        assert int(parts["cls"]) == meta["label"] == CLASSES.index(meta["class_id"])
    assert json.loads((tmp_path / "wds" / "classes.json").read_text()) == CLASSES


def test_pt_round_trip_through_our_reader(distilled, tmp_path):
    root, pixels = distilled
    export_set(root, "pt", tmp_path / "pt")  # auto: the stage-1 normalisation in the manifest (CIFAR-10's)
    raw = torch.load(tmp_path / "pt" / "images_best.pt", weights_only=True)
    labels = torch.load(tmp_path / "pt" / "labels_best.pt", weights_only=True)
    assert raw.dtype == torch.float32 and raw.shape == (6, 3, 16, 16) and float(raw.min()) < -1.0
    assert labels.dtype == torch.long and labels.tolist() == [0, 0, 1, 1, 2, 2]
    s = load_stage1(tmp_path / "pt")  # mean/std and class ids from the files beside the tensors
    assert s.fmt == "mtt" and s.classes == CLASSES and s.named
    assert s.normalization == {"mean": pytest.approx(MEAN), "std": pytest.approx(STD)}
    keys = sorted(pixels, key=lambda k: (CLASSES.index(k[1:10]), k))
    got = (s.images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    assert all(np.array_equal(got[i], pixels[k]) for i, k in enumerate(keys))
    # the DC/MTT evaluation code normalises its test set the same way: x_norm = (x - mean) / std
    x0 = torch.from_numpy(pixels[keys[0]]).permute(2, 0, 1).float() / 255.0
    torch.testing.assert_close(raw[0], (x0 - torch.tensor(MEAN).view(3, 1,
                                                                     1)) / torch.tensor(STD).view(3, 1, 1))
    export_set(root, "pt", tmp_path / "pt01", norm="none")
    plain = torch.load(tmp_path / "pt01" / "images_best.pt", weights_only=True)
    assert float(plain.min()) >= 0.0 and float(plain.max()) <= 1.0


def test_imagefolder_round_trip(distilled, tmp_path):
    root, pixels = distilled
    export_set(root, "imagefolder", tmp_path / "folder")
    for e in json.loads((root / "manifest.json").read_text())["images"]:
        assert (tmp_path / "folder" / e["file"]).read_bytes() == (root / e["file"]).read_bytes()
    s = load_stage1(tmp_path / "folder")
    assert s.classes == CLASSES and s.labels.tolist() == [0, 0, 1, 1, 2, 2]
    got = (s.images * 255.0).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
    keys = sorted(pixels, key=lambda k: (CLASSES.index(k[1:10]), k))
    assert all(np.array_equal(got[i], pixels[k]) for i, k in enumerate(keys))


def test_cli_export_help_errors_and_corrupt_sets(distilled, tmp_path, capsys):
    root, _ = distilled
    help_text = build_parser()._subparsers._group_actions[0].choices["export"].format_help()
    assert "load_dataset" in help_text and "images_best.pt" in help_text and "--shard-size" in help_text
    assert main(["export", str(root), "--to", "pt", "--out", str(tmp_path / "o")]) == 0
    assert main(["export", str(root), "--to", "pt", "--out", str(tmp_path / "o")]) == 2
    assert "not empty" in capsys.readouterr().err
    assert main(["export", str(root), "--to", "hf", "--out", str(tmp_path / "o"), "--overwrite"]) == 0
    assert (tmp_path / "o" / "README.md").is_file() and not (tmp_path / "o" / "images_best.pt").exists()
    assert main(["export", str(root), "--to", "hf", "--out", str(root / "x")]) == 2
    assert "overlap" in capsys.readouterr().err
    victim = next(root.glob("*/*.png"))
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    assert main(["export", str(root), "--to", "webdataset", "--out", str(tmp_path / "w")]) == 2
    assert "sha256" in capsys.readouterr().err and not (tmp_path / "w").exists()  # nothing half-written


def test_ray_reads_the_exports(distilled, tmp_path, ray_local):
    """Ray Data's own readers take the hf parquet and the WebDataset shards."""
    import ray.data

    root, pixels = distilled
    export_set(root, "hf", tmp_path / "hf")
    shards = export_set(root, "webdataset", tmp_path / "wds", shard_size=4)
    rows = ray.data.read_parquet(str(tmp_path / "hf" / "data")).take_all()
    assert sorted(r["key"] for r in rows) == sorted(pixels)
    wds = ray.data.read_webdataset([str(f) for f in shards], decoder=None).take_all()
    assert sorted(r["__key__"] for r in wds) == sorted(pixels)
    for r in wds:
        assert np.array_equal(_decode(r["png"]), pixels[r["__key__"]])
