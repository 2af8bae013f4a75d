"""Skip-and-report: per-image faults become lines in ``skipped.jsonl``, counted in the summary.

A stage never crashes on one bad image. It drops the row, records ``{path, reason, stage}``
and goes on; at the end ``SkipLog.check`` fails the run (``DataError``) only when more than
``data.max_skipped_fraction`` of the images were bad, and ``check_class_counts`` when a
class ends up with fewer usable images than IPC. Configuration faults are not skipped:
they raise ``ConfigError`` before any work starts.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.core.faults import batch_id
from pipeline.errors import DataError

SKIPPED = "skipped.jsonl"


def reason_kind(reason: str) -> str:
    """The reason's category (text before the first colon): ``cannot decode: OSError: ...`` -> ``cannot
    decode``."""
    return str(reason).split(":", 1)[0].strip() or "unknown"


class SkipLog:
    """The per-run list of skipped inputs; ``write`` replaces ``skipped.jsonl`` atomically.

    Entries are unique per ``(stage, path)`` and written sorted, so the file is the same
    whatever order Ray finished the batches in. With ``resume`` the existing file is read
    first (a re-run from a later stage keeps the earlier stages' skips).
    """

    def __init__(self, path: str | os.PathLike | None = None, resume: bool = True) -> None:
        self.path = Path(path) if path is not None else None
        self._entries: dict[tuple[str, str], dict[str, Any]] = {}
        # adds so far / at the last write: unchanged -> no rewrite
        self._version, self._written_version = 0, -1
        if resume and self.path is not None and self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                if line.strip():
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a torn line from an older crash: the next write rewrites the file
                    self._entries[(str(e.get("stage", "")), str(e.get("path", "")))] = e

    def add(self, path: str, reason: str, stage: str = "", **extra: Any) -> None:
        entry = {"path": str(path), "reason": str(reason), "stage": stage, **extra}
        self._entries[(stage, str(path))] = entry
        self._version += 1

    def extend(self, entries: list[dict[str, Any]], stage: str = "") -> None:
        """Add scan-style entries (``{"path", "reason"}``), tagging them with ``stage``."""
        for e in entries:
            extra = {k: v for k, v in e.items() if k not in ("path", "reason", "stage")}
            self.add(e["path"], e["reason"], e.get("stage", stage), **extra)

    @property
    def entries(self) -> list[dict[str, Any]]:
        return [self._entries[k] for k in sorted(self._entries)]

    def __len__(self) -> int:
        return len(self._entries)

    def count(self, stage: str | None = None) -> int:
        return sum(1 for (s, _p) in self._entries if stage is None or s == stage)

    def by_reason(self) -> dict[str, int]:
        return dict(sorted(Counter(reason_kind(e["reason"]) for e in self._entries.values()).items()))

    def by_stage(self) -> dict[str, int]:
        return dict(sorted(Counter(s for (s, _p) in self._entries).items()))

    def write(self) -> Path | None:
        """Write ``skipped.jsonl`` (one JSON object a line, sorted) atomically, unless nothing was added since
        the last write; None without a path."""
        if self.path is None:
            return None
        if self._written_version == self._version and self.path.is_file():
            return self.path  # nothing added since the last write (stages call this once per batch)
        # heavy: PIL (not loaded when this module is imported)
        from pipeline.core.write import atomic_write_bytes

        text = "".join(json.dumps(e, ensure_ascii=False, sort_keys=True) + "\n" for e in self.entries)
        atomic_write_bytes(self.path, text.encode("utf-8"))
        self._written_version = self._version
        return self.path

    def summary(self) -> dict[str, Any]:
        """Counts for the run summary: total, by reason category, by stage, and the file."""
        return {"skipped": len(self), "by_reason": self.by_reason(), "by_stage": self.by_stage(),
                "file": str(self.path) if self.path is not None else None}

    def check(self, total: int, max_fraction: float, stage: str | None = None, what: str = "images") -> None:
        """Raise ``DataError`` when the skipped share of ``total`` exceeds ``max_fraction``."""
        check_skipped_fraction(self.count(stage), total, max_fraction, what=what, report=self.path)


def check_skipped_fraction(n_skipped: int, total: int, max_fraction: float, what: str = "images",
                           report: str | os.PathLike | None = None) -> None:
    """Fail fast when too much of the input is bad (a wrong folder, a broken mount, the wrong format).

    ``data.max_skipped_fraction`` is the setting; 0 means no bad input is tolerated.
    """
    if total <= 0:
        if n_skipped:
            raise DataError(f"all {n_skipped} {what} were skipped" + (f"; see {report}" if report else ""))
        return
    frac = n_skipped / total
    if frac > max_fraction:
        where = f"; see {report}" if report else ""
        raise DataError(
            f"{n_skipped} of {total} {what} ({frac:.1%}) were skipped, above data.max_skipped_fraction="
            f"{max_fraction}{where}. Fix the data, or raise the threshold to accept it"
        )


def check_class_counts(counts: dict[str, int], ipc: int, policy: str = "error") -> dict[str, int]:
    """Usable images per class vs IPC. ``error``: raise naming every short class.

    ``shrink``: return the per-class IPC to use (``min(count, ipc)``); an empty class is an
    error under every policy (there is nothing to distil it from).
    """
    empty = sorted(c for c, n in counts.items() if n == 0)
    if empty:
        raise DataError(f"classes with no usable images: {empty[:20]}" + (" ..." if len(empty) > 20 else "")
                        + "; run `semdistill data check` to see which files were skipped and why")
    short = {c: n for c, n in sorted(counts.items()) if n < ipc}
    if short and policy == "error":
        shown = ", ".join(f"{c} ({n})" for c, n in list(short.items())[:20])
        raise DataError(
            f"{len(short)} classes have fewer usable images than ipc={ipc}: {shown}. "
            "Lower ipc, add images, or set edits.small_class_policy=shrink"
        )
    return {c: min(n, ipc) for c, n in sorted(counts.items())}


def drop_bad_rows(batch: dict[str, Any], skip_dir: str, stage: str = "decode",
                  error_col: str = "error") -> dict[str, Any]:
    """Ray ``map_batches`` function: drop rows with an ``error``, recording them on the side.

    Bad rows go to ``skip_dir/<batch id>.jsonl`` (atomic, named by the batch's paths, so a
    retried batch rewrites the same file); ``collect_skips`` merges them into a ``SkipLog``
    after the stage. Streams: nothing is materialised. ``skip_dir`` must be visible to the
    driver (the output folder; on a cluster, shared storage).
    """
    # heavy: PIL (not loaded when this module is imported)
    from pipeline.core.write import atomic_write_bytes

    n = len(batch["path"])
    errors = np.asarray(batch.get(error_col, np.array([""] * n)), dtype=object)
    good = np.array([not e for e in errors], dtype=bool)
    if not good.all():
        paths = [str(p) for p in np.asarray(batch["path"])]
        lines = "".join(json.dumps({"path": p, "reason": str(e), "stage": stage}, ensure_ascii=False) + "\n"
                        for p, e, ok in zip(paths, errors, good) if not ok)
        atomic_write_bytes(Path(skip_dir) / f"{stage}-{batch_id(paths)}.jsonl", lines.encode("utf-8"))
    return {k: np.asarray(v)[good] for k, v in batch.items() if k != error_col}


def collect_skips(skip_dir: str | os.PathLike, log: SkipLog) -> int:
    """Merge the ``drop_bad_rows`` side files into ``log``; returns how many entries were read."""
    n = 0
    for f in sorted(Path(skip_dir).glob("*.jsonl")):
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                e = json.loads(line)
                log.add(e["path"], e["reason"], e.get("stage", ""))
                n += 1
    return n


def missing_keys(expected: list[str] | set[str], got: list[str] | set[str]) -> list[str]:
    """Keys that should have come out of a stage but did not (rows lost in errored blocks)."""
    got_set = set(got)
    return sorted(k for k in set(expected) if k not in got_set)
