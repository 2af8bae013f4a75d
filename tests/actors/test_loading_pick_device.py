"""pick_device: a worker with a Ray GPU but no CUDA falls back to CPU with one clear warning."""

from __future__ import annotations

import warnings

import pytest
import torch

from actors import loading


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(loading, "_warned_no_cuda", False)


def test_logical_gpu_without_cuda_warns_once(no_cuda, monkeypatch):
    monkeypatch.setattr(loading, "assigned_gpus", lambda: [1])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        devs = [loading.pick_device() for _ in range(3)]
    assert devs == [torch.device("cpu")] * 3
    ours = [w for w in seen if issubclass(w.category, loading.NoCudaWarning)]
    assert len(ours) == 1
    text = str(ours[0].message)
    assert "GPU [1]" in text and "CUDA_VISIBLE_DEVICES='1'" in text and "ray.actor_num_gpus=0" in text


def test_no_gpu_asked_no_warning(no_cuda, monkeypatch):
    monkeypatch.setattr(loading, "assigned_gpus", list)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert loading.pick_device() == torch.device("cpu")
        assert loading.pick_device("cpu") == torch.device("cpu")


def test_ray_gpu_ids_reach_the_check(ray_local):
    """Inside a Ray task given a logical GPU, assigned_gpus() is Ray's GPU id list."""
    @ray_local.remote(num_gpus=0)
    def ids() -> list:
        return loading.assigned_gpus()

    assert ray_local.get(ids.remote()) == []
    assert loading.assigned_gpus() == []  # the driver holds no GPU
