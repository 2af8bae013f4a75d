"""Write a distilled set: ImageFolder + ``manifest.json``, every file atomically.

The manifest is the source of truth: an image counts as done only once its entry is in
the manifest, and an entry is recorded only after its image file exists. Entries land in
``manifest.json`` (replaced atomically) or, between those rewrites, in the append-only
``manifest.journal.jsonl`` beside it (one fsync'd append per flush, so a flush costs its batch,
not the whole set); ``read_manifest`` folds the journal in, and a resuming writer or ``finish``
folds it into ``manifest.json`` for good. A crash leaves at most an orphan ``.tmp`` file or a
torn last journal line (dropped: its image is redone), never a half-written image or manifest.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from pipeline.core.diskfull import DiskFullError, disk_full, find_disk_full, free_bytes, is_enospc
from pipeline.core.journal import append_records, read_journal
from pipeline.errors import DataError

MANIFEST = "manifest.json"
JOURNAL = "manifest.journal.jsonl"  # entries recorded since manifest.json was last rewritten
_PAUSE_AFTER_WRITE_S = [0.0]  # debug.pause_after_write_s of this driver (set_pause_after_write)


def set_pause_after_write(seconds: float) -> None:
    """``debug.pause_after_write_s``: sleep this long after each file the writers below finish (tests
    only)."""
    _PAUSE_AFTER_WRITE_S[0] = max(0.0, float(seconds))


def _written() -> None:
    if _PAUSE_AFTER_WRITE_S[0]:
        time.sleep(_PAUSE_AFTER_WRITE_S[0])
_SAFE = re.compile(r"[^A-Za-z0-9._+-]")


def safe_name(text: str) -> str:
    """A file-system-safe name for a class id or file stem; never escapes its folder."""
    name = _SAFE.sub("_", str(text)).strip("._")
    return name or "_"


def plain_component(text: str) -> bool:
    """True when ``text`` can be used verbatim as one path component inside a folder.

    Unicode and spaces are fine (real class folders have them); separators, ``.``/``..``,
    a leading dot, control characters and over-long names are not.
    """
    text = str(text)
    return (
        bool(text) and text not in (".", "..") and not text.startswith(".")
        and not any(c in text for c in "/\\") and not any(ord(c) < 32 or ord(c) == 127 for c in text)
        and len(text.encode("utf-8", "surrogateescape")) <= 200 and text == text.strip()
    )


def component_name(text: str) -> str:
    """A path component for a class id or key: the text itself when plain, else
    ``safe_name(text)`` plus a short hash, so distinct ids never share a folder and none escapes."""
    text = str(text)
    if plain_component(text):
        return text
    digest = hashlib.sha1(text.encode("utf-8", "surrogateescape")).hexdigest()[:8]
    return f"{safe_name(text)[:100]}-{digest}"


def _umask() -> int:
    """The process umask, read without changing it where Linux allows (os.umask would, briefly)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def _no_partial(tmp: str | os.PathLike, path: str | os.PathLike, needed: int) -> Iterator[None]:
    """Remove ``tmp`` on any failure; turn ``ENOSPC`` into ``DiskFullError`` naming ``path``."""
    try:
        yield
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if not isinstance(err, DiskFullError) and isinstance(err, Exception) and is_enospc(err):
            raise disk_full(path, needed) from None
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file in the same folder and ``os.replace``.

    The file gets the mode a plain ``open`` would give (0666 minus the umask), not
    ``mkstemp``'s private 0600, so a shared output folder stays readable to the team.
    A full disk leaves no partial file and raises ``DiskFullError``.
    """
    path = Path(path)
    fd, tmp = _temp_file_beside(path, lambda: len(data))
    with _no_partial(tmp, path, len(data)):
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _publish(tmp, path)
    _written()


def _temp_file_beside(path: Path, need_bytes: Callable[[], int]) -> tuple[int, str]:
    """A hidden temp file in ``path``'s folder (made if missing); a full disk raises ``DiskFullError``
    with ``need_bytes()`` (called only then)."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        if is_enospc(err):
            raise disk_full(path, need_bytes()) from None
        raise


