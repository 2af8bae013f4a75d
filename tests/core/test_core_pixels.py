"""Pixel conversions and channel statistics (pipeline.core.pixels), against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.core.pixels import (
    channel_stats,
    normalize,
    signed_to_unit,
    u8_hwc_to_signed_chw,
    u8_hwc_to_unit_chw,
    unit_chw_to_u8_hwc,
    unit_to_signed,
)


def _img() -> np.ndarray:
    x = np.zeros((1, 1, 2, 3), dtype=np.uint8)  # one image, 1 x 2 pixels, RGB
    x[0, 0, 0] = (0, 51, 255)
    x[0, 0, 1] = (255, 102, 0)
    return x


def test_uint8_conversions_give_the_hand_values_in_chw():
    unit = u8_hwc_to_unit_chw(_img())
    assert unit.shape == (1, 3, 1, 2) and unit.dtype == torch.float32
    assert unit[0, :, 0, 0].tolist() == pytest.approx([0.0, 0.2, 1.0])
    signed = u8_hwc_to_signed_chw(_img())
    assert signed[0, :, 0, 1].tolist() == pytest.approx([1.0, 102 / 127.5 - 1, -1.0])
    ro = _img()
    ro.setflags(write=False)  # Ray hands out read-only batches
    assert torch.equal(u8_hwc_to_signed_chw(ro), signed)


def test_unit_signed_round_trip_and_clamp():
    x = torch.tensor([0.0, 0.25, 1.0])
    assert unit_to_signed(x).tolist() == [-1.0, -0.5, 1.0]
    assert signed_to_unit(torch.tensor([-3.0, -0.5, 1.0, 2.0])).tolist() == [0.0, 0.25, 1.0, 1.0]


def test_unit_to_uint8_rounds_half_up_and_clips():
    x = torch.tensor([0.0, 0.5, 1.2, 2 / 255 + 0.001]).view(1, 4, 1, 1).expand(1, 4, 1, 2)[:, :3]
    u8 = unit_chw_to_u8_hwc(x)
    assert u8.shape == (1, 1, 2, 3) and u8.dtype == np.uint8
    assert u8[0, 0, 0].tolist() == [0, 128, 255]  # 127.5 + 0.5 -> 128; 1.2 clipped to 255
    # one image [C, H, W]
    assert unit_chw_to_u8_hwc(torch.full((3, 1, 1), 2 / 255))[0, 0].tolist() == [2, 2, 2]


def test_normalize_per_channel():
    x = torch.ones(1, 2, 1, 1)
    assert normalize(x, [0.5, 0.0], [0.25, 2.0]).flatten().tolist() == [2.0, 0.5]


def test_channel_stats_are_population_stats_of_unit_pixels_in_chunks():
    x = _img()
    mean, std = channel_stats(x)
    # R: 0 and 1 -> mean 0.5, population std 0.5; G: 0.2 and 0.4 -> 0.3, 0.1; B: like R
    assert mean.tolist() == pytest.approx([0.5, 0.3, 0.5], abs=1e-7)
    assert std.tolist() == pytest.approx([0.5, 0.1, 0.5], abs=1e-7)
    assert mean.dtype == np.float32 and std.dtype == np.float32
    rng = np.random.default_rng(0)
    many = rng.integers(0, 256, (7, 3, 4, 3), dtype=np.uint8)
    m1, s1 = channel_stats(many, chunk=2)  # chunked passes agree with one float64 pass
    f = many.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_array_equal(m1, f.mean(0).astype(np.float32))
    np.testing.assert_allclose(s1, f.std(0), rtol=1e-6)
    flat = np.full((2, 2, 2, 3), 7, dtype=np.uint8)
    assert channel_stats(flat)[1].tolist() == pytest.approx([1e-3] * 3)  # floored
    with pytest.raises(ValueError, match="N >= 1"):
        channel_stats(np.zeros((0, 2, 2, 3), np.uint8))
