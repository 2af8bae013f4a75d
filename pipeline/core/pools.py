"""How many actors a stage's pool runs, with how many torch threads, and its ``map_batches`` arguments.

- pool size: ``ray.pool_sizes[role]: auto`` (0, the default) fills the CPUs with actors (``pool_plan``);
- torch threads: a CPU actor runs the torch threads of its CPU reservation (``floor(actor_num_cpus)``,
  at least 1; Ray's own default for a fractional actor), set explicitly, so neither a shell's
  ``OMP_NUM_THREADS`` nor the pool size changes them;
- the Ray batch is whole micro-batches (``pipeline.core.batching.whole_micro_batches``, applied by
  ``ActorStage.pool``), so no model call is padding.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any, NamedTuple

import ray.data

from pipeline.config import Config
from pipeline.core.faults import actor_remote_args
from pipeline.core.gpu_batch import pool_batch
from pipeline.core.ray_setup import actor_resources


class PoolPlan(NamedTuple):
    """How many actors a stage's pool runs and the torch threads of each (``None``: Ray's default, GPU
    actors)."""

    size: int
    threads: int | None


def reservation_threads(actor_num_cpus: float) -> int:
    """Torch threads of a CPU actor holding ``actor_num_cpus`` Ray CPUs: the whole CPUs, at least 1."""
    return max(1, math.floor(actor_num_cpus))


def placement_group_cpus(table: dict[Any, dict[str, Any]]) -> float:
    """CPUs held by the created placement groups of ``ray.util.placement_group_table()``: a Ray Tune
    trial's reservation, a Ray Train run's workers. An actor pool scheduled outside them cannot use them."""
    return sum(float(bundle.get("CPU", 0.0)) for pg in table.values() if pg.get("state") == "CREATED"
               for bundle in (pg.get("bundles") or {}).values())


def cluster_totals() -> tuple[float, float]:
    """(CPUs, GPUs) of the connected Ray cluster that no placement group holds; ``(os.cpu_count(), 0)``
    when Ray is not running.

    Inside a Ray Tune trial the trial's own reservation is such a group: a pool sized to the whole
    cluster would take the CPUs its decode tasks need and wait forever (a sweep trial of 1 CPU on 2).
    """
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        from ray.util import placement_group_table

        res = ray.cluster_resources()
        cpus = float(res.get("CPU", 1.0)) - placement_group_cpus(placement_group_table())
        return max(cpus, 0.0), float(res.get("GPU", 0.0))
    return float(os.cpu_count() or 1), 0.0


def pool_plan(size: int | str, actor_num_cpus: float, actor_num_gpus: float = 0.0, threads: int | None = None,
              side_cpus: float = 0.0, cpus: float | None = None, gpus: float | None = None) -> PoolPlan:
    """The pool of one stage: ``size`` actors (an int, or ``"auto"`` / 0) and their torch threads.

    ``threads``: a role's own setting (``diver.torch_threads``, ``edits.llm_torch_threads``); CPU
    actors otherwise run ``reservation_threads``. ``auto`` on GPUs is one actor per
    ``actor_num_gpus`` share; on CPUs it is as many actors as the cores hold at ``threads`` each beside
    whole cores for the decode tasks (``size * threads <= cpus - ceil(side_cpus)``, never oversubscribed)
    and as Ray's CPU accounting allows beside ``side_cpus`` for them. ``cpus`` / ``gpus`` default to the
    running cluster's, less the CPUs its placement groups hold (``cluster_totals``).
    """
    if cpus is None or gpus is None:
        c, g = cluster_totals()
        cpus = c if cpus is None else cpus
        gpus = g if gpus is None else gpus
    on_gpu = actor_num_gpus > 0
    n_threads = threads if threads else (None if on_gpu else reservation_threads(actor_num_cpus))
    if size not in ("auto", 0):
        return PoolPlan(max(1, int(size)), n_threads)
    if on_gpu:
        return PoolPlan(max(1, math.floor(gpus / actor_num_gpus + 1e-9)), n_threads)
    # the decode tasks run beside the pool: they get whole cores (on 2 cores two 1-thread actors beside the
    # decode tasks ran embed at 0.59x and VAE prototypes at 0.50x a serial loop, one actor at 0.99x and 0.70x)
    by_cores = math.floor((cpus - math.ceil(side_cpus)) / (n_threads or 1) + 1e-9)
    by_reservation = math.floor((cpus - side_cpus) / actor_num_cpus + 1e-9)
    return PoolPlan(max(1, min(by_cores, by_reservation)), n_threads)


def role_plan(cfg: Config, role: str, threads: int | None = None, side_cpus: float = 0.0) -> PoolPlan:
    """The ``PoolPlan`` of ``role``: ``ray.pool_sizes[role]`` (else 1; ``auto`` fills the cluster) and its
    threads."""
    return pool_plan(cfg.ray.pool_sizes.get(role, 1), cfg.ray.actor_num_cpus, cfg.ray.actor_num_gpus,
                     threads=threads, side_cpus=side_cpus)


def pool_kwargs(cfg: Config, role: str, default_batch: int = 8,
                plan: PoolPlan | None = None) -> dict[str, Any]:
    """``map_batches`` kwargs for an actor pool of ``role`` (size, batch, resources, restarts).

    The batch is ``ray.batch_sizes[role]``, else (GPU actors) what fits in free GPU memory, else
    ``default_batch`` (``pipeline.core.gpu_batch.pool_batch``); the pool size ``plan.size``, else
    ``role_plan``'s (``ray.pool_sizes[role]``, else 1).
    """
    plan = plan or role_plan(cfg, role)
    return {"compute": ray.data.ActorPoolStrategy(size=plan.size),
            "batch_size": pool_batch(cfg, role, default_batch),
            **actor_resources(cfg.ray), **actor_remote_args(cfg.ray)}