def _publish(tmp: str, path: Path) -> None:
    """Give the finished temp file a plain ``open``'s mode (not ``mkstemp``'s 0600) and rename it over
    ``path``."""
    os.chmod(tmp, 0o666 & ~_umask())
    os.replace(tmp, path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_bytes(path, json.dumps(obj, indent=2, sort_keys=False, default=str).encode())


def atomic_save_image(path: str | os.PathLike, image: np.ndarray | Image.Image) -> str:
    """Save an image (uint8 HxWx3 array or PIL) atomically; the format follows the suffix.

    Returns the sha256 of the bytes written (the manifest keeps it to detect corruption).
    """
    im = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, dtype=np.uint8))
    buf = io.BytesIO()
    fmt = "JPEG" if str(path).lower().endswith((".jpg", ".jpeg")) else "PNG"
    im.save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    data = buf.getvalue()
    atomic_write_bytes(path, data)
    return hashlib.sha256(data).hexdigest()


class DistilledSetWriter:
    """Writes ``out/<class_id>/<key>.png`` plus ``out/manifest.json``; resumes from the manifest.

    ``key`` identifies one output image (e.g. ``c3_i07``); writing a key already in the
    manifest is a no-op, so a re-run after a crash neither loses nor duplicates images.
    ``flush`` rewrites ``manifest.json`` only while it lists no image yet or when anything but the
    image list changed (settings, expected counts, completion); otherwise it appends the new
    entries to the journal, so its cost is bounded by the batch.
    """

    def __init__(self, out_dir: str | os.PathLike, method: str, settings: dict[str, Any] | None = None,
                 image_format: str = "png") -> None:
        self.out_dir = Path(out_dir)
        self.image_format = image_format
        self.manifest_path = self.out_dir / MANIFEST
        self.journal_path = self.out_dir / JOURNAL
        self._pending: list[dict[str, Any]] = []  # entries added since the last flush
        self._written_header: dict[str, Any] | None = None  # manifest.json minus its images, as last written
        self._written_images = 0
        if self.manifest_path.exists():
            self.manifest = read_manifest(self.out_dir)
            if self.manifest.get("method") != method:
                raise DataError(
                    f"{self.manifest_path} belongs to method {self.manifest.get('method')!r}, "
                    f"not {method!r}; choose another output.dir"
                )
        else:
            self.manifest = {"method": method, "settings": settings or {}, "images": []}
        # an entry whose file vanished is not done: drop it so a re-run writes it again
        self.dropped = [e for e in self.manifest["images"] if not (self.out_dir / e["file"]).is_file()]
        if self.dropped:
            self.manifest["images"] = [e for e in self.manifest["images"] if e not in self.dropped]
        self._done = {e["key"] for e in self.manifest["images"]}
        self._files = {e["file"]: e["key"] for e in self.manifest["images"]}
        # fold a killed run's journal (one without a manifest is stale: dropped) and forget vanished entries
        if self.journal_path.exists() or self.dropped:
            self._compact()
        elif self.manifest_path.exists():
            self._written_header = copy.deepcopy(_header(self.manifest))
            self._written_images = len(self.manifest["images"])

    def set_expected(self, counts: dict[str, int]) -> None:
        """Record how many images each class should end with (``semdistill verify`` checks it)."""
        self.manifest["expected_counts"] = {str(k): int(v) for k, v in counts.items()}
        self.flush()

    def finish(self, summary: dict[str, Any] | None = None) -> None:
        """Mark the set complete (optionally with a run summary) and fold everything into
        ``manifest.json``."""
        self.manifest["complete"] = True
        if summary is not None:
            self.manifest["summary"] = summary
        self._compact()

    def close(self) -> None:
        """Fold the journal into ``manifest.json`` (without marking the set complete)."""
        if self._pending or self.journal_path.exists() or self._written_header is None:
            self._compact()

    def done(self, key: str) -> bool:
        return key in self._done

    @property
    def entries(self) -> list[dict[str, Any]]:
        """Every entry, in manifest order (by label, then key)."""
        self._sort()
        return self.manifest["images"]

    def add(self, key: str, class_id: str, label: int, image: np.ndarray | Image.Image,
            meta: dict[str, Any] | None = None, flush: bool = True) -> Path | None:
        """Write one image and its manifest entry; returns its path, or None if already done."""
        if key in self._done:
            return None
        folder = component_name(class_id)
        if folder != str(class_id):  # reported: the manifest maps every id that could not be a folder name
            self.manifest.setdefault("renamed_classes", {})[str(class_id)] = folder
        rel = Path(folder) / f"{component_name(key)}.{self.image_format}"
        if self._files.get(rel.as_posix(), key) != key:
            raise DataError(f"keys {self._files[rel.as_posix()]!r} and {key!r} map to the same file {rel}")
        digest = atomic_save_image(self.out_dir / rel, image)
        entry = {"key": key, "file": rel.as_posix(), "class_id": class_id, "label": int(label),
                 "sha256": digest}
        entry.update(meta or {})
        self.manifest["images"].append(entry)
        self._pending.append(entry)
        self._done.add(key)
        self._files[rel.as_posix()] = key
        if flush:
            self.flush()
        return self.out_dir / rel

    def flush(self) -> None:
        """Make every entry added so far durable: a journal append of just those entries, or a full
        rewrite while ``manifest.json`` lists no image yet or its other fields changed."""
        first = self._written_images == 0 and self._pending
        if self._written_header is None or first or _header(self.manifest) != self._written_header:
            self._compact()
        elif self._pending:
            append_records(self.journal_path, self._pending)
            self._pending = []

    def _sort(self) -> None:
        self.manifest["images"].sort(key=lambda e: (e["label"], e["key"]))

    def _compact(self) -> None:
        """Rewrite ``manifest.json`` with every entry, then drop the journal (its entries are now in it)."""
        self._sort()
        atomic_write_json(self.manifest_path, self.manifest)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.journal_path)
        self._pending = []
        self._written_header = copy.deepcopy(_header(self.manifest))
        self._written_images = len(self.manifest["images"])


