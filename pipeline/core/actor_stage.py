"""A model stage on Ray Data: rows -> decode tasks (when rows name image files) -> an actor pool.

Every actor stage (caption, embed, VAE prototypes, LLM text prototypes, generate, DIVER recovery)
is built by ``ActorStage.dataset``, so what decides whether Ray keeps up with a plain loop over the
same model on the same cores is decided here (measured in ``bench/pipeline_throughput.py``, causes
in ``bench/PERF.md``):

- blocks: one Ray batch per block (``batch_blocks``). With 256-row blocks a whole block was one
  task of one actor: the rest of the pool sat idle and the driver saw no row until it was done;
- the pool: its size, torch threads and Ray batch come from ``pipeline.core.pools``. The thread count
  is part of the result: oneDNN convolutions split work by thread, and the zoo VAE and DiT give other
  bits with 2 threads than with 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import ray.data

from pipeline.core.batching import batch_blocks, whole_micro_batches
from pipeline.core.pools import pool_kwargs, role_plan
from pipeline.core.read import decode_batch

DECODE_CPUS = 0.5  # Ray CPUs of one decode task (PIL decode + resize of one Ray batch)


@dataclass
class ActorStage:
    """One model stage: the actor class, its constructor kwargs, and how rows reach it.

    ``decode``: ``decode_batch`` kwargs (``size``, ``mode``, ``resample``) when the rows carry image
    paths; ``None`` when they carry the model's inputs. ``threads``: the role's own torch threads.
    """

    role: str
    actor: type
    ctor: dict[str, Any]
    decode: dict[str, Any] | None = None
    default_batch: int = 8
    threads: int | None = None
    remote: dict[str, Any] = field(default_factory=dict)  # overrides of the pool's Ray resources (None: drop)
    # at most this many blocks: rows that name files are small (ImageNet's 1.28 M rows at batch 64 are ~5
    # batches a block); rows that carry their images (DIVER) use fewer, larger puts
    max_blocks: int = 4096

    def pool(self, cfg: Any) -> dict[str, Any]:
        """``map_batches`` kwargs of the pool (``pool_kwargs``) plus ``fn_constructor_kwargs`` with the
        threads."""
        plan = role_plan(cfg, self.role, self.threads, DECODE_CPUS if self.decode is not None else 0.0)
        kw = {**pool_kwargs(cfg, self.role, self.default_batch, plan), **self.remote}
        kw = {k: v for k, v in kw.items() if v is not None}
        kw["batch_size"] = whole_micro_batches(kw["batch_size"], cfg.ray.micro_batch_sizes.get(self.role))
        kw["fn_constructor_kwargs"] = {**self.ctor,
                                       **({"torch_threads": plan.threads} if plan.threads else {})}
        return kw

    def dataset(self, cfg: Any, rows: list[dict[str, Any]]) -> Any:
        """The Ray Dataset: ``rows`` in blocks of one batch, decoded if needed, through the actor pool."""
        return self.dataset_and_pool(cfg, rows)[0]

    def dataset_and_pool(self, cfg: Any, rows: list[dict[str, Any]]) -> tuple[Any, dict[str, Any]]:
        """``dataset`` and the pool it runs (``pool``'s kwargs), resolved once: a caller that logs the pool
        size and batch logs the ones that run (free GPU memory is probed once)."""
        kw = self.pool(cfg)
        ds = ray.data.from_items(rows, override_num_blocks=batch_blocks(len(rows), kw["batch_size"],
                                                                        self.max_blocks))
        if self.decode is not None:
            ds = ds.map_batches(decode_batch, fn_kwargs=self.decode, batch_size=kw["batch_size"],
                                num_cpus=DECODE_CPUS)
        return ds.map_batches(self.actor, batch_format="numpy", **kw), kw
