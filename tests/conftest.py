"""Shared fixtures: offline hub, a repo-local zoo, the demo digits, one local Ray per session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("SEMDISTILL_ZOO_DIR", str(REPO / ".cache" / "test-zoo"))
os.environ.setdefault("SEMDISTILL_PROGRESS", "0")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(scope="session")
def zoo_dir() -> Path:
    """The tiny model zoo (built once, reused across runs)."""
    from actors.zoo import build_zoo, default_zoo_dir

    roles = ("tokenizer", "clip", "vlm", "llm", "vae", "dit", "sd")
    build_zoo(roles=roles, log=lambda _msg: None)
    return default_zoo_dir()


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded demo digits (train/ and val/), written once per session."""
    from pipeline.core.digits import write_demo_dataset

    root = tmp_path_factory.mktemp("digits")
    write_demo_dataset(root)
    return root


@pytest.fixture(scope="session")
def ray_local():
    """A local Ray instance for the session (2 CPUs, small object store); shut down at the end."""
    import ray

    from pipeline.config import RayConfig
    from pipeline.core.ray_setup import init_ray

    started = init_ray(RayConfig(num_cpus=2, object_store_memory_mb=512))
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def stage1_pt(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A classical distilled set as a ``.pt``: 3 classes x 2 images, 32 px, values in [0, 1]."""
    import torch

    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("stage1") / "set.pt"
    torch.save({"images": torch.rand(6, 3, 32, 32, generator=g), "labels": torch.tensor([0, 0, 1, 1, 2, 2]),
                "classes": ["3", "5", "7"]}, path)
    return path
