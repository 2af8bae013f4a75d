"""Real sets held as parquet shards, WebDataset tars or an ImageFolder in object storage.

Every format becomes the same ``ImageIndex`` as ``scan_image_folder`` gives, so every stage sees the
same records whatever the format. A record's ``path`` is a key that names where its bytes live:

- ImageFolder: the file's path (local) or URI (``s3://``, ``gs://``, ``file://``);
- parquet (the Hugging Face image layout: ``image`` struct with ``bytes``/``path``, integer ``label``):
  ``<shard>.parquet#<row>`` (row zero-padded to 9 digits, so keys sort in row order);
- WebDataset (``<key>.jpg|png`` with ``<key>.cls``): ``<shard>.tar#<key>``.

The scans read labels and keys through Ray Data's own readers (``ray.data.read_parquet``,
``ray.data.read_webdataset``) over pyarrow filesystems, as Ray Data resolves URIs; decoding reads one
record's bytes with ``read_image_bytes`` (a parquet row group, a tar member), cached per process.
Class ids: the ``ClassLabel`` names in the parquet schema metadata, or ``classes.json`` (a list indexed
by label, as ``semdistill export --to webdataset`` writes) beside the shards, else the label as text.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import tarfile
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

from pipeline.core.image_index import (
    DEFAULT_EXTENSIONS,
    ImageIndex,
    ImageRecord,
    check_requested_classes,
    scan_image_folder,
)
from pipeline.errors import ConfigError, DataError

FORMATS = ("auto", "imagefolder", "parquet", "webdataset")
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp")
_KEY = re.compile(r"^(.+\.(?:parquet|tar))#([^.#]+)$")
ROW_DIGITS = 9


def is_uri(path: str) -> bool:
    return "://" in str(path)


def shard_key(path: str) -> tuple[str, str] | None:
    """``(shard, row-or-key)`` for a shard record key, ``None`` for a plain file path or URI."""
    m = _KEY.match(str(path))
    return (m.group(1), m.group(2)) if m else None


_FS: dict[str, Any] = {}


def filesystem(path: str) -> tuple[Any, str]:
    """The pyarrow filesystem and in-filesystem path of a local path or URI (cached per bucket)."""
    # heavy: pyarrow (not loaded when this module is imported)
    import pyarrow.fs as pafs

    if not is_uri(path):
        return pafs.LocalFileSystem(), os.fspath(path)
    scheme, rest = str(path).split("://", 1)
    head = f"{scheme}://{rest.split('/', 1)[0]}"
    if head not in _FS:
        try:
            _FS[head] = pafs.FileSystem.from_uri(str(path))[0]
        except Exception as err:  # noqa: BLE001  (pyarrow raises several types for unknown schemes)
            raise ConfigError(f"data.root {path}: no pyarrow filesystem for it ({err})") from None
    return _FS[head], rest if scheme in ("file", "s3", "gs",
                                         "gcs") else pafs.FileSystem.from_uri(str(path))[1]


def _join(root: str, rel: str) -> str:
    return root.rstrip("/") + "/" + rel if is_uri(root) else os.path.join(root, rel)


def list_files(root: str, recursive: bool = True) -> list[str]:
    """Files under ``root`` (its own spelling: path or URI), sorted, hidden ones left out; one listing
    call."""
    # heavy: pyarrow (not loaded when this module is imported)
    import pyarrow.fs as pafs

    fs, base = filesystem(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"dataset root not found: {root}")
    if info.type == pafs.FileType.File:
        return [root]
    out = []
    for f in fs.get_file_info(pafs.FileSelector(base, recursive=recursive)):
        rel = os.path.relpath(f.path, base).replace(os.sep, "/")
        if f.type == pafs.FileType.File and not any(p.startswith(".") for p in rel.split("/")):
            out.append(_join(root, rel))
    return sorted(out)


def detect_format(root: str, fmt: str = "auto") -> str:
    """``fmt`` unless ``auto``: parquet / webdataset for shards in ``root`` (or ``root/data``), else
    imagefolder.

    Shards beside folders other than ``data`` are ambiguous (an ImageFolder with a stray tar?): a
    ``ConfigError`` asks for ``data.format``.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {list(FORMATS)}, got {fmt!r}")
    if fmt != "auto":
        return fmt
    # heavy: pyarrow (not loaded when this module is imported)
    import pyarrow.fs as pafs

    fs, base = filesystem(root)
    info = fs.get_file_info(base)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"dataset root not found: {root}")
    if info.type == pafs.FileType.File:
        entries = [info]
    else:
        entries = [f for f in fs.get_file_info(pafs.FileSelector(base))
                   if not os.path.basename(f.path).startswith(".")]
    dirs = {os.path.basename(f.path) for f in entries if f.type == pafs.FileType.Directory}
    names = [f.path for f in entries if f.type == pafs.FileType.File]
    if "data" in dirs and not any(n.endswith((".parquet", ".tar")) for n in names):
        sub = fs.get_file_info(pafs.FileSelector(base.rstrip("/") + "/data"))
        # the Hugging Face repo layout: data/train-*.parquet
        if any(f.path.endswith(".parquet") for f in sub):
            return "parquet"
    for ext, name in ((".parquet", "parquet"), (".tar", "webdataset")):
        if any(n.endswith(ext) for n in names):
            if dirs - {"data"}:
                raise ConfigError(f"data.root {root} holds *{ext} files and folders {sorted(dirs)[:5]}: "
                                  f"set data.format to {name} or imagefolder")
            return name
    return "imagefolder"


