"""Same config and seed -> byte-identical outputs, whatever the batching.

Float kernels choose algorithms by shape, so the zoo DiT/VAE give ~1e-6 different numbers
for one image in a batch of 5 vs a batch of 1. ``run_fixed`` feeds the model micro-batches
of one fixed size, which makes the result independent of the Ray batch it came in.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.batching import chunks, pad_rows, run_fixed
from pipeline.core.seeds import image_seed


def test_run_fixed_pads_trims_and_concatenates():
    calls = []

    def fn(x, names):
        calls.append((len(x), list(names)))
        return {"double": x * 2, "names": [n.upper() for n in names]}

    out = run_fixed(fn, [torch.arange(5), ["a", "b", "c", "d", "e"]], size=2)
    assert out["double"].tolist() == [0, 2, 4, 6, 8] and out["names"] == ["A", "B", "C", "D", "E"]
    # the last chunk padded with its last row
    assert calls == [(2, ["a", "b"]), (2, ["c", "d"]), (2, ["e", "e"])]
    assert chunks(5, 2) == [(0, 2), (2, 4), (4, 5)]
    assert pad_rows(np.array([[1, 2]]), 3).tolist() == [[1, 2]] * 3
    assert run_fixed(lambda x: x + 1, [np.arange(3)], size=None).tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="different lengths"):
        run_fixed(fn, [torch.arange(3), ["a"]], size=2)


@pytest.fixture(scope="module")
def dit(zoo_dir):
    from actors.dit import load_dit

    return load_dit("zoo:dit", device="cpu", dtype="float32")


def test_diver_recovery_is_batch_size_invariant(dit):
    """DIVER on the zoo DiT: 5 images as one Ray batch, as 5 batches of 1, and as 2+3 give the
    same floats (not just the same uint8) when the model runs in fixed micro-batches of 4."""
    from actors.dit import recover_images
    from pipeline.diver.guidance import RecoverSettings

    transformer, vae, scheduler = dit
    settings = RecoverSettings.of(num_inference_steps=4, start_step=1, fusion_window=(3, 1), gamma=0.1)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(5, 3, 32, 32, generator=g)
    classes = [3, 1, 4, 1, 5]
    seeds = [image_seed(42, str(c), i) for i, c in enumerate(classes)]

    def model(x, c, s):
        return recover_images(transformer, vae, scheduler, x, list(c), list(s), settings, 32)

    def ray_batches(sizes):
        outs, start = [], 0
        for n in sizes:
            sl = slice(start, start + n)
            outs.append(run_fixed(model, [images[sl], classes[sl], seeds[sl]], size=4))
            start += n
        return torch.cat(outs)

    whole = ray_batches([5])
    assert whole.shape == (5, 3, 32, 32)
    assert torch.equal(whole, ray_batches([1, 1, 1, 1, 1]))
    assert torch.equal(whole, ray_batches([2, 3]))
    other_seed = recover_images(transformer, vae, scheduler, images[:1], classes[:1], [seeds[0] + 1],
                                settings, 32)
    assert not torch.equal(whole[:1], other_seed)  # the seed matters: the test can fail


def test_run_fixed_hands_the_model_row_major_tensors():
    """A permuted NHWC batch (how actors turn Ray's arrays into NCHW) and its padded copy used to reach
    the model in different memory layouts, which pick different convolution kernels: the DiT actor's
    batch of 4 and four batches of 1 then differed by one level in one pixel."""
    import numpy as np
    import torch

    from pipeline.core.batching import run_fixed

    nhwc = torch.from_numpy(np.random.default_rng(0).random((4, 8, 8, 3), dtype=np.float32))
    seen = []

    def fn(x):
        seen.append(x.is_contiguous())
        return x.sum(dim=(1, 2, 3))

    whole = run_fixed(fn, [nhwc.permute(0, 3, 1, 2)], 4)
    parts = torch.cat([run_fixed(fn, [nhwc[i:i + 1].permute(0, 3, 1, 2)], 4) for i in range(4)])
    assert all(seen) and torch.equal(whole, parts)
    conv = torch.nn.Conv2d(3, 5, 3)
    with torch.no_grad():
        full = run_fixed(conv, [nhwc.permute(0, 3, 1, 2)], 4)
        ones = torch.cat([run_fixed(conv, [nhwc[i:i + 1].permute(0, 3, 1, 2)], 4) for i in range(4)])
    assert torch.equal(full, ones)
