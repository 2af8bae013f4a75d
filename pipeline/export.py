"""``semdistill export DIR --to hf | webdataset | pt | imagefolder --out OUT``: a distilled set in other
tools' layouts
(``--what captions | prototypes``: an EDITS run's artefacts instead, ``pipeline/export_edits.py``).

``DIR`` is a semdistill set (ImageFolder + ``manifest.json``). Every format keeps the image order of the
manifest (by label, then key) and the class order of the labels:
- ``hf``: ``data/train-*.parquet`` in the Hugging Face image-dataset layout (``image`` struct with the file's
  own ``bytes`` and ``path``, integer ``label`` with the class names as a ``ClassLabel`` in the schema
  metadata) plus a ``README.md`` dataset card; ``datasets.load_dataset("parquet", data_files=...)`` or
  ``load_dataset(OUT)`` loads it, ``huggingface_hub.upload_folder`` pushes it;
- ``webdataset``: ``shard-000000.tar`` ... with ``<key>.png|jpg``, ``<key>.cls`` (label) and ``<key>.json``;
- ``pt``: the DC/MTT tensors ``images_best.pt`` (float ``[N, 3, H, W]``, normalised with ``--norm``) and
  ``labels_best.pt`` (int64 ``[N]``), ``normalization.json`` and ``classes.json`` beside them;
- ``imagefolder``: ``OUT/<class_id>/<file>``, the files byte for byte, with the manifest.
``OUT`` is written in a temporary sibling folder and swapped in whole.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import ConfigError, DataError

FORMATS = ("hf", "webdataset", "pt", "imagefolder")
NORMS = ("auto", "imagenet", "cifar10", "cifar100", "none")


@dataclass
class SetFiles:
    """A distilled set as listed by its manifest: files in order, labels, class names."""

    root: Path
    manifest: dict[str, Any]
    entries: list[dict[str, Any]]
    labels: list[int]  # index into ``classes``
    classes: list[str]

    def read(self, i: int) -> bytes:
        """The bytes of image ``i``, checked against the manifest's sha256."""
        e = self.entries[i]
        path = self.root / e["file"]
        if not path.is_file():
            raise DataError(f"{path} is listed in {self.root / 'manifest.json'} but missing: "
                            f"run `semdistill verify {self.root}`")
        data = path.read_bytes()
        if e.get("sha256") and hashlib.sha256(data).hexdigest() != e["sha256"]:
            raise DataError(f"{path} does not match its manifest sha256 (corrupt?): run `semdistill verify "
                            f"{self.root}`")
        return data


def load_set(root: str | Path) -> SetFiles:
    """Read ``manifest.json``; classes follow the manifest labels (a class id per label)."""
    # heavy: PIL (not loaded when this module is imported)
    from pipeline.core.write import read_manifest

    root = Path(root)
    man = read_manifest(root)
    entries = sorted(man["images"], key=lambda e: (int(e["label"]), e["key"]))
    if not entries:
        raise DataError(f"{root / 'manifest.json'} lists no images: nothing to export")
    by_label: dict[int, str] = {}
    for e in entries:
        if by_label.setdefault(int(e["label"]), str(e["class_id"])) != str(e["class_id"]):
            raise DataError(f"{root}: label {e['label']} names two class ids "
                            f"({by_label[int(e['label'])]!r}, {e['class_id']!r})")
    order = sorted(by_label)
    pos = {lab: i for i, lab in enumerate(order)}
    return SetFiles(root, man, entries, [pos[int(e["label"])] for e in entries], [by_label[k] for k in order])


def hf_features(classes: list[str], with_seed: bool) -> dict[str, Any]:
    """The ``datasets`` features of the exported table (``Image``, ``ClassLabel``, strings)."""
    feats: dict[str, Any] = {"image": {"_type": "Image"}, "label": {"names": list(classes),
                                                                    "_type": "ClassLabel"},
                             "key": {"dtype": "string", "_type": "Value"},
                             "class_id": {"dtype": "string", "_type": "Value"}}
    if with_seed:
        feats["seed"] = {"dtype": "int64", "_type": "Value"}
    return feats