def _header(manifest: dict[str, Any]) -> dict[str, Any]:
    """The manifest minus what the journal carries (entries, and the class renames they imply)."""
    return {k: v for k, v in manifest.items() if k not in ("images", "renamed_classes")}


def _fold_journal(man: dict[str, Any], journal: list[dict[str, Any]], path: Path) -> None:
    """Add the journal's entries to ``man`` (keys it already has are skipped: a fold cut short before
    the journal was removed), with the class renames their folders imply; keep the manifest order."""
    keys = {e.get("key") for e in man["images"]}
    added = 0
    for e in journal:
        if not isinstance(e.get("file"), str) or "key" not in e or "class_id" not in e or "label" not in e:
            raise DataError(f"{path} holds an entry without key/file/class_id/label ({str(e)[:200]}); "
                            "the set cannot be trusted, re-run into a new folder")
        if e["key"] in keys:
            continue
        keys.add(e["key"])
        man["images"].append(e)
        added += 1
        folder = e["file"].split("/", 1)[0]
        if folder != str(e["class_id"]):
            man.setdefault("renamed_classes", {})[str(e["class_id"])] = folder
    if added:
        man["images"].sort(key=lambda e: (e["label"], e["key"]))


def read_manifest(out_dir: str | os.PathLike) -> dict[str, Any]:
    """``manifest.json`` with the entries of its journal folded in (read only: nothing is rewritten)."""
    path = Path(out_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"no {MANIFEST} in {out_dir}: not a semdistill output folder")
    try:
        man = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(
            f"{path} is not valid JSON ({err}); the set cannot be trusted, re-run into a new folder"
        ) from None
    if not isinstance(man, dict) or not isinstance(man.get("images"), list):
        raise DataError(f"{path} has no 'images' list: not a semdistill manifest")
    journal = Path(out_dir) / JOURNAL
    _fold_journal(man, read_journal(journal), journal)
    return man


