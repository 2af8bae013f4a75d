"""DIVER fidelity: index convention, reverse start, DiT's DDIM, learned sigma, CFG channels, zt.

Every check compares the loop against numbers written out here by hand (DiT's linear-beta
schedule in float64, DiT's respacing, DiT's ``p_mean_variance``), using a spy around the zoo
DiT that records what the model saw and said at each call.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.config import DiverConfig
from pipeline.diver.guidance import RecoverSettings, predict_eps, recover_latents

pytestmark = pytest.mark.usefixtures("one_thread")

B = 2


class Spy(torch.nn.Module):
    """Wraps a DiT; records (timestep, input, output) of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    @property
    def config(self):
        return self.inner.config

    def forward(self, x, timestep, class_labels):
        out = self.inner(x, timestep=timestep, class_labels=class_labels)
        self.calls.append((int(timestep[0]), x.detach().clone(), out.sample.detach().float().clone()))
        return out


@pytest.fixture(scope="module")
def inputs():
    g = torch.Generator().manual_seed(11)
    return torch.randn(B, 4, 16, 16, generator=g), torch.tensor([3,
                                                                 7]), torch.randn(B, 4, 16, 16, generator=g)


def ab_table() -> np.ndarray:
    return np.cumprod(1.0 - np.linspace(1e-4, 0.02, 1000, dtype=np.float64))


def hand_timesteps(n: int) -> list[int]:
    return [round(i * 999 / (n - 1)) for i in range(n)]  # DiT's respacing, index n-1 = t 999


def settings(**kw) -> RecoverSettings:
    # from_mapping drops unknown keys, so these tests run (and fail on numbers) against older code too
    return RecoverSettings.from_mapping({"cfg_scale": 4.0, "gamma": 0.1, **kw})


def run(dit, z_d, labels, noise, **kw):
    transformer, _, scheduler = dit
    spy = Spy(transformer)
    out = recover_latents(spy, scheduler, z_d, labels, settings(**kw), noise=noise)
    return out, spy.calls


def test_default_window_is_t_816_to_510_and_guidance_acts_there(dit, inputs):
    ts = hand_timesteps(50)
    cfg = DiverConfig()
    hi, lo = cfg.fusion_window
    window_t = [ts[i] for i in range(hi, lo - 1, -1)]
    print(f"\ndefault fusion window [40, 25] = t {window_t}")
    assert (hi, lo) == (40, 25) and window_t[0] == 816 and window_t[-1] == 510 and len(window_t) == 16
    z_d, labels, noise = inputs
    _, plain = run(dit, z_d, labels, noise, gamma=0.0)
    _, guided = run(dit, z_d, labels, noise, gamma=0.5)
    first_diff = next(t for (t, a, _), (_, b, _) in zip(plain, guided) if not torch.equal(a, b))
    # guidance acts after the update at t 816: the model sees a changed latent first at t_39 = 795
    assert first_diff == ts[39] == 795


def test_reverse_start_top_runs_all_50_steps_from_999_on_the_latent_noised_to_510(dit, inputs):
    z_d, labels, noise = inputs
    ab = ab_table()
    _, calls = run(dit, z_d, labels, noise, gamma=0.0)
    assert [c[0] for c in calls] == hand_timesteps(50)[::-1]  # 999, 979, ..., 20, 0
    z_start = (np.sqrt(ab[510]) * z_d.double() + np.sqrt(1 - ab[510]) * noise.double()).float()
    torch.testing.assert_close(calls[0][1][:B], z_start, rtol=1e-5, atol=1e-5)
    _, short = run(dit, z_d, labels, noise, gamma=0.0, reverse_start="start_step")
    assert [c[0] for c in short] == hand_timesteps(50)[25::-1]  # 510, 489, ..., 0
    torch.testing.assert_close(short[0][1][:B], z_start, rtol=1e-5, atol=1e-5)


def test_a_window_outside_the_steps_that_run_is_an_error():
    with pytest.raises(ValueError, match="fusion_window"):
        DiverConfig(reverse_start="start_step", start_step=25, fusion_window=(40, 25))
    with pytest.raises(ValueError, match="fusion_window"):
        DiverConfig(num_inference_steps=30, fusion_window=(40, 25))
    DiverConfig(reverse_start="start_step", start_step=25, fusion_window=(24, 9))  # inside 25 .. 0: fine
    DiverConfig(num_inference_steps=30, fusion_window=(40, 25), gamma=0.0)  # no guidance: no window needed
    with pytest.raises(ValueError, match="fusion_window"):
        RecoverSettings.of(num_inference_steps=10, reverse_start="start_step", start_step=3,
                           fusion_window=(8, 5))