def list_shards(root: str, ext: str, split: str | None = "train") -> list[str]:
    """The ``*.<ext>`` shards under ``root``; where shards of several splits sit together, only
    ``split``'s."""
    shards = [f for f in list_files(root) if f.endswith(ext)]
    if not shards:
        raise DataError(f"no *{ext} shards under {root}")
    prefix = {os.path.basename(s).split("-")[0] for s in shards}
    if split and len(prefix) > 1 and split in prefix:
        shards = [s for s in shards if os.path.basename(s).split("-")[0] == split]
    return shards


def build_index(root: str, items: Iterable[tuple[str, str, int]], classes: list[str] | None,
                max_per_class: int | None, skipped: list[dict[str, str]]):
    """The ``ImageIndex`` of ``(key, class id, dataset label)`` items: classes in label order, labels
    0..K-1."""
    by_class: dict[str, list[str]] = {}
    order: dict[str, int] = {}
    for key, cid, label in items:
        order.setdefault(cid, label)
        by_class.setdefault(cid, []).append(key)
    if classes is not None:
        check_requested_classes(classes, by_class, f"in {root}")
        by_class = {c: by_class[c] for c in classes}
    kept = sorted(by_class, key=lambda c: (order[c], c))
    if not kept:
        raise DataError(f"no labelled images in {root}")
    records = []
    for label, cid in enumerate(kept):
        keys = sorted(by_class[cid])
        records += [ImageRecord(k, cid, label) for k in keys[:max_per_class]]
    return ImageIndex(root, kept, records, skipped)


def _hf_class_names(shard: str) -> list[str] | None:
    """The ``ClassLabel`` names of the ``label`` feature in a Hugging Face parquet shard's schema metadata."""
    # heavy: pyarrow (not loaded when this module is imported)
    import pyarrow.parquet as pq

    fs, p = filesystem(shard)
    with fs.open_input_file(p) as f:
        meta = pq.read_schema(f).metadata or {}
    try:
        feats = json.loads(meta[b"huggingface"])["info"]["features"]
        names = feats["label"]["names"]
        return [str(n) for n in names] if isinstance(names, list) else None
    except (KeyError, TypeError, ValueError):
        return None


