"""ActorStage and pool_plan: blocks of one Ray batch, pools that fill the cores without oversubscribing
them."""

from __future__ import annotations

import itertools
import math

import pytest

from pipeline.config import Config
from pipeline.core.actor_stage import ActorStage
from pipeline.core.batching import whole_micro_batches
from pipeline.core.pools import placement_group_cpus, pool_plan, reservation_threads


def test_reservation_threads_are_whole_cpus_at_least_one():
    assert [reservation_threads(c) for c in (0.25, 0.5, 1.0, 1.5, 2.0, 4.0)] == [1, 1, 1, 1, 2, 4]


def test_an_explicit_pool_size_is_kept_and_threads_follow_the_reservation():
    assert pool_plan(3, 0.5, cpus=2, gpus=0) == (3, 1)
    assert pool_plan(1, 2.0, cpus=16, gpus=0) == (1, 2)
    assert pool_plan(2, 0.5, threads=2, cpus=2, gpus=0) == (2, 2)  # a role's own threads win
    assert pool_plan(4, 1.0, actor_num_gpus=1.0, cpus=16, gpus=4) == (4, None)  # GPU actors: Ray's default


@pytest.mark.parametrize(("cpus", "actor_cpus", "side", "expected"), [
    (2, 0.5, 0.5, 1),    # the laptop: one 1-thread actor and a whole core for the decode tasks
    (2, 0.5, 0.0, 2),    # rows that carry their inputs (LLM, generate, DIVER): both cores to actors
    (2, 1.0, 0.5, 1),    # a whole-CPU actor beside the decode tasks: one
    (16, 4.0, 0.5, 3),   # 3 x 4 threads = 12 cores, one left for decode (4 would leave none)
    (16, 0.5, 0.5, 15),  # by cores, not by the 31 fractional reservations
    (1, 0.5, 0.5, 1),    # a single actor always runs
])
def test_auto_pool_fills_the_cores(cpus, actor_cpus, side, expected):
    plan = pool_plan("auto", actor_cpus, side_cpus=side, cpus=cpus, gpus=0)
    assert plan.size == expected and plan.threads == reservation_threads(actor_cpus)


def test_auto_pool_never_oversubscribes_cores_or_reservations():
    for cpus, actor_cpus, side, threads in itertools.product((1, 2, 3, 4, 8, 16, 64),
                                                             (0.25, 0.5, 1, 1.5, 2, 4, 8),
                                                              (0.0, 0.5), (None, 1, 2, 4)):
        plan = pool_plan("auto", actor_cpus, threads=threads, side_cpus=side, cpus=cpus, gpus=0)
        assert plan.size >= 1
        if plan.size > 1:  # a single actor always runs, even when it alone is bigger than the machine
            assert plan.size * plan.threads + math.ceil(side) <= cpus, (cpus, actor_cpus, side, threads, plan)
            assert plan.size * actor_cpus + side <= cpus, (cpus, actor_cpus, side, threads, plan)


def test_auto_pool_on_gpus_is_one_actor_per_gpu_share():
    assert pool_plan("auto", 1.0, actor_num_gpus=1.0, cpus=32, gpus=8).size == 8
    assert pool_plan("auto", 1.0, actor_num_gpus=0.5, cpus=32, gpus=2).size == 4
    assert pool_plan("auto", 1.0, actor_num_gpus=1.0, cpus=32, gpus=0).size == 1


def test_pool_sizes_accept_auto_and_reject_other_words():
    from pipeline.errors import ConfigError

    cfg = Config.model_validate({"ray": {"pool_sizes": {"caption": "auto", "embed": 2, "vae": 0}}})
    assert cfg.ray.pool_sizes == {"caption": 0, "embed": 2, "vae": 0}  # 0 is auto
    assert pool_plan(0, 0.5, cpus=2, gpus=0) == pool_plan("auto", 0.5, cpus=2, gpus=0) == (2, 1)
    from pipeline.config import config_from_dict

    for bad in ("all", -1):
        with pytest.raises(ConfigError, match="ray.pool_sizes.caption"):
            config_from_dict({"ray": {"pool_sizes": {"caption": bad}}})


