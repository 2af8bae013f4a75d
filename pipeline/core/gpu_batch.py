"""Ray batch sizes from free GPU memory, for a role whose ``ray.batch_sizes`` entry is unset.

``batch_from_free_memory`` is the rule: as many whole micro-batches as fit in the free memory (at
least one, at most ``cap`` rows). The actor feeds the model fixed micro-batches
(``ray.micro_batch_sizes``), so the Ray batch never changes an output bit; what it sets is how much
work one actor call holds, which the estimate below bounds by the GPU memory an actor can use.

``ROLE_MEMORY`` are ESTIMATES for the default models at bf16 on one GPU, not measurements (no
GPU runs in CI): weights = published parameter count x 2 bytes; per image = the largest
activations held during one forward at the stage's default resolution (named per role), times
2 for classifier-free guidance where the stage runs it, rounded up. ``bench/gpu_check.sh``
prints the measured peaks of the real-size SD and DiT next to these numbers to check them.
"""

from __future__ import annotations

import math
import sys
from typing import Any, NamedTuple

GiB = 1024 ** 3
MiB = 1024 ** 2
AUTO_BATCH_CAP = 256  # rows: a bigger Ray batch only delays the first output and holds more host memory
HEADROOM = 0.8  # share of the free memory planned for: the CUDA context, allocator slack, fragmentation


class RoleMemory(NamedTuple):
    """GPU memory of one actor of a role: its weights, and what each image of a batch adds (bytes)."""

    weights: int
    per_image: int


ROLE_MEMORY: dict[str, RoleMemory] = {
    # LLaVA-1.5-7B: 7.06 B params; per image the KV cache of ~720 tokens (576 image + prompt + 77 new)
    # x 32 layers x 2 (K, V) x 4096 x 2 B = 0.38 GB, plus activations: 0.5 GiB
    "caption": RoleMemory(int(14.2e9), GiB // 2),
    # CLIP ViT-L/14: 428 M params; per image 257 tokens x 1024 wide, the 4096-wide MLP the largest,
    # a few MB a layer (inference frees each layer), and the 77-token caption: 16 MiB
    "embed": RoleMemory(int(0.86e9), 16 * MiB),
    # sd-vae-ft-mse: 83.7 M params; encoding 512 px: 128 ch x 512 x 512 x 2 B = 67 MB a tensor, about
    # four live in the first down block (GroupNorm upcasts): 0.4 GiB
    "vae": RoleMemory(int(0.17e9), 2 * GiB // 5),
    # Qwen2.5-7B-Instruct: 7.62 B params; per prompt ~2 k tokens of KV (28 layers x 2 x 512 x 2 B = 57 KB a
    # token, GQA) = 0.11 GB plus the prefill's 18944-wide MLP: 0.25 GiB
    "llm": RoleMemory(int(15.3e9), GiB // 4),
    # SD 1.5: UNet 860 M + text encoder 123 M + VAE 84 M params; per image CFG doubles the UNet batch at
    # 64 x 64 latents, and the VAE decode to 512 px (128-512 ch at up to 512 x 512) peaks near 1 GB: 1.5 GiB
    "generate": RoleMemory(int(2.14e9), 3 * GiB // 2),
    # DiT-XL/2-256: 675 M params + the SD VAE; per image 256 tokens x 1152 wide (CFG: x 2) is small, the
    # VAE encode / decode at 256 px dominates (a quarter of 512 px's): 0.4 GiB
    "recover": RoleMemory(int(1.52e9), 2 * GiB // 5),
}


def batch_from_free_memory(free_bytes: float, per_image_bytes: float, micro: int | None, cap: int) -> int:
    """Rows of a Ray batch: whole micro-batches of ``micro`` rows (1 when None) that fit in ``free_bytes`` at
    ``per_image_bytes`` each, at least one micro-batch, at most ``cap`` rows (rounded down to whole
    micro-batches,
    never below one)."""
    if per_image_bytes <= 0:
        raise ValueError(f"per_image_bytes must be positive, got {per_image_bytes}")
    micro = max(1, int(micro or 1))
    fit = max(1, math.floor(max(0.0, free_bytes) / (per_image_bytes * micro)))
    most = max(1, int(cap) // micro)
    return min(fit, most) * micro


def free_gpu_bytes(actor_num_gpus: float, probe_timeout_s: float = 60.0) -> int | None:
    """Free memory of the GPU one actor holds, times the actor's share when actors split a GPU
    (``actor_num_gpus < 1``): one probe task on a Ray GPU node when Ray runs with GPUs (the driver opens
    no CUDA context), else ``torch.cuda.mem_get_info`` here. None when there is no GPU to ask."""
    # heavy: torch (not loaded when this module is imported)
    import torch

    share = min(1.0, float(actor_num_gpus))
    ray = sys.modules.get("ray")  # never import Ray just to ask
    if ray is not None and ray.is_initialized() and ray.cluster_resources().get("GPU"):
        try:
            free = ray.get(ray.remote(num_gpus=share, num_cpus=0)(_probe_free).remote(),
                           timeout=probe_timeout_s)
        except ray.exceptions.GetTimeoutError:  # every GPU busy: keep the default batch
            return None
    elif torch.cuda.is_available():
        free = int(torch.cuda.mem_get_info()[0])
    else:
        return None
    return None if free is None else int(free * share)


def _probe_free() -> int | None:
    # heavy: torch (not loaded when this module is imported)
    import torch

    return int(torch.cuda.mem_get_info()[0]) if torch.cuda.is_available() else None


def auto_batch(role: str, micro: int | None, actor_num_gpus: float, cap: int = AUTO_BATCH_CAP) -> int | None:
    """The Ray batch of ``role`` from free GPU memory (None: no GPU actor, no estimate, or no GPU to ask)."""
    est = ROLE_MEMORY.get(role)
    if actor_num_gpus <= 0 or est is None:
        return None
    free = free_gpu_bytes(actor_num_gpus)
    if free is None:
        return None
    return batch_from_free_memory(free * HEADROOM - est.weights, est.per_image, micro, cap)


def pool_batch(cfg: Any, role: str, default_batch: int) -> int:
    """``ray.batch_sizes[role]``; unset, on GPU actors of a role with a micro-batch: ``auto_batch``; else
    ``default_batch``. A role without a micro-batch keeps ``default_batch``: its Ray batch is the model
    batch, which is part of the stage's key (``input:model_batch``), so it must not follow free memory."""
    if role in cfg.ray.batch_sizes:
        return int(cfg.ray.batch_sizes[role])
    micro = cfg.ray.micro_batch_sizes.get(role)
    auto = auto_batch(role, micro, cfg.ray.actor_num_gpus) if micro else None
    return auto if auto is not None else int(default_batch)
