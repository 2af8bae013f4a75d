"""What a long run shows on the terminal: one line per stage and one progress bar per long stage.

``with quiet_terminal(log_dir):`` points the process's stdout and stderr (file descriptors 1 and 2,
so child processes such as Ray's raylet too) at ``log_dir/run.log``; only :func:`stage` and :func:`note`
lines and :func:`progress` bars reach the terminal. Outside such a block both print as usual (stage lines
to stdout, no bars): ``semdistill run --verbose``, and a runner called from Python.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

_TERM: TextIO | None = None  # the real terminal while a quiet_terminal block is open
_BARS: dict[str, Any] = {}


def stage(msg: str) -> None:
    """One stage line: on the terminal (and in the log) inside ``quiet_terminal``, else printed."""
    if _TERM is None:
        print(msg, flush=True)
        return
    print(msg, flush=True)  # the log keeps the line too
    _close_bars()
    _TERM.write(msg + "\n")
    _TERM.flush()


def progress(name: str, done: int, total: int) -> None:
    """Advance the bar ``name`` to ``done`` of ``total`` (a tqdm bar on the terminal; closed at ``total``)."""
    if _TERM is None or total <= 0:
        return
    # start-up: tqdm (not loaded when this module is imported)
    from tqdm import tqdm

    bar = _BARS.get(name)
    if bar is None:
        _close_bars()
        bar = _BARS[name] = tqdm(total=total, desc=f"  {name}", file=_TERM, leave=True, dynamic_ncols=True,
                                 mininterval=0.5)
    bar.update(max(0, done - bar.n))
    if done >= total:
        bar.close()
        _BARS.pop(name, None)


def _close_bars() -> None:
    for bar in _BARS.values():
        bar.close()
    _BARS.clear()


@contextlib.contextmanager
def quiet_terminal(log_dir: str | os.PathLike) -> Iterator[Path]:
    """Send stdout/stderr (fds 1 and 2, Python warnings too) to ``log_dir/run.log``; yield the log's path."""
    global _TERM
    log_dir = Path(log_dir)
    log_dir.mkdir(parents=True, exist_ok=True)
    path = log_dir / "run.log"
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    term = os.fdopen(os.dup(saved[0]), "w", buffering=1)
    with open(path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        _TERM = term
        try:
            yield path
        finally:
            _close_bars()
            _TERM = None
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for fd in saved:
                os.close(fd)
            term.close()


def note(msg: str) -> None:
    """A line written above the open progress bars, which stay open (a sweep's trial lines under its one bar);
    printed as ``stage`` prints outside ``quiet_terminal``."""
    print(msg, flush=True)  # the log keeps the line too
    if _TERM is None:
        return
    # start-up: tqdm (not loaded when this module is imported)
    from tqdm import tqdm

    tqdm.write(msg, file=_TERM)
    _TERM.flush()


def tagged_lines(tag: str, show: Callable[[str], None]) -> Callable[[str], None]:
    """A method's ``log``: its lines that start with ``tag`` (EDITS's "[edits] caption: done in 9.1 s") go
    to ``show`` (``stage`` or ``note``: the terminal), the others are printed (the log inside
    ``quiet_terminal``)."""

    def log(msg: str) -> None:
        if msg.startswith(tag):
            show(msg)
        else:
            print(msg, flush=True)

    return log
