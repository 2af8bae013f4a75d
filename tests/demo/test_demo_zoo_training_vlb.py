"""L_vlb of the hybrid loss (pipeline.demo.zoo.training.vlb_bits_per_dim) against hand-computed values."""

import math

import torch

from pipeline.demo.zoo.training import discretized_gaussian_log_likelihood, normal_kl, vlb_bits_per_dim

AB = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64), 0)  # DiT's linear betas


def _posterior(t: int):
    ab, ab_prev = float(AB[t]), float(AB[t - 1]) if t > 0 else 1.0
    beta = 1 - ab / ab_prev
    return ab, ab_prev, beta, beta * (1 - ab_prev) / (1 - ab)


def _case(t: int, n: int = 3, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x0 = torch.rand(n, 2, 2, 2, generator=g, dtype=torch.float64) * 1.6 - 0.8
    noise = torch.randn(x0.shape, generator=g, dtype=torch.float64)
    ab = float(AB[t])
    return x0, noise, math.sqrt(ab) * x0 + math.sqrt(1 - ab) * noise, torch.full((n,), t)


def test_the_true_noise_and_the_posterior_variance_give_zero_kl():
    x0, noise, xt, t = _case(500)
    v = -torch.ones_like(x0)  # frac 0: log variance = log posterior variance
    assert torch.allclose(vlb_bits_per_dim(noise, v, x0, xt, t, AB), torch.zeros(3, dtype=torch.float64),
                          atol=1e-9)


def test_the_beta_end_of_the_range_costs_the_kl_of_two_variances():
    x0, noise, xt, t = _case(500)
    _, _, beta, post = _posterior(500)
    # means equal: variances only
    want = 0.5 * (math.log(beta) - math.log(post) - 1 + post / beta) / math.log(2)
    got = vlb_bits_per_dim(noise, torch.ones_like(x0), x0, xt, t, AB)
    assert torch.allclose(got, torch.full((3,), want, dtype=torch.float64), rtol=1e-9)
    assert want > 0


def test_a_wrong_mean_costs_its_squared_error_over_the_variance():
    t0 = 300
    x0, noise, xt, t = _case(t0)
    ab, ab_prev, beta, post = _posterior(t0)
    eps = noise + 0.1  # x0_hat shifts by -0.1 sqrt(1 - ab) / sqrt(ab); the mean by coef_x0 times that
    shift = beta * math.sqrt(ab_prev) / (1 - ab) * 0.1 * math.sqrt(1 - ab) / math.sqrt(ab)
    want = 0.5 * shift ** 2 / post / math.log(2)
    got = vlb_bits_per_dim(eps, -torch.ones_like(x0), x0, xt, t, AB)
    assert torch.allclose(got, torch.full((3,), want, dtype=torch.float64), rtol=1e-6)


def test_t0_is_the_discretised_decoder_nll():
    x0, noise, xt, t = _case(0)
    post1 = _posterior(1)[3]  # at t = 0 the posterior variance is clipped to t = 1's
    v = -torch.ones_like(x0)
    got = vlb_bits_per_dim(noise, v, x0, xt, t, AB)
    mean = x0  # the true noise: x0_hat = x0 and the t = 0 mean is x0 exactly
    want = -discretized_gaussian_log_likelihood(x0, mean, torch.full_like(x0, 0.5 * math.log(post1)))
    assert torch.allclose(got, want.mean(dim=(1, 2, 3)) / math.log(2), rtol=1e-9)
    # the bin of width 2/255 around the mean, std sqrt(post1): its mass by the normal CDF
    z = (1 / 255) / math.sqrt(post1)
    mass = math.erf(z / math.sqrt(2))
    assert (abs(float(got[0]) - (-math.log(mass) / math.log(2))) < 0.01 * abs(math.log(mass) / math.log(2))
            + 1e-3)


def test_the_gradient_reaches_only_the_variance_when_the_mean_is_detached():
    x0, noise, xt, t = _case(700)
    eps = (noise + 0.05).requires_grad_(True)
    v = torch.zeros_like(x0, requires_grad=True)
    vlb_bits_per_dim(eps.detach(), v, x0, xt, t, AB).mean().backward()
    assert eps.grad is None and v.grad is not None
    assert (v.grad > 0).all()  # the posterior end (v = -1) is nearer the truth: lowering v lowers the bound


def test_normal_kl_of_equal_gaussians_is_zero_and_matches_the_formula():
    m, lv = torch.tensor([0.3]), torch.tensor([-1.0])
    assert float(normal_kl(m, lv, m, lv)) == 0.0
    got = float(normal_kl(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([1.0]),
                          torch.tensor([math.log(4)])))
    assert abs(got - (math.log(2) + (1 + 1) / 8 - 0.5)) < 1e-7
