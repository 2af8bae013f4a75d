"""diver.timestep_embedding: DiT's own sinusoidal timestep embedding (10000^(-k/128), [cos, sin]) restored on
a
diffusers DiT, whose port uses 10000^(-k/127)."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from actors.dit import load_dit, set_timestep_embedding
from pipeline.config import config_from_dict, load_config
from pipeline.diver.recovery import resolve_timestep_embedding

REPO = Path(__file__).resolve().parents[2]


def _by_hand(t: torch.Tensor, divisor: int, dim: int = 256) -> torch.Tensor:
    """[cos(t f_k), sin(t f_k)] with f_k = 10000^(-k / divisor), k = 0 .. dim/2 - 1 (float64)."""
    k = torch.arange(dim // 2, dtype=torch.float64)
    args = t.double()[:, None] * torch.tensor(10000.0, dtype=torch.float64).pow(-k / divisor)[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def test_the_patched_embedding_is_dits_formula_in_every_block(zoo_dir):
    transformer, _, _ = load_dit("zoo:dit", device="cpu", dtype="float32")
    t = torch.tensor([0, 20, 510, 816, 999])
    projs = [b.norm1.emb.time_proj for b in transformer.transformer_blocks]
    assert all((p(t).double() - _by_hand(t, 127)).abs().max() < 1e-3 for p in projs)  # as loaded: diffusers'
    assert set_timestep_embedding(transformer, "dit") == len(projs) == 4
    for p in projs:
        assert (p(t).double() - _by_hand(t, 128)).abs().max() < 1e-3  # float32 args up to 999: ~1e-4
    # the two formulas differ where it matters: mid frequencies at large t (phase off by whole radians)
    assert (_by_hand(t, 127) - _by_hand(t, 128)).abs().max() > 1.0
    assert math.isclose(float(_by_hand(torch.tensor([1]), 128)[0, 1]), math.cos(10000 ** (-1 / 128)))
    # the model's prediction follows the embedding; "diffusers" restores what was loaded
    z = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    args = {"timestep": torch.tensor([816, 816]), "class_labels": torch.tensor([1, 2])}
    with torch.no_grad():
        dit = transformer(z, **args).sample
        set_timestep_embedding(transformer, "diffusers")
        diffusers = transformer(z, **args).sample
    fresh, _, _ = load_dit("zoo:dit", device="cpu", dtype="float32", timestep_embedding="dit")
    with torch.no_grad():
        assert torch.allclose(fresh(z, **args).sample, dit)
    assert not torch.allclose(dit, diffusers)
    with pytest.raises(ValueError, match="unknown timestep_embedding"):
        set_timestep_embedding(transformer, "auto")


def test_defaults_dit_for_real_dits_and_diffusers_for_the_zoo():
    base = {"method": "diver", "diver": {"input": "x"}}
    assert resolve_timestep_embedding(config_from_dict({**base,
                                                        "models": {"dit": "facebook/DiT-XL-2-256"}})) == "dit"
    assert resolve_timestep_embedding(config_from_dict({**base,
                                                        "models": {"dit": "zoo:demo_dit"}})) == "diffusers"
    for name in ("diver_imagenet1k.yaml", "diver_imagefruit.yaml"):
        assert load_config(REPO / "configs" / name).diver.timestep_embedding == "dit"
    assert load_config(REPO / "configs" / "demo_diver.yaml").diver.timestep_embedding == "diffusers"


def test_print_config_shows_the_new_defaults(capsys):
    from pipeline.cli import main

    assert main(["run", str(REPO / "configs" / "diver_imagenet1k.yaml"), "--print-config"]) == 0
    out = capsys.readouterr().out
    assert "  timestep_embedding: dit\n" in out and "  class_map: null\n" in out
