"""Pretrained soft-label teachers: torchvision's and timm's ResNet-18 state dicts in our ResNet-18.

RDED and SRe2L relabel with a pretrained ResNet-18 (``torchvision.models.resnet18(pretrained=True)`` at
ImageNet-1K: VILA-Lab/SRe2L validate/train_KD.py, commit d6a720e; LINs-lab/RDED validation/utils.py
``load_model``, commit 3f6453d). Both libraries name the ResNet-18 parameters alike: ``conv1``, ``bn1``,
``layer{1..4}.{0,1}.conv1 / bn1 / conv2 / bn2``, the stride-2 shortcut ``layer{2..4}.0.downsample.0``
(conv) and ``.downsample.1`` (batch norm), and ``fc``; timm's files from the hub often leave out the batch
norms' ``num_batches_tracked``. Our ``resnet18_imagenet_bn`` (tuning/students_resnet.py) holds the same
tensors as ``stem.0`` / ``stem.1``, ``layers.{k}.conv1 / n1 / conv2 / n2 / shortcut.0 / shortcut.1`` (block
``k = 2 (stage - 1) + index``) and ``fc``; ``to_ours`` renames one layout into the other.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.errors import DataError

_BLOCK = re.compile(r"^layer([1-4])\.(\d+)\.(.+)$")
_IN_BLOCK = {"conv1": "conv1", "bn1": "n1", "conv2": "conv2", "bn2": "n2", "downsample.0": "shortcut.0",
             "downsample.1": "shortcut.1"}
_WRAPPERS = ("state_dict", "model", "model_state_dict", "module")  # checkpoint dicts that hold the weights


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a ``.pt`` / ``.pth`` / ``.pth.tar`` (a state dict, or a dict holding one under
    ``state_dict`` / ``model``) or ``.safetensors`` file; a DDP ``module.`` prefix is dropped."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"eval.teacher_checkpoint {p}: no such file (a torchvision / timm ResNet-18 state "
                        f"dict, or `scratch` to train the teacher on the real train split)")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        state: Any = load_file(str(p))
    else:
        state = torch.load(p, map_location="cpu", weights_only=True)
    for key in _WRAPPERS:
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise DataError(f"eval.teacher_checkpoint {p}: expected a state dict of tensors, got "
                        f"{type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def is_library_layout(state: dict[str, torch.Tensor]) -> bool:
    """Whether ``state`` names a ResNet the torchvision / timm way (``conv1.weight`` + ``layer1.*``)."""
    return "conv1.weight" in state and any(k.startswith("layer1.") for k in state)


def to_ours(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision / timm ResNet-18 state dict into ``resnet18_imagenet_*``'s names (module doc);
    a key that fits neither layout is a ``DataError`` naming it."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        head, _, leaf = key.rpartition(".")
        if head in ("conv1", "bn1"):
            out[f"stem.{0 if head == 'conv1' else 1}.{leaf}"] = value
        elif head == "fc":
            out[key] = value
        elif m := _BLOCK.match(key):
            stage, index, rest = int(m.group(1)), int(m.group(2)), m.group(3)
            part, _, leaf = rest.rpartition(".")
            if part not in _IN_BLOCK or index > 1:
                raise DataError(f"teacher checkpoint key {key!r} is not part of a ResNet-18")
            out[f"layers.{2 * (stage - 1) + index}.{_IN_BLOCK[part]}.{leaf}"] = value
        else:
            raise DataError(f"teacher checkpoint key {key!r} is not part of a torchvision / timm ResNet-18")
    return out


def load_into(net: torch.nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Load ``state`` (our names, or torchvision's / timm's) into ``net``; batch-norm counters a file leaves
    out keep their fresh value. Returns the keys filled that way; any other mismatch raises
    ``RuntimeError``."""
    if is_library_layout(state):
        state = to_ours(state)
    own = net.state_dict()
    counters = [k for k in own if k.endswith("num_batches_tracked") and k not in state]
    net.load_state_dict({**{k: own[k] for k in counters}, **state})
    return counters