def test_ddim_update_uses_the_actual_next_respaced_timestep_without_clipping(dit, inputs):
    z_d, labels, noise = inputs
    ab = ab_table()
    n = 10
    out, calls = run(dit, z_d, labels, noise, gamma=0.0, num_inference_steps=n, start_step=5)
    ts = hand_timesteps(n)  # 0, 111, ..., 999
    assert [c[0] for c in calls] == ts[::-1]
    for k, (t, x, o) in enumerate(calls):  # each step by hand: eta 0, next = the previous respaced t
        z = x[:B].double()
        cond, unc = o[:B, :4].double(), o[B:, :4].double()
        eps = cond.clone()
        eps[:, :3] = unc[:, :3] + 4.0 * (cond[:, :3] - unc[:, :3])
        x0 = (z - np.sqrt(1 - ab[t]) * eps) / np.sqrt(ab[t])
        ab_prev = ab[ts[n - 2 - k]] if k < n - 1 else 1.0
        z_next = np.sqrt(ab_prev) * x0 + np.sqrt(1 - ab_prev) * eps
        got = calls[k + 1][1][:B] if k < n - 1 else out
        torch.testing.assert_close(got, z_next.float(), rtol=1e-4, atol=1e-4)
    assert float(out.abs().max()) > 1.0  # x0 is not clipped to [-1, 1]
    _, _, scheduler = dit
    assert scheduler.config.clip_sample is False


def hand_learned_sigma(v: torch.Tensor, n: int, i: int) -> torch.Tensor:
    """DiT's p_mean_variance on the respaced schedule: exp(0.5 * (frac log beta + (1 - frac) log post))."""
    ab_all, ts = ab_table(), hand_timesteps(n)
    ab = ab_all[ts]
    prev = np.append(1.0, ab[:-1])
    beta = 1 - ab / prev
    post = beta * (1 - prev) / (1 - ab)
    post_clipped = np.append(post[1], post[1:])
    frac = (v.double() + 1) / 2
    return torch.exp(0.5 * (frac * np.log(beta[i]) + (1 - frac) * np.log(post_clipped[i])))


@pytest.mark.parametrize("target", ["x0", "zt"])
def test_learned_sigma_and_guidance_target_on_the_last_step(dit, inputs, target):
    """Window = index 0 only: out = x0 - gamma * sigma_0 * (ref - z_d), every term computed here."""
    z_d, labels, noise = inputs
    n, g = 10, 0.3
    plain, calls = run(dit, z_d, labels, noise, gamma=0.0, num_inference_steps=n, start_step=5)
    guided, gcalls = run(dit, z_d, labels, noise, gamma=g, num_inference_steps=n, start_step=5,
                         fusion_window=(0, 0), guidance_target=target)
    assert gcalls[-1][0] == 0
    torch.testing.assert_close(gcalls[-1][1], calls[-1][1], rtol=0, atol=0)  # same path up to the last step
    z_in, v = calls[-1][1][:B].double(), calls[-1][2][:B, 4:8]  # the conditional branch's variance channels
    sigma = hand_learned_sigma(v, n, 0)
    ref = plain.double() if target == "x0" else z_in  # zt: the latent *before* the DDIM update
    expect = plain.double() - g * sigma * (ref - z_d.double())
    torch.testing.assert_close(guided.double(), expect, rtol=1e-4, atol=1e-4)


