"""Posterior heads: what later fixes for collapse do to the encoder's (mu, logvar) before z is drawn.

Each head maps the encoder's raw (mu, logvar) [B, D] to the posterior's. The sources, equations and every
difference from the authors' code are in docs/DESIGN.md ("Later fixes").
"""

from __future__ import annotations

import math

import torch
import torch.distributed.nn.functional as dist_fn
from torch import Tensor, nn

from lagvae import draws

HEADS = ("gaussian", "bn", "delta", "du")


def _batch_moments(mu: Tensor) -> tuple[Tensor, Tensor, int]:
    """Per-dimension mean and biased variance of mu over the global batch, and its size.

    Under torchrun a rank holds rows lo:hi of the global batch (draws.current_rows): the sums are all-reduced
    with torch.distributed.nn's differentiable all_reduce, whose backward all-reduces the gradients, so every
    rank's rows get the one-process gradient through the shared statistics (SyncBatchNorm needs GPUs).
    """
    rows = draws.current_rows()
    if rows is None:
        n = mu.shape[0]
        mean = mu.mean(0)
        return mean, (mu - mean).pow(2).mean(0), n
    n = rows.total
    mean = dist_fn.all_reduce(mu.sum(0)) / n
    return mean, dist_fn.all_reduce((mu - mean).pow(2).sum(0)) / n, n


class MeanBatchNorm(nn.Module):
    """BatchNorm1d on the posterior means (eps 1e-5, momentum 0.1, as torch's and both authors'): batch
    statistics in training, running statistics in eval mode. `weight` and `bias` are the scale and shift."""

    def __init__(self, dim: int, gamma: float, learn_scale: bool) -> None:
        super().__init__()
        self.eps, self.momentum = 1e-5, 0.1
        scale = torch.full((dim,), gamma)
        if learn_scale:
            self.weight = nn.Parameter(scale)
        else:  # a buffer, not a frozen Parameter: no optimiser or gradient buffer ever holds it
            self.register_buffer("weight", scale)
        self.bias = nn.Parameter(torch.zeros(dim))
        self.register_buffer("running_mean", torch.zeros(dim))
        self.register_buffer("running_var", torch.ones(dim))

    def forward(self, mu: Tensor, weight: Tensor) -> Tensor:
        if self.training:
            mean, var, n = _batch_moments(mu)
            with torch.no_grad():  # torch's update: the running variance is the unbiased one
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * n / max(n - 1, 1), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        return (mu - mean) / torch.sqrt(var + self.eps) * weight + self.bias


class GaussianHead(nn.Module):
    """The paper's posterior: the encoder's (mu, logvar) as they are."""

    def forward(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        return mu, logvar


class BNHead(nn.Module):
    """BN-VAE (Zhu et al. 2020): mu' = gamma (mu - E_B mu) / sqrt(Var_B mu + eps) + beta, gamma fixed, beta
    learned; so with batch statistics E_B[mu'_d^2] = gamma^2 + beta_d^2 (up to eps) and E_B KL_d >= gamma^2 / 2."""

    def __init__(self, dim: int, gamma: float) -> None:
        super().__init__()
        self.bn = MeanBatchNorm(dim, gamma, learn_scale=False)

    def forward(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        return self.bn(mu, self.bn.weight), logvar


def delta_variance_bounds(delta: float) -> tuple[float, float]:
    """The two roots s_lo < 1 < s_hi of log s - s + 2 delta + 1 = 0: the variances at which a zero-mean
    Gaussian's KL to N(0, 1) equals delta (found by bisection; valdersoul/bn-vae solves it with sympy)."""

    def f(s: float) -> float:
        return math.log(s) - s + 2 * delta + 1

    def bisect(lo: float, hi: float) -> float:
        f_lo = f(lo)
        for _ in range(200):
            mid = 0.5 * (lo + hi)
            if (f(mid) > 0) == (f_lo > 0):
                lo, f_lo = mid, f(mid)
            else:
                hi = mid
        return 0.5 * (lo + hi)

    return bisect(1e-300, 1.0), bisect(1.0, 2 * delta + 10.0)


class DeltaHead(nn.Module):
    """delta-VAE's committed rate as valdersoul/bn-vae re-implements it for text: sigma in [sigma_lo, sigma_hi]
    (where a zero-mean KL_d is delta), mu_d = sqrt(2 delta + 1 + log s_d - s_d + relu(m_d)), s_d = sigma_d^2, so
    KL_d = delta + relu(m_d) / 2 for every dimension and every encoder output."""

    def __init__(self, delta: float) -> None:
        super().__init__()
        self.delta = delta
        lo, hi = delta_variance_bounds(delta)
        self.std_lo, self.std_hi = math.sqrt(lo), math.sqrt(hi)

    def forward(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        # the encoder's logvar output drives sigma, its mu output the rate above delta (their code's roles)
        std = self.std_lo + (self.std_hi - self.std_lo) * torch.sigmoid(logvar).clamp(min=0.02)
        var = std.pow(2)
        # the authors' 1e-6 keeps sqrt differentiable where the rate is exactly delta
        mean = torch.sqrt((2 * self.delta + 1 + torch.log(var) - var + torch.relu(mu)).clamp(min=0) + 1e-6)
        return mean, torch.log(var)


class DUHead(nn.Module):
    """DU-VAE (Shen et al. 2021): BatchNorm on mu whose learned scale is renormalised every forward to RMS gamma
    (gamma_d <- gamma g_d / sqrt(mean_d g_d^2)); once the KL weight reaches 1, the variance gets a floor
    sigma^2 = e^logvar + r / (2 pi e), and in training its part above the floor is dropped out at rate p."""

    def __init__(self, dim: int, gamma: float, rate: float, p: float) -> None:
        super().__init__()
        self.bn = MeanBatchNorm(dim, gamma, learn_scale=True)
        self.gamma, self.p = gamma, p
        self.floor = rate / (2 * math.pi * math.e)
        # the KL weight has reached 1: floor and dropout on. The trainer sets it every step (VAE.observe_kl_weight);
        # a buffer, so checkpoints (and a finished run's best.pt) keep it
        self.register_buffer("full_kl", torch.tensor(False))

    def forward(self, mu: Tensor, logvar: Tensor) -> tuple[Tensor, Tensor]:
        g = self.bn.weight
        mu = self.bn(mu, self.gamma * g / g.pow(2).mean().sqrt())
        if not self.full_kl:
            return mu, logvar
        var = logvar.exp()
        if self.training and self.p > 0:
            var = var * (draws.rand_like(var) >= self.p) / (1 - self.p)
        return mu, torch.log(var + self.floor)


class HeadedEncoder(nn.Module):
    """An encoder followed by a posterior head: x -> head(encoder(x))."""

    def __init__(self, encoder: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.base = encoder
        self.head = head

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.head(*self.base(x))
