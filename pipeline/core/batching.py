"""Run a model in fixed-size micro-batches so its output does not depend on how Ray batched the rows.

Float kernels (BLAS GEMM, oneDNN convolutions, cuBLAS) pick their algorithm by tensor shape:
the same image in a batch of 6 and in a batch of 1 differs by ~1e-6, enough to flip a uint8
pixel now and then. Ray Data's batches vary in size (``batch_size`` settings, block edges,
the last batch), so an actor that feeds its Ray batch straight to the model is not
byte-reproducible across pool and batch sizes. Feeding the model chunks of exactly
``size`` rows (the last one padded by repeating its last row, then trimmed) makes every
image see the same shapes, whatever the Ray batch was. Rows do not interact inside a
model batch (no batch norm in eval mode), so an image's result is the same whichever rows
share its chunk: measured exact on the zoo DiT and VAE (tests/core/test_core_batching.py).

Text generation also depends on padding length: pad prompts to a fixed length
(``padding="max_length"``) as well, so a row's pad count depends only on itself.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch


def chunks(n: int, size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` covering ``range(n)`` in steps of ``size``."""
    if size <= 0:
        raise ValueError(f"micro-batch size must be positive, got {size}")
    return [(i, min(i + size, n)) for i in range(0, n, size)]


def batch_blocks(n_rows: int, batch_size: int, cap: int = 200) -> int:
    """How many blocks to cut ``n_rows`` into so each holds one Ray batch of ``batch_size``.

    Block edges cut Ray batches short, and a short batch is padded out to a full micro-batch
    (wasted model work); blocks of one batch each keep the micro-batches full.
    """
    return max(1, min(cap, -(-n_rows // max(1, batch_size))))


def whole_micro_batches(batch: int, micro: int | None) -> int:
    """``batch`` rounded up to whole micro-batches: a Ray batch of 10 at micro-batch 4 ran 12 rows of model
    work (the last micro-batch padded), one of 3 at 8 ran 8. Outputs do not change (the model sees the same
    micro-batches); without a micro-batch the Ray batch is the model batch and stays as it is."""
    return -(-batch // micro) * micro if micro else batch


def pad_rows(x: Any, size: int) -> Any:
    """``x`` (tensor, array or list) extended to ``size`` rows by repeating its last row."""
    n = len(x)
    if n == size:
        return x
    if n == 0 or n > size:
        raise ValueError(f"cannot pad {n} rows to {size}")
    if isinstance(x, torch.Tensor):
        return torch.cat([x, x[-1:].expand(size - n, *x.shape[1:])])
    if isinstance(x, np.ndarray):
        return np.concatenate([x, np.repeat(x[-1:], size - n, axis=0)])
    return list(x) + [x[-1]] * (size - n)


def _trim(out: Any, n: int) -> Any:
    if isinstance(out, tuple):
        return tuple(_trim(o, n) for o in out)
    if isinstance(out, dict):
        return {k: _trim(v, n) for k, v in out.items()}
    return out[:n]


def _cat(parts: list[Any]) -> Any:
    first = parts[0]
    if isinstance(first, tuple):
        return tuple(_cat([p[i] for p in parts]) for i in range(len(first)))
    if isinstance(first, dict):
        return {k: _cat([p[k] for p in parts]) for k in first}
    if isinstance(first, torch.Tensor):
        return torch.cat(parts)
    if isinstance(first, np.ndarray):
        return np.concatenate(parts)
    return [x for p in parts for x in p]


def _contiguous(x: Any) -> Any:
    """Tensors in the default (row-major) memory layout: a strided view (e.g. a permuted NHWC array)
    and a padded copy of it would otherwise reach different convolution kernels and differ by rounding."""
    return x.contiguous() if isinstance(x, torch.Tensor) else x


def run_fixed(fn: Callable[..., Any], inputs: Sequence[Any], size: int | None) -> Any:
    """``fn(*chunk_inputs)`` over micro-batches of exactly ``size`` rows, results concatenated.

    ``inputs`` are row-aligned (tensors, arrays or lists of equal length); ``fn`` returns a
    tensor, array, list, or a tuple/dict of them, with one row per input row. ``size=None``
    runs one call on everything (fast, but batch-size dependent at float-rounding level).
    """
    n = len(inputs[0])
    if any(len(x) != n for x in inputs):
        raise ValueError(f"inputs have different lengths: {[len(x) for x in inputs]}")
    if size is None or n == 0:
        return fn(*[_contiguous(x) for x in inputs])
    parts = []
    for start, stop in chunks(n, size):
        chunk = [_contiguous(pad_rows(x[start:stop], size)) for x in inputs]
        parts.append(_trim(fn(*chunk), stop - start))
    return _cat(parts)
