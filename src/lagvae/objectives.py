"""The VAE objectives as pure tensor functions: Gaussian KL, the (KL-weighted) ELBO and the IW bound."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from lagvae import draws

LOG_2PI = math.log(2 * math.pi)


def gaussian_kl_per_dim(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL_d = 1/2 (mu_d^2 + e^logvar_d - logvar_d - 1): KL(q(z|x) || N(0, I)) of each latent dimension."""
    # expm1 keeps e^v - 1 - v >= 0 in floating point for tiny v (exp(v) - v - 1 can round below zero).
    return 0.5 * (mu.pow(2) + torch.expm1(logvar) - logvar)


def gaussian_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, diag(e^logvar)) || N(0, I)) = sum_d KL_d, per example."""
    return gaussian_kl_per_dim(mu, logvar).sum(-1)


def free_bits_kl(kl_per_dim: Tensor, target: float) -> Tensor:
    """sum_d max(lambda, (1/B) sum_b KL_bd): free bits per dimension over the batch (Kingma et al. 2016).

    Returned per example (the same value for each), so it slots in where a per-example KL goes; below
    lambda a dimension's term is constant and passes no gradient.
    """
    per_dim = kl_per_dim.mean(0).clamp(min=target).sum()
    return per_dim.expand(kl_per_dim.shape[0])


def free_bits_example_kl(kl_per_dim: Tensor, target: float) -> Tensor:
    """sum_d 1[KL_bd > lambda] KL_bd: Li et al.'s (2019) free bits per example and dimension (their fb mode 2);
    a dimension at or below lambda adds nothing to the loss and passes no gradient."""
    return (kl_per_dim * (kl_per_dim > target)).sum(-1)


def log_normal(z: Tensor, mu: Tensor | None = None, logvar: Tensor | None = None) -> Tensor:
    """log N(z; mu, diag(e^logvar)) summed over the last dimension; standard normal when mu/logvar are None."""
    if mu is None or logvar is None:
        return -0.5 * (z.pow(2) + LOG_2PI).sum(-1)
    return -0.5 * ((z - mu).pow(2) / logvar.exp() + logvar + LOG_2PI).sum(-1)


def reparameterize(mu: Tensor, logvar: Tensor, n_samples: int, generator: torch.Generator | None = None) -> Tensor:
    """z_s = mu + e^(logvar/2) * eps_s, eps_s ~ N(0, I); returns [B, S, D]."""
    eps = draws.randn((mu.shape[0], n_samples, mu.shape[-1]), mu, generator)
    return mu.unsqueeze(1) + (0.5 * logvar).exp().unsqueeze(1) * eps


def elbo(log_px_z: Tensor, kl: Tensor, kl_weight: float = 1.0) -> Tensor:
    """ELBO_beta(x) = E_q[log p(x|z)] - beta * KL(q(z|x) || p(z)), per example ([B] or [B, S] averaged over S)."""
    return (log_px_z.mean(-1) if log_px_z.dim() > kl.dim() else log_px_z) - kl_weight * kl


def log_importance_weights(log_px_z: Tensor, z: Tensor, mu: Tensor, logvar: Tensor) -> Tensor:
    """log w_k = log p(x|z_k) + log p(z_k) - log q(z_k|x), for z [B, K, D] -> [B, K]."""
    return log_px_z + log_normal(z) - log_normal(z, mu.unsqueeze(1), logvar.unsqueeze(1))


def iw_bound(log_w: Tensor) -> Tensor:
    """L_K(x) = log (1/K) sum_k w_k, from log weights [B, K]; L_1 is the single-sample ELBO."""
    return torch.logsumexp(log_w, dim=-1) - math.log(log_w.shape[-1])
