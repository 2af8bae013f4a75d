"""Worker faults: deterministic fault injection for tests, and the Ray settings that recover.

``debug.fail_every_n_batches = n`` makes every actor fail on its n-th, 2n-th, ... *new*
batch, once: the batch id is recorded (a marker file in ``debug.fault_dir``, default
``<output.dir>/.faults``) before the fault, and a retry of a recorded batch runs normally.
``debug.fault_mode``: ``raise`` (an exception, retried by Ray Data through
``actor_task_retry_on_errors``) or ``exit`` (the actor process dies mid-batch, Ray restarts
it with ``max_restarts`` and retries the task with ``max_task_retries``). Outputs depend
only on the rows (per-image seeds), so a run with faults equals a run without.

How an actor uses it::

    class MyActor:
        def __init__(self, ..., faults: dict | None = None):
            self.faults = FaultInjector.from_kwargs(faults)
        def __call__(self, batch):
            out = compute(batch)
            self.faults.maybe_fail(batch["key"])   # after the work: the fault hits mid-batch
            return out

and the driver: ``configure_data_context(cfg.ray)`` once, ``fault_kwargs(cfg)`` into the
actor's ``fn_constructor_kwargs`` and ``**actor_remote_args(cfg.ray)`` into ``map_batches``.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any


class InjectedFault(RuntimeError):
    """The deterministic fault of ``debug.fail_every_n_batches`` (retried by Ray, never a real error)."""


class TransientWorkerError(RuntimeError):
    """Base for errors an actor raises when a retry may succeed (retried like ``InjectedFault``)."""


RETRIED_ERRORS: list[type[BaseException]] = [InjectedFault, TransientWorkerError]


def batch_id(keys: Iterable[Any]) -> str:
    """A stable id for a batch from its row keys (same rows -> same id, whichever worker runs it)."""
    h = hashlib.sha1()
    for k in keys:
        h.update(str(k).encode("utf-8", "surrogateescape") + b"\0")
    return h.hexdigest()[:20]


class FaultInjector:
    """Fails every ``every_n``-th new batch once (see the module docstring); a no-op when ``every_n`` is
    falsy."""

    def __init__(self, every_n: int | None = None, state_dir: str | os.PathLike | None = None,
                 mode: str = "raise") -> None:
        if mode not in ("raise", "exit"):
            raise ValueError(f"fault mode must be raise or exit, got {mode!r}")
        if every_n and mode == "exit" and state_dir is None:
            raise ValueError("fault mode 'exit' needs a state_dir (the actor's memory dies with it)")
        self.every_n = int(every_n) if every_n else 0
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.mode = mode
        self.new_batches = 0
        self._failed: set[str] = set()

    @classmethod
    def from_kwargs(cls, kwargs: dict[str, Any] | None) -> FaultInjector:
        return cls(**(kwargs or {}))

    @property
    def enabled(self) -> bool:
        return self.every_n > 0

    def _seen(self, bid: str) -> bool:
        if bid in self._failed:
            return True
        return self.state_dir is not None and (self.state_dir / f"{bid}.failed").exists()

    def _record(self, bid: str) -> bool:
        """Record the fault; False when another worker recorded it first (then do not fail)."""
        self._failed.add(bid)
        if self.state_dir is None:
            return True
        self.state_dir.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(self.state_dir / f"{bid}.failed", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            f.write(f"{self.mode}\n")
            f.flush()
            os.fsync(f.fileno())
        return True

    def maybe_fail(self, keys: Iterable[Any]) -> None:
        """Raise ``InjectedFault`` (or exit the process) if this new batch is an n-th one."""
        if not self.every_n:
            return
        bid = batch_id(keys)
        if self._seen(bid):
            return  # a retry of a batch that already failed once: run normally
        self.new_batches += 1
        if self.new_batches % self.every_n or not self._record(bid):
            return
        if self.mode == "exit":
            os._exit(17)  # the actor dies mid-batch, like an OOM kill or a lost node
        raise InjectedFault(f"injected fault on batch {bid} (debug.fail_every_n_batches={self.every_n})")


def injected_faults(state_dir: str | os.PathLike) -> list[str]:
    """Batch ids that had an injected fault (tests assert a fault really happened)."""
    p = Path(state_dir)
    return sorted(f.name[: -len(".failed")] for f in p.glob("*.failed")) if p.is_dir() else []


def fault_kwargs(cfg: Any) -> dict[str, Any] | None:
    """``FaultInjector`` kwargs from a ``Config`` (``None`` when fault injection is off)."""
    dbg = cfg.debug
    if not dbg.fail_every_n_batches:
        return None
    state = getattr(dbg, "fault_dir", None) or str(Path(cfg.output.dir) / ".faults")
    return {"every_n": dbg.fail_every_n_batches, "state_dir": str(Path(state).resolve()),
            "mode": getattr(dbg, "fault_mode", "raise")}


def actor_remote_args(ray_cfg: Any) -> dict[str, Any]:
    """``map_batches`` kwargs that make actors restart and retry: ``max_restarts``, ``max_task_retries``.

    Ray 2.60 has no named ``map_batches`` parameter for these yet, so they travel as
    ``**ray_remote_args``; its "ray_remote_args is deprecated" warning is silenced for them.
    """
    warnings.filterwarnings("ignore", message=r"`ray_remote_args` is deprecated")
    return {"max_restarts": int(ray_cfg.max_restarts), "max_task_retries": int(ray_cfg.max_task_retries)}


def configure_data_context(ray_cfg: Any) -> Any:
    """Set this driver's Ray Data context: retry ``RETRIED_ERRORS`` in actor tasks, allow
    ``ray.max_errored_blocks`` failed blocks. Call once before executing a dataset."""
    # heavy: ray (not loaded when this module is imported)
    import ray.data

    ctx = ray.data.DataContext.get_current()
    current = ctx.actor_task_retry_on_errors
    if current is not True:
        merged = list(current or [])
        merged += [e for e in RETRIED_ERRORS if e not in merged]
        ctx.actor_task_retry_on_errors = merged
    ctx.max_errored_blocks = int(ray_cfg.max_errored_blocks)
    return ctx
