"""An append-only JSON-lines journal: each ``append`` is one ``write`` of whole lines, then ``fsync``.

A record counts only once its line ends with a newline: a kill mid-write leaves a torn last line,
which ``read_journal`` drops (its entries were never confirmed, so a re-run redoes them). A failed
append (a full disk) truncates the file back to where it was, so no torn line is ever followed by
another record.
"""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path
from typing import Any

from pipeline.core.diskfull import disk_full
from pipeline.errors import DataError


def append_records(path: str | os.PathLike, records: list[dict[str, Any]]) -> int:
    """Append ``records`` as JSON lines, durable on return; returns the bytes written."""
    if not records:
        return 0
    data = "".join(json.dumps(r, default=str, separators=(",", ":")) + "\n" for r in records).encode()
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    try:
        start = os.lseek(fd, 0, os.SEEK_END)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        except BaseException as err:
            os.ftruncate(fd, start)  # never leave a torn line for the next append to follow
            if isinstance(err, OSError) and err.errno == errno.ENOSPC:
                raise disk_full(path, len(data)) from None
            raise
    finally:
        os.close(fd)
    return len(data)


def read_journal(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The confirmed records of a journal (``[]`` when there is none); a torn last line is dropped."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    lines = raw.split(b"\n")[:-1]  # what follows the last newline was never confirmed
    records = []
    for n, line in enumerate(lines, 1):
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise DataError(f"{path} line {n} is not valid JSON ({err}); the set cannot be trusted, "
                            "re-run into a new folder") from None
        if not isinstance(rec, dict):
            raise DataError(f"{path} line {n} is not a JSON object; the set cannot be trusted, re-run into a "
                            f"new folder")
        records.append(rec)
    return records
