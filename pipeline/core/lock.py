"""One run per output folder: an advisory ``fcntl.flock`` on ``<output.dir>/.semdistill.lock``.

The lock file holds ``{host, pid, started}`` of its holder. A second run (a double-submitted
job, a second terminal) stops at once with a message naming the holder. A lock left by a
process that died (SIGKILL, a lost node) is not held any more and is taken over with a
message. The lock is re-entrant within one process (``semdistill run`` takes it, and the
method's runner takes it again) and is removed when the outermost holder releases it.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

from pipeline.core.diskfull import disk_full, is_enospc
from pipeline.errors import SemdistillError

LOCK_NAME = ".semdistill.lock"
_held: dict[str, list[int]] = {}  # real output folder -> [fd, depth] held by this process
F = TypeVar("F", bound=Callable[..., Any])


class OutputLockedError(SemdistillError):
    """Another live run holds the output folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, 4096, 0)
        info = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return info if isinstance(info, dict) else {}


def holder_text(info: dict[str, Any]) -> str:
    return f"host {info.get('host', '?')} pid {info.get('pid', '?')} (started {info.get('started', '?')})"


def _take_over_note(path: Path, old: dict[str, Any]) -> str:
    """The message for a lock file whose holder is gone."""
    same_host = old.get("host") == socket.gethostname()
    dead = same_host and not _alive(int(old.get("pid", 0) or 0))
    gone = "that process is dead" if dead else "its lock is no longer held"
    return f"taking over the stale lock {path} of {holder_text(old)}: {gone}"


def _flock(fd: int, path: Path) -> bool:
    """True when the lock was taken; False when another process holds it."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    except OSError as err:  # a file system without flock: fall back to the pid in the file
        if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
            raise
        old = _read(fd)
        pid = int(old.get("pid", 0) or 0)
        return not (old.get("host") == socket.gethostname() and pid != os.getpid() and _alive(pid))


def _acquire(path: Path, log: Callable[[str], None]) -> int:
    for _ in range(10):
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if not _flock(fd, path):
            info = _read(fd)
            os.close(fd)
            raise OutputLockedError(
                f"output folder {path.parent} is in use by another run: {holder_text(info)}, lock {path}; "
                "wait for it to finish or stop it, or choose another output.dir")
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if not same:  # the previous holder removed the file between our open and flock: retry
            os.close(fd)
            continue
        old = _read(fd)
        if old:
            log(_take_over_note(path, old))
        info = {"host": socket.gethostname(), "pid": os.getpid(),
                "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        data = json.dumps(info).encode()
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
            os.fsync(fd)
        except OSError as err:
            os.close(fd)
            if is_enospc(err):  # a full disk stops the run here, before it writes anything
                raise disk_full(path, len(data)) from None
            raise
        return fd
    raise OutputLockedError(f"could not take the lock {path}: it kept being replaced; is another run "
                            f"starting?")


@contextlib.contextmanager
def output_lock(out_dir: str | os.PathLike, log: Callable[[str], None] = print) -> Iterator[Path]:
    """Hold the lock on ``out_dir`` (created if missing) for the block; raises ``OutputLockedError``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(out)
    path = out / LOCK_NAME
    if key in _held:
        _held[key][1] += 1
        try:
            yield path
        finally:
            _held[key][1] -= 1
        return
    fd = _acquire(path, log)
    _held[key] = [fd, 1]
    try:
        yield path
    finally:
        del _held[key]
        with contextlib.suppress(OSError):
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                os.unlink(path)  # before unlocking, so no one locks a file that is about to vanish
        os.close(fd)


def holds_output_lock(func: F) -> F:
    """Decorate a runner ``func(cfg, ...)`` so that it runs holding the lock on ``cfg.output.dir``."""
    @functools.wraps(func)
    def wrapper(cfg: Any, *args: Any, **kwargs: Any) -> Any:
        with output_lock(cfg.output.dir):
            return func(cfg, *args, **kwargs)
    return wrapper  # type: ignore[return-value]