def _classes_json(root: str) -> list[str] | None:
    """``classes.json`` beside the shards (a list: class id per label), if there is one."""
    fs, base = filesystem(root)
    try:
        with fs.open_input_stream(base.rstrip("/") + "/classes.json") as f:
            table = json.loads(f.read().decode("utf-8"))
    except (FileNotFoundError, OSError):
        return None
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(f"{_join(root, 'classes.json')} cannot be read: {err}") from None
    return [str(c) for c in table] if isinstance(table, list) else None


def _class_id(label: int, names: list[str] | None) -> str:
    return names[label] if names is not None and 0 <= label < len(names) else str(label)


def _preserving_order():
    """A context in which Ray Data yields rows in file order (row numbers come from that order)."""
    # heavy: ray (not loaded when this module is imported)
    import ray.data

    @contextlib.contextmanager
    def ctx():
        dc = ray.data.DataContext.get_current()
        old = dc.execution_options.preserve_order
        dc.execution_options.preserve_order = True
        try:
            yield
        finally:
            dc.execution_options.preserve_order = old
    return ctx()


def scan_parquet(root: str, classes: list[str] | None = None, max_per_class: int | None = None,
                 split: str | None = "train", ray_cfg: Any = None):
    """Index Hugging Face image parquet shards: ``ray.data.read_parquet`` of the ``label`` column."""
    # heavy: pyarrow, ray, pydantic, yaml (not loaded when this module is imported)
    import pyarrow.parquet as pq
    import ray.data

    from pipeline.core.ray_setup import ray_session

    shards = list_shards(root, ".parquet", split)
    fs, _ = filesystem(shards[0])
    with fs.open_input_file(filesystem(shards[0])[1]) as f:
        cols = pq.read_schema(f).names
    if "label" not in cols or "image" not in cols:
        raise DataError(f"{shards[0]}: expected the Hugging Face image layout (columns image, label), "
                        f"got columns {cols}")
    names = _hf_class_names(shards[0]) or _classes_json(root)
    uri_of = {filesystem(s)[1]: s for s in shards}
    items, skipped = [], []
    with ray_session(ray_cfg), _preserving_order():
        ds = ray.data.read_parquet([filesystem(s)[1] for s in shards], filesystem=fs, columns=["label"],
                                   include_paths=True)
        row: dict[str, int] = {}
        for b in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            for p, lab in zip(b.column("path").to_pylist(), b.column("label").to_pylist()):
                shard = uri_of.get(p, p)
                i = row.get(shard, 0)
                row[shard] = i + 1
                key = f"{shard}#{i:0{ROW_DIGITS}d}"
                if lab is None or int(lab) < 0:
                    skipped.append({"path": key, "reason": f"no label (row {i} of shard {shard})"})
                    continue
                items.append((key, _class_id(int(lab), names), int(lab)))
    return build_index(root, items, classes, max_per_class, skipped)


def _wds_summary(batch: dict[str, Any]) -> dict[str, Any]:
    """Ray ``map_batches``: per sample its shard, key, class text and image suffix (the bytes stay behind)."""
    n = len(batch["__key__"])
    suffix = [""] * n
    for s in IMAGE_SUFFIXES:
        col = batch.get(s)
        if col is not None:
            for i in range(n):
                if not suffix[i] and col[i] is not None:
                    suffix[i] = s
    cls = batch.get("cls")
    if cls is None:
        text = [""] * n
    else:
        text = [(bytes(c).decode("utf-8", "replace").strip() if c is not None else "") for c in cls]
    return {"path": list(batch["path"]), "key": list(batch["__key__"]), "cls": text, "suffix": suffix}