def test_learned_sigma_in_the_default_window_and_the_old_pull(dit, inputs):
    """The posterior end of DiT's learned range in the window is 0.54 -> 0.43; sqrt(1 - ab) pulls ~2x
    harder."""
    ab_all, ts = ab_table(), hand_timesteps(50)
    lo = [float(hand_learned_sigma(torch.tensor(-1.0), 50, i)) for i in range(40, 24, -1)]
    hi = [float(hand_learned_sigma(torch.tensor(1.0), 50, i)) for i in range(40, 24, -1)]
    old = [float(np.sqrt(1 - ab_all[ts[i]])) for i in range(40, 24, -1)]
    print(f"\nsigma in the window, posterior end {lo[0]:.3f} -> {lo[-1]:.3f}, beta end {hi[0]:.3f} -> "
          f"{hi[-1]:.3f}; sum {sum(lo):.2f}..{sum(hi):.2f} vs sqrt(1 - ab) sum {sum(old):.2f} "
          f"({sum(old) / sum(hi):.2f}x)")
    assert lo[0] == pytest.approx(0.538, abs=2e-3) and lo[-1] == pytest.approx(0.433, abs=2e-3)
    assert sum(old) / sum(hi) > 1.9
    from pipeline.diver.guidance import guidance_sigma, respaced_schedule  # the code's sigma, same numbers

    sched = respaced_schedule(dit[2], 50)
    z = torch.zeros(1)
    for k, i in enumerate(range(40, 24, -1)):
        for v, want in ((-1.0, lo[k]), (1.0, hi[k])):
            got = guidance_sigma(settings(sigma="learned"), sched, i, torch.tensor(v), z)
            assert float(got) == pytest.approx(want, rel=1e-6)
        assert float(guidance_sigma(settings(sigma="one_minus_alpha_bar"), sched, i, None, z)) == (
            pytest.approx(old[k], rel=1e-6))


def test_sigma_posterior_and_one_minus_alpha_bar(dit, inputs):
    z_d, labels, noise = inputs
    n, g = 10, 0.3
    plain, calls = run(dit, z_d, labels, noise, gamma=0.0, num_inference_steps=n, start_step=5)
    z_in = calls[-1][1][:B].double()
    ab = ab_table()
    ts = hand_timesteps(n)
    for mode, sigma in (("posterior", float(hand_learned_sigma(torch.tensor(-1.0), n, 0))),
                        ("one_minus_alpha_bar", float(np.sqrt(1 - ab[ts[0]])))):
        guided, _ = run(dit, z_d, labels, noise, gamma=g, num_inference_steps=n, start_step=5,
                        fusion_window=(0, 0), sigma=mode)
        expect = plain.double() - g * sigma * (plain.double() - z_d.double())
        torch.testing.assert_close(guided.double(), expect, rtol=1e-4, atol=1e-4)
    assert z_in.shape == plain.shape


def test_sigma_learned_needs_variance_channels(inputs):
    from diffusers import DDIMScheduler, DiTTransformer2DModel

    torch.manual_seed(0)
    no_var = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4,
                                   num_layers=1, sample_size=16, patch_size=2, num_embeds_ada_norm=1000,
                                   norm_type="ada_norm_zero").eval()
    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="linear", clip_sample=False)
    z_d, labels, noise = inputs
    s = settings(num_inference_steps=4, start_step=2, fusion_window=(2, 1))
    with pytest.raises(ValueError, match="sigma=learned"):
        recover_latents(no_var, sched, z_d, labels, s, noise=noise)
    out = recover_latents(no_var, sched, z_d, labels, settings(num_inference_steps=4, start_step=2,
                                                                fusion_window=(2, 1), sigma="posterior"),
                                                                noise=noise)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("mode", ["3", "all"])
def test_cfg_channels(dit, inputs, mode):
    transformer, _, _ = dit
    z, labels, _ = inputs
    spy = Spy(transformer)
    args = (spy, z, 500, labels, 1000, 4.0)
    eps = predict_eps(*args) if mode == "3" else predict_eps(*args, cfg_channels="all")
    o = spy.calls[0][2]
    cond, unc = o[:B, :4], o[B:, :4]
    guided = unc + 4.0 * (cond - unc)
    k = 3 if mode == "3" else 4
    torch.testing.assert_close(eps[:, :k], guided[:, :k], rtol=1e-5, atol=1e-5)
    if mode == "3":  # DiT's forward_with_cfg: channel 3 is the conditional prediction
        torch.testing.assert_close(eps[:, 3], cond[:, 3], rtol=1e-5, atol=1e-5)
        assert (guided[:, 3] - cond[:, 3]).abs().max() > 1e-3  # the two readings differ on this model
    assert DiverConfig().cfg_channels == 3 and DiverConfig(cfg_channels="all").cfg_channels == "all"