def write_hf(s: SetFiles, out: Path, shard_size: int) -> list[Path]:
    """Parquet shards ``data/train-0000i-of-0000n.parquet`` and the dataset card; returns the shards."""
    # heavy: pyarrow (not loaded when this module is imported)
    import pyarrow as pa
    import pyarrow.parquet as pq

    with_seed = all(isinstance(e.get("seed"), int) for e in s.entries)
    meta = {b"huggingface": json.dumps({"info": {"features": hf_features(s.classes, with_seed)}}).encode()}
    n = len(s.entries)
    shards = max(1, -(-n // shard_size))
    paths = []
    (out / "data").mkdir(parents=True, exist_ok=True)
    for k in range(shards):
        idx = range(k * shard_size, min(n, (k + 1) * shard_size))
        cols: dict[str, Any] = {
            "image": pa.array([{"bytes": s.read(i), "path": s.entries[i]["file"]} for i in idx],
                              type=pa.struct([("bytes", pa.binary()), ("path", pa.string())])),
            "label": pa.array([s.labels[i] for i in idx], type=pa.int64()),
            "key": pa.array([str(s.entries[i]["key"]) for i in idx], type=pa.string()),
            "class_id": pa.array([s.classes[s.labels[i]] for i in idx], type=pa.string()),
        }
        if with_seed:
            cols["seed"] = pa.array([int(s.entries[i]["seed"]) for i in idx], type=pa.int64())
        table = pa.table(cols).replace_schema_metadata(meta)
        path = out / "data" / f"train-{k:05d}-of-{shards:05d}.parquet"
        pq.write_table(table, path)
        paths.append(path)
    (out / "README.md").write_text(dataset_card(s, n, with_seed), encoding="utf-8")
    return paths


def _config_beside(root: Path) -> dict[str, Any]:
    """The run's ``config.yaml`` (``semdistill run`` writes it in output.dir, one or two levels up)."""
    # start-up: yaml (not loaded when this module is imported)
    import yaml

    for folder in (root, root.parent, root.parent.parent):
        if (folder / "config.yaml").is_file():
            try:
                return yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8")) or {}
            except yaml.YAMLError:
                return {}
    return {}


def _results_beside(root: Path) -> str | None:
    """``results.md`` of ``semdistill eval`` (in the set) or of the run report (its parent)."""
    for folder in (root, root.parent):
        if (folder / "results.md").is_file():
            text = (folder / "results.md").read_text(encoding="utf-8").strip()
            return text.removeprefix("# Results").strip()
    return None


def dataset_card(s: SetFiles, n: int, with_seed: bool) -> str:
    """``README.md``: the Hub's YAML header (features, splits, data files) and what made the set."""
    # start-up: yaml (not loaded when this module is imported)
    import yaml

    settings = s.manifest.get("settings") or {}
    method = s.manifest.get("method", "unknown")
    cfg = _config_beside(s.root)
    source = settings.get("input") or (cfg.get("data") or {}).get("root") or "not recorded"
    features = [{"name": "image", "dtype": "image"},
                {"name": "label", "dtype": {"class_label": {"names": {str(i): c for i,
                                                                      c in enumerate(s.classes)}}}},
                {"name": "key", "dtype": "string"}, {"name": "class_id", "dtype": "string"}]
    if with_seed:
        features.append({"name": "seed", "dtype": "int64"})
    header = {"dataset_info": {"features": features, "splits": [{"name": "train", "num_examples": n}]},
              "configs": [{"config_name": "default", "data_files": [{"split": "train",
                                                                     "path": "data/train-*"}]}],
              "tags": ["dataset-distillation", "synthetic", f"semdistill-{method}"]}
    counts = {c: s.labels.count(i) for i, c in enumerate(s.classes)}
    ipc = sorted(set(counts.values()))
    title = (f"# Distilled set: {method}, {n} images, {len(s.classes)} classes, "
             f"{ipc[0] if len(ipc) == 1 else ipc} per class")
    seeds = f"- run seed: `{settings.get('seed', 'not recorded')}`" + (
        " (per-image seeds in the `seed` column)" if with_seed else "")
    lines = ["---", yaml.safe_dump(header, sort_keys=False).rstrip(), "---", "", title, "",
             f"- method: `{method}` (semdistill)", f"- source set: `{source}`", seeds,
             "", "## Settings", "", "| setting | value |", "|---|---|"]
    lines += [f"| `{k}` | `{json.dumps(v, default=str)}` |" for k, v in settings.items()]
    lines += ["", "## Evaluation", ""]
    results = _results_beside(s.root)
    lines += [results if results else "No `results.md` beside the set (run `semdistill eval`)."]
    lines += ["", "## Load", "", "```python", "from datasets import load_dataset",
              'ds = load_dataset("parquet", data_files="data/train-*.parquet", split="train")', "```", ""]
    return "\n".join(lines)


def _wds_key(key: str) -> str:
    # heavy: PIL (not loaded when this module is imported)
    from pipeline.core.write import safe_name

    return safe_name(key).replace(".", "_")  # WebDataset splits a member name at its first dot


def write_webdataset(s: SetFiles, out: Path, shard_size: int) -> list[Path]:
    """``shard-%06d.tar`` with ``<key>.<ext>``, ``<key>.cls`` and ``<key>.json`` per image."""
    keys = [_wds_key(e["key"]) for e in s.entries]
    if len(set(keys)) != len(keys):
        raise DataError(f"{s.root}: two keys become the same WebDataset key after removing dots and "
                        f"separators")
    paths = []
    for k in range(max(1, -(-len(keys) // shard_size))):
        path = out / f"shard-{k:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(k * shard_size, min(len(keys), (k + 1) * shard_size)):
                e = s.entries[i]
                ext = Path(e["file"]).suffix.lstrip(".").lower() or "png"
                meta = {"key": e["key"], "class_id": s.classes[s.labels[i]], "label": s.labels[i],
                        **({"seed": e["seed"]} if "seed" in e else {})}
                for name, data in ((f"{keys[i]}.{ext}", s.read(i)), (f"{keys[i]}.cls",
                                                                     str(s.labels[i]).encode()),
                                   (f"{keys[i]}.json", json.dumps(meta).encode())):
                    info = tarfile.TarInfo(name)
                    info.size, info.mtime, info.mode = len(data), 0, 0o644
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    (out / "classes.json").write_text(json.dumps(s.classes), encoding="utf-8")
    return paths


def export_norm(s: SetFiles, norm: str) -> tuple[list[float] | None, list[float] | None]:
    """``--norm``: auto = the stage-1 input's normalisation recorded in the manifest, else ImageNet's."""
    # heavy: PIL, torch (not loaded when this module is imported)
    from pipeline.diver.inputs import PRESETS

    if norm == "none":
        return None, None
    if norm == "auto":
        rec = (s.manifest.get("settings") or {}).get("normalization") or {}
        if rec.get("mean") is not None and rec.get("std") is not None:
            return list(rec["mean"]), list(rec["std"])
        norm = "imagenet"
    mean, std = PRESETS[norm]
    return list(mean), list(std)


def write_pt(s: SetFiles, out: Path, norm: str) -> list[Path]:
    """DC/MTT tensors: ``images_best.pt`` (normalised float32), ``labels_best.pt``, stats and classes
    beside."""
    # heavy: PIL, torch (not loaded when this module is imported)
    import torch
    from PIL import Image

    from pipeline.core.pixels import normalize, u8_hwc_to_unit_chw
    from pipeline.core.read import to_rgb
    from pipeline.core.write import atomic_torch_save
    from pipeline.diver.inputs import CLASSES_JSON, NORM_JSON

    arrays = [np.asarray(to_rgb(Image.open(io.BytesIO(s.read(i)))),
                         dtype=np.uint8) for i in range(len(s.entries))]
    shapes = sorted({a.shape for a in arrays})
    if len(shapes) > 1:
        raise DataError(f"{s.root}: images of several sizes {shapes[:3]}; the pt layout needs one [N, 3, H, "
                        f"W] tensor")
    x = u8_hwc_to_unit_chw(np.stack(arrays))
    mean, std = export_norm(s, norm)
    if mean is not None:
        x = normalize(x, mean, std)
    atomic_torch_save(out / "images_best.pt", x.float().contiguous())  # torch's full-disk error is unclear
    atomic_torch_save(out / "labels_best.pt", torch.tensor(s.labels, dtype=torch.long))
    (out / NORM_JSON).write_text(json.dumps({"mean": mean, "std": std}), encoding="utf-8")
    (out / CLASSES_JSON).write_text(json.dumps(s.classes), encoding="utf-8")
    return [out / "images_best.pt", out / "labels_best.pt"]


def write_imagefolder(s: SetFiles, out: Path) -> list[Path]:
    """``OUT/<class_id>/<file>`` byte for byte, plus the manifest (so ``semdistill verify OUT`` works)."""
    paths = []
    for i, e in enumerate(s.entries):
        path = out / e["file"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(s.read(i))
        paths.append(path)
    # heavy: PIL (not loaded when this module is imported)
    from pipeline.core.write import atomic_write_json

    atomic_write_json(out / "manifest.json", s.manifest)  # with any journal entries folded in
    return paths


def export_set(src: str | Path, to: str, out: str | Path, norm: str = "auto", shard_size: int = 1000,
               overwrite: bool = False) -> list[Path]:
    """Export the set at ``src`` as ``to`` into ``out`` (built aside and swapped in whole); returns the data
    files."""
    # heavy: PIL (not loaded when this module is imported)
    from pipeline.core.write import atomic_folder

    if to not in FORMATS:
        raise ConfigError(f"--to {to!r}: choose one of {' | '.join(FORMATS)}")
    if norm not in NORMS:
        raise ConfigError(f"--norm {norm!r}: choose one of {' | '.join(NORMS)}")
    if shard_size < 1:
        raise ConfigError("--shard-size must be at least 1")
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ConfigError(f"{out} exists and is not empty: choose another --out or pass --overwrite")
    s = load_set(src)
    a, b = out.resolve(), s.root.resolve()
    if a == b or b in a.parents or a in b.parents:
        raise ConfigError(f"--out {out} and the set {s.root} overlap: export to a folder outside it")
    with atomic_folder(out) as tmp:
        if to == "hf":
            files = write_hf(s, tmp, shard_size)
        elif to == "webdataset":
            files = write_webdataset(s, tmp, shard_size)
        elif to == "pt":
            files = write_pt(s, tmp, norm)
        else:
            files = write_imagefolder(s, tmp)
        names = [f.relative_to(tmp) for f in files]
    return [out / p for p in names]


def main(args: argparse.Namespace) -> int:
    files = export_set(args.dir, args.to, args.out, norm=args.norm, shard_size=args.shard_size,
                       overwrite=args.overwrite)
    print(f"exported {args.dir} as {args.to}: {len(files)} files in {args.out}")
    return 0
