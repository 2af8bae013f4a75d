"""DIVER's reverse process on the zoo DiT, checked against a hand-written DDIM loop."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from actors.dit import DiTRecoverActor
from pipeline.core.seeds import image_seed
from pipeline.diver.guidance import RecoverSettings, image_noise, inherit_noise, recover_latents

pytestmark = pytest.mark.usefixtures("one_thread")

STEPS = 10


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(3)
    z_d = torch.randn(4, 4, 16, 16, generator=g)  # an inherited latent (any tensor of the DiT's shape)
    labels = torch.tensor([3, 1, 4, 1])
    seeds = [image_seed(42, str(int(c)), i) for i, c in enumerate(labels)]
    return z_d, labels, image_noise(seeds, (4, 16, 16))


def hand_alpha_bar() -> np.ndarray:
    """The DiT's linear beta schedule (1e-4 .. 0.02 over 1000 steps), cumulative product, in float64."""
    betas = np.linspace(1e-4, 0.02, 1000, dtype=np.float64)
    return np.cumprod(1.0 - betas)


def reference_ddim(transformer, z: torch.Tensor, labels: torch.Tensor, first: int, steps: int, cfg: float,
                   null: int = 1000) -> torch.Tensor:
    """Textbook DDIM (eta 0) with DiT's CFG (channels 0..2), written without the diffusers scheduler."""
    ab = torch.tensor(hand_alpha_bar(), dtype=torch.float64)
    # DiT's respacing: 0, 111, ..., 999 for 10 steps
    ts = [round(i * 999 / (steps - 1)) for i in range(steps)]
    z = z.double()
    for i in range(first, -1, -1):
        t = ts[i]
        inp = torch.cat([z, z]).float()
        lab = torch.cat([labels, torch.full_like(labels, null)])
        out = transformer(inp, timestep=torch.full((len(inp),), t), class_labels=lab).sample[:, :4].double()
        cond, unc = out.chunk(2)
        eps = cond.clone()
        eps[:, :3] = unc[:, :3] + cfg * (cond[:, :3] - unc[:, :3])
        x0 = (z - (1 - ab[t]).sqrt() * eps) / ab[t].sqrt()
        ab_prev = ab[ts[i - 1]] if i > 0 else torch.tensor(1.0, dtype=torch.float64)
        z = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return z.float()


def settings(**kw) -> RecoverSettings:
    base = {"num_inference_steps": STEPS, "start_step": 5, "fusion_window": (5, 2), "gamma": 0.1,
            "cfg_scale": 4.0, "sigma": "posterior", "reverse_start": "start_step"}
    # posterior: the zoo DiT's variance channels are random; start_step: from t 999 the random zoo DiT's
    # x0 = (z - ...) / sqrt(ab) (1 / 0.006) blows float32 rounding up, which hides what these tests check
    return RecoverSettings.from_mapping({**base, **kw})


def test_inheritance_noise_level_matches_the_schedule(dit, inputs):
    _, _, scheduler = dit
    z_d, _, noise = inputs
    scheduler.set_timesteps(50)
    t = round(25 * 999 / 49)
    assert t == 510  # index 25 of DiT's 50-step respacing (index 49 = t 999)
    ab = hand_alpha_bar()[t]
    assert float(scheduler.alphas_cumprod[t]) == pytest.approx(ab, rel=1e-5)
    got = inherit_noise(scheduler, z_d, noise, 25)
    torch.testing.assert_close(got, (np.sqrt(ab) * z_d + np.sqrt(1 - ab) * noise).float(), rtol=1e-5,
                               atol=1e-5)
    # on a zero latent the inherited noise has std sqrt(1 - alpha_bar_t) (~0.96 at t = 510)
    zero = inherit_noise(scheduler, torch.zeros(64, 4, 16, 16),
                         torch.randn(64, 4, 16, 16, generator=torch.Generator().manual_seed(0)), 25)
    assert float(zero.std()) == pytest.approx(np.sqrt(1 - ab), rel=0.02)