def write_parquet(path: str | os.PathLike, columns: dict[str, Any]) -> None:
    """Write columns atomically; 2-D float arrays become fixed-size lists (read back by ``read_parquet``)."""
    # heavy: pyarrow (not loaded when this module is imported)
    import pyarrow as pa
    import pyarrow.parquet as pq

    arrays = {}
    for name, col in columns.items():
        arr = np.asarray(col) if not isinstance(col, list) else col
        if isinstance(arr, np.ndarray) and arr.ndim == 2 and arr.dtype.kind == "f":
            flat = pa.array(np.ascontiguousarray(arr, dtype=np.float32).ravel())
            arrays[name] = pa.FixedSizeListArray.from_arrays(flat, int(arr.shape[1]))
        else:
            arrays[name] = pa.array(list(arr) if isinstance(arr, np.ndarray) and arr.dtype == object else arr)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    table = pa.table(arrays)
    with _no_partial(tmp, path, table.nbytes):
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    _written()


def remove(*paths: Path) -> None:
    """Delete files and folders (missing ones are fine)."""
    for p in paths:
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


@contextlib.contextmanager
def atomic_folder(target: str | os.PathLike, marker: str | None = None,
                  marker_text: str = "") -> Iterator[Path]:
    """Build a folder in a temporary sibling and swap it in whole when the block succeeds.

    Yields the temporary folder; on success writes ``marker`` (if given) inside it, replaces
    ``target`` and renames; on any error (or interrupt) the temporary folder is removed and
    ``target`` is left as it was. A full disk inside the block (however the writing library
    reports it: ``save_pretrained``, ``torch.save``, pyarrow) raises ``DiskFullError`` naming the
    file under ``target``.
    """
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    except OSError as err:
        if is_enospc(err):
            raise disk_full(target, 0, at_least=True) from None
        raise
    try:
        yield tmp
        if marker:
            (tmp / marker).write_text(marker_text)
        os.chmod(tmp, 0o777 & ~_umask())  # a plain mkdir's mode, not mkdtemp's private 0700
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException as err:
        written = sum(f.stat().st_size for f in tmp.rglob("*") if f.is_file()) if tmp.exists() else 0
        shutil.rmtree(tmp, ignore_errors=True)
        full = find_disk_full(err, target, written) if isinstance(err, Exception) else None
        if full is not None:
            where = _under(full.path or str(target), tmp, target)
            free = free_bytes(target)[1]  # after the clean-up: the folder needed more than that
            raise disk_full(where, max(full.needed, written, free), at_least=True) from None
        raise


def _under(path: str, tmp: Path, target: Path) -> Path:
    """``path`` inside the temporary folder, named as it would be under ``target``."""
    try:
        return target / Path(path).relative_to(tmp)
    except ValueError:
        return Path(path)


def _tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors and arrays in ``obj`` (dicts, lists, tuples walked): torch.save's size,
    about."""
    if hasattr(obj, "element_size") and hasattr(obj, "nelement"):
        return int(obj.element_size() * obj.nelement())
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


class _CountingFile:
    """A raw file for torch.save that writes fully and remembers the ``OSError`` torch turns into text."""

    def __init__(self, f: Any) -> None:
        self.f, self.written, self.error = f, 0, None

    def write(self, data: Any) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                done += self.f.write(view[done:])
        except OSError as err:
            self.error = err
            raise
        self.written += done
        return done

    def flush(self) -> None:
        self.f.flush()


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    """``torch.save(obj, path)`` via a temp file and ``os.replace``: a crash leaves no partial ``.pt``, and a
    full disk (which torch reports as a stream-position ``RuntimeError``) removes the temp file and raises
    ``DiskFullError`` with the path and about the size the file needs."""
    # heavy: torch (not loaded when this module is imported)
    import torch

    path = Path(path)
    fd, tmp = _temp_file_beside(path, lambda: _tensor_bytes(obj))
    sink = None
    try:
        with os.fdopen(fd, "wb", buffering=0) as f:
            sink = _CountingFile(f)
            torch.save(obj, sink)
            os.fsync(f.fileno())
        _publish(tmp, path)
    except BaseException as err:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(err, Exception) and (is_enospc(err) or (sink is not None and sink.error is not None
                                                              and is_enospc(sink.error))):
            raise disk_full(path, max(_tensor_bytes(obj), sink.written if sink else 0),
                            at_least=True) from None
        raise
    _written()
