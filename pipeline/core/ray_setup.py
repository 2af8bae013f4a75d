"""The one place that starts (or joins) Ray, and stops only what it started."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import ray

from pipeline.config import RayConfig


def init_ray(cfg: RayConfig | None = None) -> bool:
    """Connect to Ray; return True when this call started a new local instance.

    Order: an already initialised Ray is reused; ``cfg.address`` or ``RAY_ADDRESS``
    joins a cluster (``ray job submit`` sets it); otherwise a new *local* instance
    (``address="local"``, never an unrelated cluster found on the machine) with a
    bounded object store, so several runs fit on a 2-core laptop.
    """
    cfg = cfg or RayConfig()
    if ray.is_initialized():
        return False
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    address = cfg.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, ignore_reinit_error=True, log_to_driver=cfg.log_to_driver)
        return False
    kwargs: dict = {"address": "local", "include_dashboard": False, "log_to_driver": cfg.log_to_driver}
    if cfg.num_cpus is not None:
        kwargs["num_cpus"] = cfg.num_cpus
    if cfg.object_store_memory_mb:
        kwargs["object_store_memory"] = cfg.object_store_memory_mb * 1024 * 1024
    ray.init(**kwargs)
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = os.environ.get("SEMDISTILL_PROGRESS", "1") != "0"
    ctx.enable_operator_progress_bars = False  # one bar per dataset (stage), not one per operator
    if cfg.logs_dir:
        link_session_logs(cfg.logs_dir)
    return True


def link_session_logs(logs_dir: str | os.PathLike) -> str | None:
    """``<logs_dir>/ray_session`` -> this Ray session's log folder (workers' output, raylet, Train); its
    path."""
    try:
        session = Path(ray._private.worker._global_node.get_session_dir_path()) / "logs"
    except AttributeError:  # not a local node (a cluster driver): the logs live on the head node
        return None
    link = Path(logs_dir) / "ray_session"
    link.parent.mkdir(parents=True, exist_ok=True)
    if link.is_symlink() or link.exists():
        link.unlink()
    link.symlink_to(session, target_is_directory=True)
    return str(link)


@contextlib.contextmanager
def ray_session(cfg: RayConfig | None = None) -> Iterator[None]:
    """``with ray_session(cfg):`` runs the body on Ray and shuts down only a Ray it started."""
    started = init_ray(cfg)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def actor_resources(cfg: RayConfig) -> dict[str, float]:
    """Per-actor resources: fractional CPUs so read tasks never starve on 2 cores."""
    res: dict[str, float] = {"num_cpus": cfg.actor_num_cpus}
    if cfg.actor_num_gpus:
        res["num_gpus"] = cfg.actor_num_gpus
    return res


def block_count(n_rows: int, rows_per_block: int = 256, cap: int = 200) -> int:
    """Ray Data blocks for ``n_rows`` items: one per ``rows_per_block`` rows, at least 1, at most ``cap``."""
    return max(1, min(cap, n_rows // rows_per_block))


def task_options(cfg: RayConfig) -> dict[str, Any]:
    """``ray.remote(...).options`` of a plain task: the actors' resources plus ``max_retries``.

    ``scheduling_strategy="DEFAULT"``: the task is scheduled on the cluster, not inside the placement group of
    a Ray Tune trial that called the method (a sweep trial reserves ``sweep.trial_cpus`` for itself; the
    method's tasks, like its Ray Data actors, take their own CPUs). Outside a placement group it is Ray's
    default anyway.
    """
    return {**actor_resources(cfg), "max_retries": cfg.max_task_retries, "scheduling_strategy": "DEFAULT"}
