"""A full disk, said clearly: ``DiskFullError`` (path, bytes needed, bytes free) and finding ``ENOSPC``
wherever a library or Ray has wrapped it.

torch.save reports a full disk as a ``RuntimeError`` about stream positions, safetensors and pyarrow
as their own errors with the OS text inside, and Ray Train as a ``TrainingFailedError`` holding the
worker's exception; ``find_disk_full`` looks through all of them so the user sees one message.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from pipeline.errors import DataError

# the OS's text for ENOSPC / EDQUOT as libraries quote it (safetensors: "os error 28")
_FULL_TEXTS = ("no space left on device", "os error 28", "disk quota exceeded", "os error 122")


class DiskFullError(DataError):
    """The file system filled up during a write; the partial file was removed."""

    def __init__(self, message: str, path: str = "", needed: int = 0, free: int = -1) -> None:
        super().__init__(message)
        self.path, self.needed, self.free = path, needed, free

    def __reduce__(self):  # Ray ships it from a worker to the driver: keep the fields
        return (type(self), (str(self), self.path, self.needed, self.free))


def free_bytes(path: str | os.PathLike) -> tuple[Path, int]:
    """The nearest existing folder at or above ``path``'s parent, and its free bytes (-1 if unknown)."""
    folder = Path(path).parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        st = os.statvfs(folder)
        return folder, st.f_bavail * st.f_frsize
    except OSError:
        return folder, -1


def disk_full(path: str | os.PathLike, needed: int, at_least: bool = False) -> DiskFullError:
    """The error for an ``ENOSPC`` while writing ``path``: names the path, the bytes needed and those free."""
    folder, free = free_bytes(path)
    short = needed - max(free, 0)
    hint = (f"free at least {short} bytes (more for the files still to come)" if short > 0
            else "free more space (its whole size is not known before it is written)")
    return DiskFullError(
        f"no space left on the device writing {path}: it needs {'more than ' if at_least else ''}{needed} "
        f"bytes, {max(free, 0)} are free in {folder}; {hint} or choose another output.dir, then re-run: "
        f"finished files are kept",
        str(path), int(needed), int(free))


def _linked(err: BaseException) -> list[BaseException]:
    """The exceptions ``err`` wraps: its cause/context, Ray's per-worker failures, controller and task
    causes."""
    out = [e for e in (err.__cause__, err.__context__) if e is not None]
    out += [e for e in (getattr(err, "worker_failures", None) or {}).values() if isinstance(e, BaseException)]
    out += [e for e in (getattr(err, a, None) for a in ("controller_failure", "cause", "_base_exc"))
            # Ray Train's controller error, RayTaskError, a worker's user error
            if isinstance(e, BaseException)]
    return out


def is_enospc(err: BaseException) -> bool:
    """This exception itself says the disk (or quota) is full."""
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    return any(t in str(err).lower() for t in _FULL_TEXTS)


def find_disk_full(err: BaseException, path: str | os.PathLike | None = None,
                   needed: int = 0) -> DiskFullError | None:
    """The ``DiskFullError`` inside ``err`` (as raised by our writers), or a new one naming ``path`` when
    ``err`` wraps a bare ``ENOSPC``; None when the failure is not a full disk."""
    todo, seen, bare = [err], set(), None
    while todo:
        e = todo.pop()
        if id(e) in seen:
            continue
        seen.add(id(e))
        if isinstance(e, DiskFullError):
            return e
        if bare is None and is_enospc(e):
            bare = e
        todo += _linked(e)
    if bare is None:
        return None
    where = path if path is not None else (getattr(bare, "filename", None) or "the output folder")
    return disk_full(where, needed, at_least=True)
