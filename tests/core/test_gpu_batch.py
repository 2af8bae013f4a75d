"""Ray batch sizes from free GPU memory when ``ray.batch_sizes[role]`` is unset."""

from __future__ import annotations

import pytest
import torch

from pipeline.config import Config
from pipeline.core.actor_stage import ActorStage
from pipeline.core.gpu_batch import HEADROOM, ROLE_MEMORY, GiB, batch_from_free_memory


def test_batch_from_free_memory_by_hand():
    assert batch_from_free_memory(10 * GiB, GiB, 4, 256) == 8  # floor(10 / 4) = 2 micro-batches
    assert batch_from_free_memory(10 * GiB, GiB, None, 256) == 10  # no micro-batch: rows of 1
    assert batch_from_free_memory(10.5 * GiB, GiB, 1, 256) == 10
    assert batch_from_free_memory(100 * GiB, GiB, 4, 6) == 4  # cap 6 holds one whole micro-batch of 4
    assert batch_from_free_memory(0, GiB, 4, 256) == 4  # at least one micro-batch
    assert batch_from_free_memory(-3 * GiB, GiB, 4, 256) == 4  # weights exceed the free memory: still one
    assert batch_from_free_memory(100 * GiB, GiB, 4, 3) == 4  # a cap below one micro-batch: one micro-batch
    assert batch_from_free_memory(1e15, 1, 1, 256) == 256
    with pytest.raises(ValueError, match="per_image_bytes"):
        batch_from_free_memory(GiB, 0, 4, 256)


class _Probe:
    def __init__(self, **kw):
        pass


@pytest.fixture
def fake_gpu(monkeypatch):
    """This process 'sees' one CUDA GPU with 48 GiB free; records the calls."""
    calls = []

    def mem_get_info(*a):
        calls.append(a)
        return 48 * GiB, 80 * GiB

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "mem_get_info", mem_get_info)
    return calls


def _cfg(**ray):
    return Config.model_validate({"ray": {"micro_batch_sizes": {"generate": 4, "embed": 32}, **ray}})


def test_pool_batch_follows_free_gpu_memory_only_when_unset_on_gpu(fake_gpu):
    # generate: (48 GiB * 0.8 - 2.14e9 B) / (1.5 GiB * 4) = 6.07 -> 6 micro-batches of 4
    est = ROLE_MEMORY["generate"]
    assert int((48 * GiB * HEADROOM - est.weights) // (est.per_image * 4)) == 6
    gpu = _cfg(actor_num_gpus=1, batch_sizes={"embed": 64})
    assert ActorStage("generate", _Probe, {}).pool(gpu)["batch_size"] == 24
    assert ActorStage("embed", _Probe, {}).pool(gpu)["batch_size"] == 64  # set: kept
    # half a GPU each: 24 GiB * 0.8 - 2.14e9 B over 6 GiB -> 2 micro-batches
    half = _cfg(actor_num_gpus=0.5, batch_sizes={})
    assert ActorStage("generate", _Probe, {}).pool(half)["batch_size"] == 8
    # embed (CLIP): 16 MiB an image, micro 32: far more than fits the cap -> 256 (8 micro-batches)
    assert ActorStage("embed", _Probe, {}, default_batch=32).pool(half)["batch_size"] == 256
    # a role without a micro-batch keeps its default (its Ray batch is the model batch, part of its key)
    assert ActorStage("vae", _Probe, {}, default_batch=8).pool(half)["batch_size"] == 8
    n_gpu_calls = len(fake_gpu)
    assert n_gpu_calls == 3
    cpu = _cfg(actor_num_gpus=0, batch_sizes={})  # CPU actors: the default batch, no GPU asked
    assert ActorStage("generate", _Probe, {}, default_batch=8).pool(cpu)["batch_size"] == 8
    assert len(fake_gpu) == n_gpu_calls


def test_pool_batch_without_a_gpu_to_ask_keeps_the_default(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    cfg = _cfg(actor_num_gpus=1, batch_sizes={})
    assert ActorStage("generate", _Probe, {}, default_batch=8).pool(cfg)["batch_size"] == 8



def test_free_memory_is_probed_on_a_ray_gpu_node_without_cuda_here(monkeypatch):
    """The driver (a CPU head node) asks one GPU task; actors sharing a GPU get their share of it."""
    import sys
    import types

    from pipeline.core.gpu_batch import free_gpu_bytes

    asked = []

    class Ref:
        def __init__(self, fn):
            self.fn = fn

    def remote(**opts):
        asked.append(opts)
        return lambda fn: types.SimpleNamespace(remote=lambda: Ref(fn))

    fake = types.SimpleNamespace(is_initialized=lambda: True, cluster_resources=lambda: {"GPU": 2.0},
                                 remote=remote, get=lambda ref, timeout=None: 40 * GiB,
                                 exceptions=types.SimpleNamespace(GetTimeoutError=TimeoutError))
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert free_gpu_bytes(0.5) == 20 * GiB and asked == [{"num_gpus": 0.5, "num_cpus": 0}]
    assert free_gpu_bytes(2) == 40 * GiB  # an actor on more than one GPU still runs its model on one

    def busy(ref, timeout=None):
        raise TimeoutError

    fake.get = busy
    assert free_gpu_bytes(1) is None  # every GPU held: the caller keeps the default batch
