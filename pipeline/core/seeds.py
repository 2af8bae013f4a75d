"""Per-image randomness that does not depend on execution order, pool size or batch size.

Every random draw for one output image comes from its own generator seeded with
``image_seed(run_seed, class_id, index)``: the same image gets the same noise whether it
runs in a batch of 1 or 64, on actor 0 or actor 7, first or last. Draw on the CPU and move
the tensor to the device, so a GPU run uses the same noise as a CPU run.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import torch


def image_seed(base_seed: int, class_id: str, index: int) -> int:
    """A stable 63-bit seed for image ``index`` of class ``class_id`` under run seed ``base_seed``."""
    digest = hashlib.sha256(f"{int(base_seed)}:{class_id}:{int(index)}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def stage_seed(base_seed: int, name: str) -> int:
    """A stable seed for one named stage-level draw (e.g. ``"kmeans:n01440764"``)."""
    digest = hashlib.sha256(f"{int(base_seed)}:stage:{name}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & (2**31 - 1)  # 31 bits: fits FAISS / sklearn seeds


def generator(seed: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``seed``."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per image (diffusers pipelines accept such a list as ``generator=``)."""
    return [generator(s) for s in seeds]


def per_image_noise(seeds: Sequence[int], shape: tuple[int, ...],
                    dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Standard normal ``[len(seeds), *shape]`` on the CPU, row ``i`` drawn from ``seeds[i]`` alone."""
    if len(seeds) == 0:
        return torch.empty((0, *shape), dtype=dtype)
    return torch.stack([torch.randn(shape, generator=generator(s), dtype=dtype) for s in seeds])