def test_gamma_zero_is_plain_ddim_from_the_same_start(dit, inputs):
    transformer, _, scheduler = dit
    z_d, labels, noise = inputs
    s = settings(gamma=0.0)
    out = recover_latents(transformer, scheduler, z_d, labels, s, noise=noise)
    ab = hand_alpha_bar()[555]  # start step 5 of 10 -> t = 555 (timesteps 0, 111, ..., 999)
    z_start = (np.sqrt(ab) * z_d + np.sqrt(1 - ab) * noise).float()
    ref = reference_ddim(transformer, z_start, labels, first=5, steps=STEPS, cfg=4.0)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    guided = recover_latents(transformer, scheduler, z_d, labels, settings(gamma=0.1), noise=noise)
    assert (guided - ref).abs().max() > 1e-2  # the comparison can fail: guidance does change the output


def test_guidance_outside_the_fusion_window_is_a_noop(dit, inputs):
    transformer, _, scheduler = dit
    z_d, labels, noise = inputs
    plain = recover_latents(transformer, scheduler, z_d, labels, settings(gamma=0.0), noise=noise)
    with pytest.raises(ValueError, match="fusion_window"):  # a window the run never reaches is an error
        recover_latents(transformer, scheduler, z_d, labels, settings(gamma=0.5, fusion_window=(8, 6)),
                        noise=noise)
    only_last = recover_latents(transformer, scheduler, z_d, labels,
                                settings(gamma=0.5, fusion_window=(0, 0)), noise=noise)
    assert (only_last - plain).abs().max() > 1e-3


@pytest.mark.parametrize("target", ["x0", "zt"])
def test_output_moves_toward_z_d_monotonically_with_gamma(dit, inputs, target):
    transformer, _, scheduler = dit
    z_d, labels, noise = inputs
    gammas = [0.0, 0.05, 0.1, 0.2, 0.4]
    dists = []
    for g in gammas:
        out = recover_latents(transformer, scheduler, z_d, labels, settings(gamma=g, guidance_target=target),
                              noise=noise)
        dists.append((out - z_d).flatten(1).norm(dim=1))
    d = torch.stack(dists)  # [gamma, image]
    assert (d[1:] < d[:-1]).all(), d
    assert (d[-1] < 0.9 * d[0]).all()


def test_batch_of_four_equals_four_batches_of_one(dit, inputs):
    transformer, _, scheduler = dit
    z_d, labels, noise = inputs
    s = settings()
    whole = recover_latents(transformer, scheduler, z_d, labels, s, noise=noise)
    single = torch.cat([recover_latents(transformer, scheduler, z_d[i:i + 1], labels[i:i + 1], s,
                                        noise=noise[i:i + 1]) for i in range(4)])
    torch.testing.assert_close(whole, single, rtol=1e-5, atol=1e-5)


def test_actor_is_deterministic_and_batch_invariant(zoo_dir):
    actor = DiTRecoverActor("zoo:dit", settings(gamma=0.1).as_dict(), resolution=32, dtype="float32",
                            device="cpu", micro_batch=4)
    rng = np.random.default_rng(0)
    images = rng.random((4, 32, 32, 3), dtype=np.float32)
    classes = np.array([3, 1, 4, 1])
    seeds = np.array([image_seed(42, str(c), i) for i, c in enumerate(classes)], dtype=np.int64)
    batch = {"image": images, "dit_class": classes, "seed": seeds, "key": np.array(list("abcd"))}
    whole = actor(batch)
    assert whole["recovered"].shape == (4, 32, 32, 3) and whole["recovered"].dtype == np.uint8
    assert "image" not in whole and list(whole["key"]) == list("abcd")
    ones = [actor({k: v[i:i + 1] for k, v in batch.items()})["recovered"] for i in range(4)]
    assert np.array_equal(whole["recovered"], np.concatenate(ones))
    again = actor(batch)["recovered"]
    assert np.array_equal(whole["recovered"], again)
    other = actor({**batch, "seed": seeds + 1})["recovered"]
    assert not np.array_equal(whole["recovered"], other)
    with pytest.raises(ValueError, match="outside"):
        actor({**batch, "dit_class": np.array([3, 1, 4, 1001])})


def test_ddim_inversion_inheritance_is_deterministic(dit, inputs):
    transformer, _, scheduler = dit
    z_d, labels, _ = inputs
    s = settings(inheritance="ddim_inversion")
    a = recover_latents(transformer, scheduler, z_d, labels, s)
    b = recover_latents(transformer, scheduler, z_d, labels, s)
    assert torch.equal(a, b) and torch.isfinite(a).all()
    with pytest.raises(ValueError, match="needs the per-image noise"):
        recover_latents(transformer, scheduler, z_d, labels, settings())
