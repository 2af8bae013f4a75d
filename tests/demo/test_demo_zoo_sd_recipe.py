"""The demo SD recipe's pieces: its UNet (latent size, pooled text embedding, seeded) and the thread
setting."""

import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from pipeline.demo.zoo import models
from pipeline.demo.zoo.training import torch_threads


@pytest.fixture(scope="module")
def zoo_unet_config():
    from diffusers import UNet2DConditionModel

    with tempfile.TemporaryDirectory() as tmp:
        start = models.zoo_start("sd", Path(tmp))
        return dict(UNet2DConditionModel.load_config(start / "unet"))


def test_demo_sd_unet_adds_the_pooled_prompt_to_the_timestep_embedding(zoo_unet_config):
    recipe = models.DemoSDRecipe()
    unet = models.demo_sd_unet(zoo_unet_config, 8, recipe)
    assert unet.config.sample_size == 8 and unet.config.addition_embed_type == "text"
    # the zoo's layout
    assert list(unet.config.block_out_channels) == list(zoo_unet_config["block_out_channels"])
    z, t = torch.zeros(2, 4, 8, 8), torch.tensor([500, 500])
    ctx = torch.randn(2, 77, unet.config.cross_attention_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        temb = unet.time_embedding(unet.time_proj(t))
        aug = unet.add_embedding(ctx)
        out = unet(z, t, encoder_hidden_states=ctx).sample
    assert aug.shape == temb.shape and not torch.allclose(aug[0], aug[1])  # one vector per prompt
    assert out.shape == (2, 4, 8, 8)
    again = models.demo_sd_unet(zoo_unet_config, 8, recipe)  # seeded: the same init
    assert all(torch.equal(a, b) for a, b in zip(unet.state_dict().values(), again.state_dict().values()))


def test_demo_sd_unet_without_pooled_text_is_cross_attention_only(zoo_unet_config):
    unet = models.demo_sd_unet(zoo_unet_config, 16, replace(models.DemoSDRecipe(), pooled_text_heads=0))
    assert unet.config.addition_embed_type is None and getattr(unet, "add_embedding", None) is None
    assert unet.config.sample_size == 16


def test_demo_sd_vae_downsamples_by_four():
    from actors.zoo import tiny_vae

    vae = tiny_vae(channels=models.DemoSDRecipe().vae_channels, norm_groups=8)
    with torch.no_grad():
        assert vae.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mode().shape == (1, 4, 8, 8)


def test_torch_threads_sets_and_restores_the_count():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError), torch_threads(1):
        assert torch.get_num_threads() == 1
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
