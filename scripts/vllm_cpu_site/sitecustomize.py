"""Lets PyPI's torchvision import on a CPU-only torch, in scripts/test-vllm-cpu.sh's vLLM venv only.

vLLM's LLaVA module imports its Pixtral vision tower, whose transformers image processor imports
torchvision. PyPI's torchvision wheels are CUDA builds: their C++ ops (``_C.so``) need
``libtorch_cuda.so`` and do not load on vllm-cpu's ``torch==2.13.0+cpu``. torchvision handles that
(``extension._has_ops()`` is False) except in one place: ``_meta_registrations`` registers a fake kernel
for ``torchvision::nms`` and ``::qnms`` unconditionally, which raises ``operator torchvision::nms does not
exist``. This hook declares those operators' schema (no kernel: calling ``torchvision.ops.nms`` still fails)
just before that module runs, and only when the ops did not load. Everything else of torchvision
(the transforms the image processors use) is plain Python over torch.

Where the CPU wheel can be installed instead (``pip install torchvision==0.28.0+cpu --index-url
https://download.pytorch.org/whl/cpu``), its ops load and this hook does nothing.
"""

from __future__ import annotations

import importlib.abc
import sys

# the two operators torchvision 0.28 registers fake kernels for without checking that its ops loaded
UNGUARDED = ("torchvision::nms", "torchvision::qnms")
NMS_SCHEMA = "(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"


class DeclareNmsFirst(importlib.abc.MetaPathFinder):
    """Runs once, when ``torchvision._meta_registrations`` is about to be imported; finds nothing itself."""

    def find_spec(self, name, path=None, target=None):
        if name != "torchvision._meta_registrations":
            return
        sys.meta_path.remove(self)
        import torch
        import torchvision.extension

        if not torchvision.extension._has_ops():
            for op in UNGUARDED:
                torch.library.define(op, NMS_SCHEMA)
        return


sys.meta_path.insert(0, DeclareNmsFirst())
