"""Per-example stochastic variational inference: refine q(z|x) by gradient steps on the ELBO (SA-VAE)."""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import Tensor

from lagvae import draws
from lagvae.models.linear_ce import twice_differentiable
from lagvae.models.vae import VAE
from lagvae.objectives import gaussian_kl


def svi_refine(
    model: VAE,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    steps: int = 10,
    lr: float = 1.0,
    momentum: float = 0.5,
    max_grad_norm: float = 5.0,
    create_graph: bool = False,
    noise: list[Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """lambda_{k+1} = lambda_k + v_{k+1}, v_{k+1} = m v_k + lr * clip(grad ELBO(x; lambda_k)), lambda = (mu, logvar).

    Kim et al. (2018): each example's variational parameters take `steps` SGD-with-momentum steps on its
    own one-sample ELBO, starting from the encoder's output. With `create_graph` the steps stay
    differentiable, so a loss on the refined lambda_K backpropagates through them into the encoder.
    `noise` fixes the reparameterisation draws (one [B, D] tensor per step), for gradient checks.
    With the per-example clip, no coordinate moves further than lr * max_grad_norm * steps / (1 - momentum).
    """
    # Differentiating through the steps needs a twice-differentiable decoder loss.
    with torch.enable_grad(), twice_differentiable() if create_graph else nullcontext():
        # Outside a differentiable refinement (or for a leaf with no history) start from fresh leaves.
        if not create_graph or not mu.requires_grad:
            mu = mu.detach().requires_grad_()
        if not create_graph or not logvar.requires_grad:
            logvar = logvar.detach().requires_grad_()
        v_mu, v_lv = torch.zeros_like(mu), torch.zeros_like(logvar)
        for k in range(steps):
            eps = noise[k] if noise is not None else draws.randn(tuple(mu.shape), mu)
            z = (mu + (0.5 * logvar).exp() * eps).unsqueeze(1)
            elbo = model.log_prob(x, z).squeeze(1) - gaussian_kl(mu, logvar)
            g_mu, g_lv = torch.autograd.grad(elbo.sum(), (mu, logvar), create_graph=create_graph)
            # Per-example clipping keeps one badly conditioned x from taking a huge step. The clip factor is
            # a safeguard, not part of the objective, so it is not differentiated: its reciprocal's
            # backward returned NaN on the synthetic preset (autograd anomaly mode, SA-VAE step 144).
            norm = torch.sqrt(g_mu.pow(2).sum(-1, keepdim=True) + g_lv.pow(2).sum(-1, keepdim=True))
            scale = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0).detach()
            v_mu = momentum * v_mu + lr * scale * g_mu
            v_lv = momentum * v_lv + lr * scale * g_lv
            mu, logvar = mu + v_mu, logvar + v_lv
    return (mu, logvar) if create_graph else (mu.detach(), logvar.detach())
