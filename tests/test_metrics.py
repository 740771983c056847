"""Diagnostics on cases with known answers: MI, active units, perplexity and the posterior-mean grid."""

from __future__ import annotations

import math

import torch

from lagvae.metrics import active_units, evaluate, mutual_information, perplexity
from lagvae.posterior import latent_grid, true_posterior_mean
from tests.conftest import linear_gaussian_vae


def test_mi_is_zero_when_q_ignores_x():
    torch.manual_seed(0)
    n = 4000
    mu = torch.full((n, 2), 0.3)
    logvar = torch.full((n, 2), -0.5)
    assert abs(float(mutual_information(mu, logvar))) < 0.01


def test_mi_reaches_log_n_for_separated_posteriors():
    torch.manual_seed(0)
    n = 2048  # the estimate's Monte Carlo sd is about sqrt(D / 2n) = 0.016
    mu = torch.arange(n, dtype=torch.float32).unsqueeze(1) * 10.0
    logvar = torch.full((n, 1), -4.0)
    assert abs(float(mutual_information(mu, logvar)) - math.log(n)) < 0.05


def test_mi_matches_the_closed_form_of_a_gaussian_channel():
    # x ~ N(0, a^2), q(z|x) = N(x, s^2): I(x; z) = 1/2 log(1 + a^2 / s^2).
    torch.manual_seed(1)
    a, s, n = 1.0, 0.5, 3000
    mu = torch.randn(n, 1) * a
    logvar = torch.full((n, 1), 2 * math.log(s))
    expected = 0.5 * math.log(1 + a**2 / s**2)
    assert abs(float(mutual_information(mu, logvar)) - expected) < 0.05


def test_active_units_count_dimensions_above_threshold():
    torch.manual_seed(0)
    scales = torch.tensor([1.0, 0.2, 0.05, 0.0])  # variances 1, 0.04, 0.0025, 0
    mu = torch.randn(5000, 4) * scales
    assert int(active_units(mu)) == 2
    assert int(active_units(mu, threshold=0.001)) == 3


def test_perplexity_is_exp_of_nll_per_token():
    assert abs(perplexity(20.0, 10) - math.exp(2.0)) < 1e-9
    assert perplexity(1e9, 10) == math.inf  # a diverged model reports inf instead of crashing


def test_evaluate_reports_consistent_terms(lg_vae):
    vae, dec = lg_vae
    torch.manual_seed(3)
    x = torch.randn(64, 3)
    out = evaluate(vae, x.split(16), iw_samples=200)
    assert abs(out["elbo"] + out["rec"] + out["kl"]) < 1e-4
    exact = -float(dec.log_marginal(x).mean().detach())
    assert exact - 0.05 <= out["nll"] <= -out["elbo"] + 0.5
    assert out["n"] == 64


def test_true_posterior_mean_on_a_grid_matches_closed_form():
    vae, dec = linear_gaussian_vae(x_dim=3, z_dim=2, seed=4)
    x = torch.randn(10, 3)
    exact, _ = dec.posterior(x)
    with torch.no_grad():
        grid_mean = true_posterior_mean(vae, x, latent_grid(2, 0.05, 5.0))
    torch.testing.assert_close(grid_mean, exact, atol=2e-3, rtol=0)