def scan_webdataset(root: str, classes: list[str] | None = None, max_per_class: int | None = None,
                    split: str | None = "train", ray_cfg: Any = None):
    """Index WebDataset ``.tar`` shards: ``ray.data.read_webdataset`` (``__key__``, ``jpg``/``png``,
    ``cls``)."""
    # heavy: ray, pydantic, yaml (not loaded when this module is imported)
    import ray.data

    from pipeline.core.ray_setup import ray_session

    shards = list_shards(root, ".tar", split)
    names = _classes_json(root)
    fs, _ = filesystem(shards[0])
    uri_of = {filesystem(s)[1]: s for s in shards}
    items, skipped = [], []
    with ray_session(ray_cfg):
        ds = ray.data.read_webdataset([filesystem(s)[1] for s in shards], filesystem=fs, decoder=None,
                                      include_paths=True)
        ds = ds.map_batches(_wds_summary, batch_format="numpy", batch_size=256)
        for b in ds.iter_batches(batch_size=None, batch_format="numpy"):
            for p, k, c, s in zip(b["path"], b["key"], b["cls"], b["suffix"]):
                shard = uri_of.get(str(p), str(p))
                key = f"{shard}#{k}"
                if not s:
                    skipped.append({"path": key, "reason": f"no image ({'/'.join(IMAGE_SUFFIXES)}) for key "
                                                           f"{k} in shard {shard}"})
                elif not c:
                    skipped.append({"path": key, "reason": f"no cls for key {k} in shard {shard}"})
                else:
                    label = int(c) if c.lstrip("-").isdigit() else -1
                    cid = _class_id(label, names) if label >= 0 else c  # a text class is its own id
                    items.append((key, cid, label if label >= 0 else 1 << 40))
    return build_index(root, items, classes, max_per_class, skipped)


def scan_uri_folder(root: str, extensions: tuple[str, ...], classes: list[str] | None = None,
                    max_per_class: int | None = None, allow_empty_classes: bool = False):
    """An ImageFolder behind a URI: one recursive listing, classes = first path part (sorted)."""
    exts = tuple(e.lower() for e in extensions)
    files = list_files(root)
    by_class: dict[str, list[str]] = {}
    skipped: list[dict[str, str]] = []
    prefix = len(root.rstrip("/")) + 1
    for f in files:
        parts = f[prefix:].split("/")
        if len(parts) < 2:
            continue
        if not f.lower().endswith(exts):
            skipped.append({"path": f, "reason": "not an image file extension"})
            continue
        by_class.setdefault(parts[0], []).append(f)
    found = sorted(by_class)
    if classes is not None:
        missing = [c for c in classes if c not in by_class]
        if missing:
            raise DataError(f"classes not found under {root}: {missing[:10]}")
        found = sorted(classes)
    if not found:
        raise DataError(f"no class folders under {root} (expected {root}/<class_id>/<image>)")
    records = [ImageRecord(f, c, i) for i, c in enumerate(found) for f in by_class[c][:max_per_class]]
    return ImageIndex(root, found, records, skipped)


def scan_root(root: str, fmt: str = "auto", extensions: tuple[str, ...] | list[str] | None = None,
              classes: list[str] | None = None, max_per_class: int | None = None,
              follow_symlinks: bool = True,
              allow_empty_classes: bool = False, split: str | None = "train", ray_cfg: Any = None):
    """Scan a real set in any ``data.format`` (``auto`` detects it) from a local path or URI."""
    root = str(root)
    exts = tuple(extensions or DEFAULT_EXTENSIONS)
    kind = detect_format(root, fmt)
    if kind == "parquet":
        return scan_parquet(root, classes, max_per_class, split, ray_cfg)
    if kind == "webdataset":
        return scan_webdataset(root, classes, max_per_class, split, ray_cfg)
    if is_uri(root):
        return scan_uri_folder(root, exts, classes, max_per_class, allow_empty_classes)
    return scan_image_folder(root, exts, classes=classes, max_per_class=max_per_class,
                             follow_symlinks=follow_symlinks, allow_empty_classes=allow_empty_classes)


def scan_data(data: Any, ray_cfg: Any = None, allow_empty_classes: bool = False):
    """``scan_root`` with the settings of a ``DataConfig``."""
    if not data.root:
        raise ConfigError("data.root is not set: this needs the real training set")
    return scan_root(data.root, data.format, data.extensions, data.classes, data.max_per_class,
                     data.follow_symlinks, allow_empty_classes, data.split, ray_cfg)


