"""NCFM's 2x2 tiled images (diver.input_tiles=2): split, recover each tile at the DiT
resolution, re-tile, resize to the input size."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.config import config_from_dict
from pipeline.diver.tiles import join_tiles, split_tiles, tile_seed
from pipeline.errors import DataError

RECOVER = {"resolution": 32, "num_inference_steps": 6, "start_step": 0, "fusion_window": [0, 0],
           "reverse_start": "start_step", "sigma": "posterior", "torch_threads": 1}
RAY = {"num_cpus": 2, "actor_num_cpus": 0.5, "pool_sizes": {"recover": 1}, "batch_sizes": {"recover": 3}}


def test_split_and_join_are_inverse_and_row_major():
    x = torch.arange(2 * 4 * 4, dtype=torch.float32).reshape(2, 4, 4).repeat(3, 1, 1)[:3]  # [3, 4, 4]
    t = split_tiles(x, 2)
    assert t.shape == (4, 3, 2, 2)
    torch.testing.assert_close(t[1], x[:, :2, 2:])  # tile 1 = top right
    torch.testing.assert_close(t[2], x[:, 2:, :2])  # tile 2 = bottom left
    u8 = np.random.default_rng(0).integers(0, 256, (4, 5, 5, 3), dtype=np.uint8)
    joined = join_tiles(u8, 2, (10, 10))  # same size: no resize, exact
    assert np.array_equal(joined[:5, 5:], u8[1]) and np.array_equal(joined[5:, :5], u8[2])
    assert tile_seed(7, 0) != tile_seed(7, 1)


def _cfg(tmp_path, data, **diver):
    return config_from_dict({
        "method": "diver", "name": "t", "data": {"image_size": 64},
        "models": {"dit": "zoo:dit", "dtype": "float32"},
        "diver": {**RECOVER, "input": str(data), "class_map": {"0": 3, "1": 5}, **diver}, "ray": RAY,
        "output": {"dir": str(tmp_path)},
    })


def test_tiled_input_recovers_each_tile_and_re_tiles(zoo_dir, ray_local, tmp_path):
    from actors.dit import load_dit, recover_images
    from pipeline.diver.guidance import RecoverSettings
    from pipeline.diver.run import run_diver

    x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))  # two 2x2 mosaics of 32 px tiles
    torch.save({"data": [[x, torch.tensor([0, 1])]], "res": 64}, tmp_path / "ncfm.pt")
    cfg = _cfg(tmp_path / "tiled", tmp_path / "ncfm.pt", input_tiles=2)
    run_diver(cfg)
    out = tmp_path / "tiled" / "diver"
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["settings"]["input_tiles"] == 2 and len(manifest["images"]) == 2
    e = next(e for e in manifest["images"] if e["class_id"] == "1")
    got = np.asarray(Image.open(out / e["file"]))
    assert got.shape == (64, 64, 3) and e["tiles"] == 2
    # by hand: each tile recovered at the DiT resolution with its own seed, re-tiled, resized back
    transformer, vae, scheduler = load_dit("zoo:dit", device="cpu", dtype="float32")
    settings = RecoverSettings.from_mapping(cfg.diver.model_dump())
    tiles = split_tiles(x[1], 2)
    rec = recover_images(transformer, vae, scheduler, tiles, [5] * 4,
                         [tile_seed(e["seed"], j) for j in range(4)], settings, 32, output_size=32)
    u8 = (rec.permute(0, 2, 3, 1).numpy() * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    assert np.abs(got.astype(int) - join_tiles(u8, 2, (64, 64)).astype(int)).max() <= 1
    # the same file untiled is one 64 px image through the DiT: a different picture
    run_diver(_cfg(tmp_path / "whole", tmp_path / "ncfm.pt"))
    whole = np.asarray(Image.open(tmp_path / "whole" / "diver" / e["file"]))
    assert np.abs(whole.astype(int) - got.astype(int)).mean() > 2.0
    whole_manifest = json.loads((tmp_path / "whole" / "diver" / "manifest.json").read_text())
    assert "input_tiles" not in whole_manifest["settings"]


def test_tiles_must_divide_the_image(tmp_path):
    from pipeline.diver.tiles import check_tiles

    with pytest.raises(DataError, match=r"diver.input_tiles=2 but the images are 63x64 px"):
        check_tiles(torch.zeros(1, 3, 63, 64), 2, "set.pt")
    check_tiles(torch.zeros(1, 3, 63, 64), 1, "set.pt")
