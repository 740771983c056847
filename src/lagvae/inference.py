"""The posterior q(z|x) that metrics and generation use: the encoder's (amortised), or that refined per example
by stochastic variational inference (SA-VAE)."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from lagvae import draws
from lagvae.models.linear_ce import twice_differentiable
from lagvae.models.vae import VAE
from lagvae.objectives import gaussian_kl


class Posterior(Protocol):
    """Maps a batch x to the parameters (mu, logvar) of a diagonal-Gaussian q(z|x)."""

    def __call__(self, model: VAE, x: Tensor) -> tuple[Tensor, Tensor]: ...


def amortized(model: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
    """q(z|x) = N(mu_phi(x), diag(exp logvar_phi(x))): the encoder's output."""
    return model.encode(x)


@dataclass(frozen=True)
class Refined:
    """q(z|x) = N(lambda_K): the encoder's lambda_0 after `svi_refine`'s K steps on the ELBO at KL weight 1
    (SA-VAE's evaluation posterior); `svi` holds svi_refine's keyword options, all of them from the run's
    config (`training.savae.svi_options`): there are no defaults to fall back on."""

    svi: dict[str, Any]

    def __call__(self, model: VAE, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = model.encode(x)
        return svi_refine(model, x, mu, logvar, **self.svi)


def svi_refine(
    model: VAE,
    x: Tensor,
    mu: Tensor,
    logvar: Tensor,
    *,
    steps: int,
    lr: float,
    momentum: float,
    max_grad_norm: float,
    clip: str,
    create_graph: bool = False,
    noise: list[Tensor] | None = None,
    kl_weight: float = 1.0,
    reduce: Callable[[Tensor], Tensor] | None = None,
) -> tuple[Tensor, Tensor]:
    """lambda_{k+1} = lambda_k + v_{k+1}, v_{k+1} = m v_k + (lr / B) clip(grad ELBO_beta(x; lambda_k)).

    Kim et al. (2018): each example's variational parameters lambda = (mu, logvar) take `steps`
    SGD-with-momentum steps on its own one-sample ELBO (KL weighted by `kl_weight`), starting from the
    encoder's output. `lr` is Kim's, on the batch-MEAN ELBO, so one example steps lr / B on its own, B the
    global size of the batch being refined (`draws.current_rows().total` under several processes, else x's
    rows), which for the last batch of an epoch can be less than train.batch_size. The numbers come from the
    config (train.savae.*, through `training.savae.svi_options`) and have no defaults here, so nothing can
    differ from it. With `create_graph` the steps stay differentiable, so a loss on the refined lambda_K
    backpropagates through them into the encoder and the decoder. `noise` fixes the reparameterisation
    draws (one [B, D] tensor per step), for gradient checks.
    `clip`: "batch" (Kim's) scales mu's and logvar's gradients, each as a whole, so that the batch-mean
    gradient's norm is at most `max_grad_norm`; the batch is the global one (sharded rows summed by
    `reduce`), so neither tensor moves further than lr * max_grad_norm * steps / (1 - momentum). "example"
    clips each example's joint (mu, logvar) gradient, so no coordinate moves further than
    (lr / B) * max_grad_norm * steps / (1 - momentum).
    """
    rows = draws.current_rows()
    batch = rows.total if rows is not None else x.shape[0]
    step = lr / batch  # Kim's gradient is of the batch mean: each example's own is 1/B of it
    # cuDNN's LSTM has no double backward and no backward in eval mode: the native kernels serve this region
    no_cudnn = torch.backends.cudnn.flags(enabled=False) if x.is_cuda else nullcontext()
    # Differentiating through the steps needs a twice-differentiable decoder loss.
    with torch.enable_grad(), no_cudnn, twice_differentiable() if create_graph else nullcontext():
        # Outside a differentiable refinement (or for a leaf with no history) start from fresh leaves.
        if not create_graph or not mu.requires_grad:
            mu = mu.detach().requires_grad_()
        if not create_graph or not logvar.requires_grad:
            logvar = logvar.detach().requires_grad_()
        v_mu, v_lv = torch.zeros_like(mu), torch.zeros_like(logvar)
        for k in range(steps):
            eps = noise[k] if noise is not None else draws.randn(tuple(mu.shape), mu)
            z = (mu + (0.5 * logvar).exp() * eps).unsqueeze(1)
            elbo = model.log_prob(x, z).squeeze(1) - kl_weight * gaussian_kl(mu, logvar)
            g_mu, g_lv = torch.autograd.grad(elbo.sum(), (mu, logvar), create_graph=create_graph)
            # The clip factor is a safeguard, not part of the objective, so it is not differentiated: its
            # reciprocal's backward returned NaN on the synthetic preset (autograd anomaly mode, step 144).
            if clip == "batch":
                squares = torch.stack([g_mu.detach().pow(2).sum(), g_lv.detach().pow(2).sum()])
                norms = (reduce(squares) if reduce is not None else squares).sqrt() / batch
                s_mu, s_lv = (max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
            else:
                norm = torch.sqrt(g_mu.pow(2).sum(-1, keepdim=True) + g_lv.pow(2).sum(-1, keepdim=True))
                s_mu = s_lv = (max_grad_norm / (norm + 1e-6)).clamp(max=1.0).detach()
            v_mu = momentum * v_mu + step * s_mu * g_mu
            v_lv = momentum * v_lv + step * s_lv * g_lv
            mu, logvar = mu + v_mu, logvar + v_lv
    return (mu, logvar) if create_graph else (mu.detach(), logvar.detach())
