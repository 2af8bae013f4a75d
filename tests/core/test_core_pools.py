"""block_count, task_options and pool_kwargs: the one place Ray resources and block counts are built."""

from __future__ import annotations

from pipeline.config import Config, RayConfig
from pipeline.core.pools import pool_kwargs
from pipeline.core.ray_setup import block_count, task_options


def test_block_count_is_rows_over_256_between_1_and_200():
    assert [block_count(n) for n in (0, 255, 256, 767, 768, 51_200, 10**7)] == [1, 1, 1, 2, 3, 200, 200]
    assert block_count(300, rows_per_block=128) == 2 and block_count(10**6, cap=64) == 64


def test_task_options_are_the_actor_resources_plus_retries_outside_any_trial_placement_group():
    assert task_options(RayConfig(max_task_retries=3)) == {"num_cpus": 0.5, "max_retries": 3,
                                                           "scheduling_strategy": "DEFAULT"}
    assert task_options(RayConfig(actor_num_cpus=2, actor_num_gpus=1, max_task_retries=0)) == {
        "num_cpus": 2, "num_gpus": 1, "max_retries": 0, "scheduling_strategy": "DEFAULT"}


def test_pool_kwargs_batch_falls_back_to_the_given_default():
    cfg = Config.model_validate({"ray": {"batch_sizes": {"embed": 16}, "pool_sizes": {"embed": 3},
                                         "max_restarts": 4, "max_task_retries": 5}})
    kw = pool_kwargs(cfg, "embed")
    assert kw["batch_size"] == 16 and kw["compute"].max_size == 3 and kw["num_cpus"] == 0.5
    assert kw["max_restarts"] == 4 and kw["max_task_retries"] == 5 and "num_gpus" not in kw
    other = pool_kwargs(cfg, "recover", default_batch=6)
    assert other["batch_size"] == 6 and other["compute"].max_size == 1
    assert pool_kwargs(cfg, "recover")["batch_size"] == 8
