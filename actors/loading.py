"""Load a model role by hub id, local folder or ``zoo:<role>``, with errors that say what to do.

Every actor goes through ``load_pretrained`` so that a missing local path fails with the
role and path named (and no download attempted), and device/dtype are chosen in one place.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from pipeline.errors import ModelLoadError

T = TypeVar("T")


def pick_device(prefer: str | None = None) -> torch.device:
    """``prefer`` if given, else CUDA when the actor was given a GPU, else CPU."""
    if prefer:
        return torch.device(prefer)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, device: torch.device) -> torch.dtype:
    """``auto`` means fp16 on GPU and fp32 on CPU."""
    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]


def looks_local(ref: str) -> bool:
    """A ref that is meant as a path: absolute, relative with ./ or ../, ~, or an existing folder."""
    return ref.startswith(("/", "./", "../", "~")) or os.path.exists(ref) or ref.count("/") > 1


def resolve_ref(role: str, ref: str, zoo_dir: str | None = None) -> str:
    """``zoo:<role>`` -> the zoo folder; local paths are checked; hub ids pass through."""
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
