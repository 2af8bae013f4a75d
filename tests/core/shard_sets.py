"""Small real sets in three layouts: the same demo digits as an ImageFolder, HF parquet shards and WebDataset
tars."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

CLASSES = ["0", "1", "7"]


def _folder(demo_root: Path, dst: Path, per_class: int) -> dict[str, list[Path]]:
    """An ImageFolder of the first ``per_class`` demo digits of ``CLASSES`` (the files byte for byte)."""
    out = {}
    for c in CLASSES:
        (dst / c).mkdir(parents=True)
        out[c] = []
        for f in sorted((demo_root / "train" / c).iterdir())[:per_class]:
            (dst / c / f.name).write_bytes(f.read_bytes())
            out[c].append(dst / c / f.name)
    return out


def write_parquet_shards(files: dict[str, list[Path]], dst: Path, rows_per_shard: int,
                         bad: bytes | None = None, row_group_size: int = 2) -> dict[str, str]:
    """HF layout: ``data/train-0000k-of-0000n.parquet`` (image struct, label, ClassLabel names); key ->
    file."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    items = [(f, CLASSES.index(c)) for c in CLASSES for f in files[c]]
    if bad is not None:
        items.insert(1, (bad, 0))
    (dst / "data").mkdir(parents=True)
    feats = {"image": {"_type": "Image"}, "label": {"names": CLASSES, "_type": "ClassLabel"}}
    meta = {b"huggingface": json.dumps({"info": {"features": feats}}).encode()}
    n = (len(items) + rows_per_shard - 1) // rows_per_shard
    keys = {}
    for k in range(n):
        part = items[k * rows_per_shard:(k + 1) * rows_per_shard]
        shard = dst / "data" / f"train-{k:05d}-of-{n:05d}.parquet"
        images = [{"bytes": f if isinstance(f, bytes) else f.read_bytes(),
                   "path": "bad.png" if isinstance(f, bytes) else f.name} for f, _ in part]
        table = pa.table({"image": images, "label": pa.array([y for _, y in part], pa.int64())})
        pq.write_table(table.replace_schema_metadata(meta), shard, row_group_size=row_group_size)
        keys.update({f"{shard}#{i:09d}": (str(f) if isinstance(f, Path) else "bad") for i,
                     (f, _) in enumerate(part)})
    # another split beside it: data.split=train leaves it out
    pq.write_table(pa.table({"image": [{"bytes": b"x", "path": "v.png"}],
                             "label": [0]}).replace_schema_metadata(meta),
                   dst / "data" / "validation-00000-of-00001.parquet")
    return keys


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_wds_shards(files: dict[str, list[Path]], dst: Path, per_shard: int, bad: bytes | None = None
                     ) -> dict[str, str]:
    """``shard-00000k.tar`` with ``<key>.png`` + ``<key>.cls`` and ``classes.json``; key -> file."""
    items = [(f, CLASSES.index(c)) for c in CLASSES for f in files[c]]
    if bad is not None:
        items.insert(1, (bad, 0))
    dst.mkdir(parents=True)
    keys = {}
    for k in range(0, len(items), per_shard):
        shard = dst / f"shard-{k // per_shard:06d}.tar"
        with tarfile.open(shard, "w") as tar:
            for f, y in items[k:k + per_shard]:
                key = "bad" if isinstance(f, bytes) else f"{CLASSES[y]}_{f.stem}"
                _add(tar, f"{key}.png", f if isinstance(f, bytes) else f.read_bytes())
                _add(tar, f"{key}.cls", str(y).encode())
                keys[f"{shard}#{key}"] = "bad" if isinstance(f, bytes) else str(f)
    (dst / "classes.json").write_text(json.dumps(CLASSES))
    return keys