class _Lru(OrderedDict):
    def __init__(self, size: int) -> None:
        super().__init__()
        self.size = size

    def keep(self, key: Any, value: Any) -> Any:
        self[key] = value
        while len(self) > self.size:
            self.popitem(last=False)
        return value


_ROW_GROUPS = _Lru(4)   # (shard, row group) -> image cells
_GROUP_ROWS = _Lru(64)  # shard -> first row of each row group
_TARS = _Lru(8)         # shard -> {key: {suffix: (offset, size)}}


def _parquet_cell(shard: str, row: int) -> Any:
    # heavy: pyarrow (not loaded when this module is imported)
    import pyarrow.parquet as pq

    fs, p = filesystem(shard)
    if shard not in _GROUP_ROWS:
        with fs.open_input_file(p) as f:
            md = pq.ParquetFile(f).metadata
            starts, n = [], 0
            for g in range(md.num_row_groups):
                starts.append(n)
                n += md.row_group(g).num_rows
        _GROUP_ROWS.keep(shard, (starts, n))
    starts, n = _GROUP_ROWS[shard]
    if not 0 <= row < n:
        raise KeyError(f"row {row} not in shard {shard} ({n} rows)")
    g = max(i for i, s in enumerate(starts) if s <= row)
    if (shard, g) not in _ROW_GROUPS:
        with fs.open_input_file(p) as f:
            col = pq.ParquetFile(f).read_row_group(g, columns=["image"]).column("image").to_pylist()
        _ROW_GROUPS.keep((shard, g), col)
    return _ROW_GROUPS[(shard, g)][row - starts[g]]


def _tar_members(shard: str) -> dict[str, dict[str, tuple[int, int]]]:
    if shard not in _TARS:
        fs, p = filesystem(shard)
        members: dict[str, dict[str, tuple[int, int]]] = {}
        with fs.open_input_file(p) as f, tarfile.open(fileobj=f, mode="r:") as tar:
            for m in tar:
                if m.isfile():
                    base = m.name.rsplit("/", 1)[-1]
                    key, _, suffix = base.partition(".")
                    members.setdefault(m.name[: len(m.name) - len(base)] + key, {})[suffix.lower()] = (
                        m.offset_data, m.size)
        _TARS.keep(shard, members)
    return _TARS[shard]


def read_image_bytes(path: str) -> bytes:
    """The encoded image of a record key (parquet row, tar member) or of a file URI.

    Raises ``FileNotFoundError`` naming the shard and key when it is not there.
    """
    sk = shard_key(path)
    if sk is None:
        fs, p = filesystem(path)
        with fs.open_input_stream(p) as f:
            return f.read()
    shard, frag = sk
    if shard.endswith(".parquet"):
        try:
            cell = _parquet_cell(shard, int(frag))
        except KeyError as err:
            raise FileNotFoundError(str(err).strip("'\"")) from None
        if isinstance(cell, (bytes, bytearray)):
            return bytes(cell)
        data = cell.get("bytes") if isinstance(cell, dict) else None
        if data is None:
            raise FileNotFoundError(f"no image bytes in row {int(frag)} of shard {shard}")
        return bytes(data)
    entry = _tar_members(shard).get(frag, {})
    suffix = next((s for s in IMAGE_SUFFIXES if s in entry), None)
    if suffix is None:
        raise FileNotFoundError(f"no image for key {frag} in shard {shard}")
    offset, size = entry[suffix]
    fs, p = filesystem(shard)
    with fs.open_input_file(p) as f:
        f.seek(offset)
        return f.read(size)


def image_source(path: str) -> str | io.BytesIO:
    """What ``PIL.Image.open`` reads for a record: the local file itself, else its bytes."""
    if shard_key(path) is None and not is_uri(path):
        return path
    return io.BytesIO(read_image_bytes(path))
