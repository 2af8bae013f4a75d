"""The shared VAE training step (tuning.vae_loss) and the one tiny-VAE builder (actors.zoo.tiny_vae)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from actors.zoo import tiny_vae
from tuning.vae_loss import AutoencodeLoss, latent_noise, vae_step


def test_tiny_vae_defaults_are_the_zoo_layout_and_the_demo_variant():
    zoo = tiny_vae()
    assert zoo.config.block_out_channels == (32, 64) and zoo.config.norm_num_groups == 16
    demo = tiny_vae(channels=(16, 32), norm_groups=8)
    assert demo.config.block_out_channels == (16, 32) and demo.config.norm_num_groups == 8
    assert demo.config.down_block_types == ("DownEncoderBlock2D",) * 2 and demo.config.latent_channels == 4
    with torch.no_grad():
        assert demo.encode(torch.zeros(1, 3, 32, 32)).latent_dist.mean.shape == (1, 4, 16, 16)  # factor 2


def test_loss_is_mse_plus_weighted_gaussian_kl_by_hand():
    torch.manual_seed(0)
    vae = tiny_vae(channels=(8, 8), norm_groups=4)
    x = torch.rand(2, 3, 8, 8) * 2 - 1
    eps = latent_noise(vae, x, torch.Generator().manual_seed(1))
    assert eps.shape == (2, 4, 4, 4)
    assert torch.equal(eps, torch.randn((2, 4, 4, 4), generator=torch.Generator().manual_seed(1)))
    loss, mse = AutoencodeLoss(vae, kl_weight=0.5)(x, eps)
    with torch.no_grad():
        moments = vae.quant_conv(vae.encoder(x))
        mean, logvar = moments.chunk(2, dim=1)
        logvar = logvar.clamp(-30.0, 20.0)
        rec = vae.decode(mean + torch.exp(0.5 * logvar) * eps).sample
        kl = 0.5 * (mean ** 2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3)).mean()
        want_mse = ((rec - x) ** 2).mean()
    assert torch.allclose(mse, want_mse, atol=1e-6) and torch.allclose(mse, F.mse_loss(rec, x))
    assert torch.allclose(loss, want_mse + 0.5 * kl, rtol=1e-5)


def test_vae_step_updates_the_weights_and_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    vae = tiny_vae(channels=(8, 8), norm_groups=4)
    model = AutoencodeLoss(vae, 1e-6)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    x = torch.rand(4, 3, 8, 8) * 2 - 1
    eps = torch.zeros(4, 4, 4, 4)  # the posterior mean: a deterministic objective
    before = [p.detach().clone() for p in vae.parameters()]
    first = vae_step(model, opt, x, eps)
    assert not first.requires_grad
    assert any(not torch.equal(a, b) for a, b in zip(before, vae.parameters()))
    for _ in range(15):
        last = vae_step(model, opt, x, eps)
    assert float(last) < 0.5 * float(first)