def test_ray_batches_are_whole_micro_batches():
    assert [whole_micro_batches(b, 4) for b in (1, 4, 10, 12)] == [4, 4, 12, 12]
    assert whole_micro_batches(3, 8) == 8 and whole_micro_batches(10, None) == 10
    cfg = Config.model_validate({"ray": {"batch_sizes": {"generate": 10},
                                         "micro_batch_sizes": {"generate": 4},
                                         "pool_sizes": {"generate": 1}}})
    assert ActorStage("generate", object, {}).pool(cfg)["batch_size"] == 12
    # no micro-batch: as set
    assert ActorStage("other", object, {}, default_batch=6).pool(cfg)["batch_size"] == 6


def _probe_actor():
    class Probe:
        """Reports its pid, torch threads and the rows of each call."""

        def __init__(self, torch_threads: int | None = None) -> None:
            import os

            import torch

            if torch_threads:
                torch.set_num_threads(torch_threads)
            self.pid, self.threads = os.getpid(), torch.get_num_threads()

        def __call__(self, batch):
            import numpy as np

            n = len(batch["i"])
            return {"i": batch["i"], "pid": np.full(n, self.pid), "threads": np.full(n, self.threads),
                    "rows": np.full(n, n)}

    return Probe


def test_stage_streams_one_block_per_batch_and_sets_the_threads(ray_local):
    """24 rows at batch 4: 6 blocks, so 6 output batches reach the driver one by one (a 256-row block
    held everything back until the last row was done, and fed a single actor of the pool)."""
    cfg = Config.model_validate({"ray": {"pool_sizes": {"probe": 2}, "batch_sizes": {"probe": 4},
                                         "actor_num_cpus": 0.5}})
    stage = ActorStage("probe", _probe_actor(), {})
    assert stage.pool(cfg)["fn_constructor_kwargs"] == {"torch_threads": 1}
    out = list(stage.dataset(cfg, [{"i": i} for i in range(24)]).iter_batches(batch_size=None,
                                                                              batch_format="numpy"))
    assert len(out) == 6
    assert sorted(int(i) for b in out for i in b["i"]) == list(range(24))
    assert {int(r) for b in out for r in b["rows"]} == {4}
    assert {int(t) for b in out for t in b["threads"]} == {1}


def test_stage_pool_uses_the_role_threads_and_remote_overrides():
    cfg = Config.model_validate({"ray": {"pool_sizes": {"llm": 1}, "actor_num_cpus": 0.5,
                                         "actor_num_gpus": 0.5}})
    stage = ActorStage("llm", object, {"a": 1}, threads=2, remote={"num_cpus": 0.25, "num_gpus": None})
    kw = stage.pool(cfg)
    assert kw["fn_constructor_kwargs"] == {"a": 1, "torch_threads": 2}
    assert kw["num_cpus"] == 0.25 and "num_gpus" not in kw and kw["compute"].max_size == 1


def test_placement_group_cpus_sums_the_created_groups_bundles():
    table = {"a": {"state": "CREATED", "bundles": {0: {"CPU": 1.0}, 1: {"CPU": 0.5, "GPU": 1.0}}},
             "b": {"state": "PENDING", "bundles": {0: {"CPU": 4.0}}},  # not holding anything yet
             "c": {"state": "REMOVED", "bundles": {0: {"CPU": 2.0}}},
             "d": {"state": "CREATED", "bundles": {0: {"GPU": 1.0}}}}
    assert placement_group_cpus(table) == 1.5
    assert placement_group_cpus({}) == 0.0


def test_auto_pool_leaves_a_tune_trials_reservation_alone(ray_local):
    """On 2 CPUs a sweep trial holds 1 in its placement group: an auto pool of 0.5-CPU, 1-thread actors gets
    the 1 CPU left, 1 actor, not 2 (sized to the whole cluster, the EDITS sweep's pool took the CPU its decode
    tasks needed and hung)."""
    from ray.util import placement_group, remove_placement_group

    assert pool_plan("auto", 0.5) == (2, 1)
    pg = placement_group([{"CPU": 1.0}])
    ray_local.get(pg.ready(), timeout=60)
    try:
        assert pool_plan("auto", 0.5) == (1, 1)
    finally:
        remove_placement_group(pg)
