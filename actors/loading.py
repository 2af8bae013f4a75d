"""Load a model role by hub id, local folder or ``zoo:<role>``, with errors that say what to do.

Every actor goes through ``load_pretrained`` so that a missing local path fails with the
role and path named (and no download attempted), and device/dtype are chosen in one place.
"""

from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from pipeline.errors import ModelLoadError

T = TypeVar("T")


class NoCudaWarning(RuntimeWarning):
    """A Ray worker holds a logical GPU, but torch sees no CUDA device: the model runs on CPU."""


_warned_no_cuda = False


def assigned_gpus() -> list:
    """The GPU ids Ray gave this worker (``ray.actor_num_gpus``); empty outside Ray or without GPUs."""
    ray = sys.modules.get("ray")  # never import Ray just to ask
    if ray is None or not ray.is_initialized():
        return []
    return list(ray.get_gpu_ids())


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given, else CUDA when available, else CPU.

    A worker that Ray gave a GPU (``ray.actor_num_gpus > 0``) but that has no CUDA (a CPU torch build,
    a node declaring logical GPUs) falls back to CPU with one ``NoCudaWarning`` per process.
    """
    global _warned_no_cuda
    if prefer:
        return torch.device(prefer)
    if torch.cuda.is_available():
        return torch.device("cuda")
    gpus = assigned_gpus()
    if gpus and not _warned_no_cuda:
        _warned_no_cuda = True
        warnings.warn(
            f"semdistill: Ray gave this worker GPU {gpus} (ray.actor_num_gpus) but torch {torch.__version__} "
            f"sees no CUDA device (CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}); the "
            f"model runs on CPU. Install a CUDA build of torch on GPU nodes, or set ray.actor_num_gpus=0.",
            NoCudaWarning, stacklevel=2)
    return torch.device("cpu")


def set_torch_threads(threads: int | None) -> None:
    """Run torch on ``threads`` intra-op threads in this process (``None``: leave the default).

    Actors get the count from their pool's plan (``pipeline.core.actor_stage``): it is part of the
    result (convolutions split work by thread), so it must not depend on the shell's ``OMP_NUM_THREADS``.
    """
    if threads:
        torch.set_num_threads(int(threads))


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on a CUDA device that supports it (Ampere and newer), else fp16 there; fp32 on CPU.

    bf16 has fp32's exponent range, so the VAE and the UNet's attention do not overflow as they can in
    fp16 (diffusers' ``upcast_vae``); pre-Ampere GPUs emulate bf16 slowly, so they keep fp16.
    """
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def looks_local(ref: str) -> bool:
    """A ref that is meant as a path: absolute, relative with ./ or ../, ~, or an existing folder."""
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(ref) or ref.count("/") > 1


def resolve_ref(role: str, ref: str, zoo_dir: str | None = None) -> str:
    """``zoo:<role>`` -> the zoo folder; local paths are checked; hub ids pass through."""
    # heavy: PIL, numpy (not loaded when this module is imported)
    from actors.zoo import resolve_model_ref

    if ref.startswith("zoo:"):
        try:
            return resolve_model_ref(ref, zoo_dir)
        except KeyError as err:
            raise ModelLoadError(f"models.{role}: {err}") from None
    if looks_local(ref):
        path = Path(ref).expanduser()
        if not path.exists():
            raise ModelLoadError(
                f"models.{role}: local model path does not exist: {path} (no download is attempted for "
                "local paths; fix the path, build the zoo with `semdistill zoo build`, or give a hub id)"
            )
        return str(path)
    return ref


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_pretrained(role: str, ref: str, loader: Callable[..., T], zoo_dir: str | None = None,
                    **kwargs: Any) -> T:
    """Call ``loader(resolved_ref, **kwargs)`` (a ``from_pretrained``) with a clear error on failure."""
    resolved = resolve_ref(role, ref, zoo_dir)
    if offline() and not looks_local(resolved):
        kwargs.setdefault("local_files_only", True)
    try:
        return loader(resolved, **kwargs)
    except (OSError, ValueError) as err:
        hint = (" HF_HUB_OFFLINE is set, so only the local cache was searched; on a cluster node unset it "
                "or point the role at a local folder." if offline() else "")
        reason = " ".join(str(err).split()).rstrip(".")
        raise ModelLoadError(f"models.{role}: could not load {ref!r} ({resolved}): {reason}.{hint}") from None
