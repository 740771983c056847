"""The posterior-mean space (the paper's Figures 1 and 3): true posterior means on a grid vs encoder means."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from lagvae.models.vae import VAE
from lagvae.objectives import log_normal

MAX_ROWS = 1024  # (x, grid point) pairs decoded at once; bounds the logits tensor


def latent_grid(latent_dim: int, step: float, extent: float) -> Tensor:
    """A regular grid over [-extent, extent]^D with spacing `step`, as [G, D]."""
    axis = torch.arange(-extent, extent + step / 2, step)
    return torch.cartesian_prod(*([axis] * latent_dim)).reshape(-1, latent_dim)


@torch.no_grad()
def true_posterior_mean(model: VAE, x: Tensor, grid: Tensor) -> Tensor:
    """E_p(z|x)[z] ~= sum_g z_g w_g, w_g = softmax_g(log p(z_g) + log p(x|z_g)), for x [B, ...] -> [B, D]."""
    grid = grid.to(x.device)
    chunk = max(1, MAX_ROWS // x.shape[0])
    log_joint = []
    for part in grid.split(chunk):
        z = part.unsqueeze(0).expand(x.shape[0], -1, -1)
        log_joint.append(model.log_prob(x, z) + log_normal(part))
    weights = torch.softmax(torch.cat(log_joint, dim=1), dim=1)
    return weights @ grid


@dataclass
class PosteriorTracker:
    """Records (true mean, encoder mean) for fixed held-out x at chosen training steps (1-d or 2-d latents)."""

    x: Tensor
    grid: Tensor
    steps: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    true_means: list[np.ndarray] = field(default_factory=list)
    encoder_means: list[np.ndarray] = field(default_factory=list)

    @torch.no_grad()
    def snapshot(self, model: VAE, step: int, epoch: int) -> None:
        was_training = model.training
        model.eval()
        self.true_means.append(true_posterior_mean(model, self.x, self.grid).cpu().numpy())
        self.encoder_means.append(model.encode(self.x)[0].cpu().numpy())
        model.train(was_training)
        self.steps.append(step)
        self.epochs.append(epoch)

    def arrays(self) -> dict[str, np.ndarray]:
        return {
            "step": np.array(self.steps),
            "epoch": np.array(self.epochs),
            "true_mean": np.stack(self.true_means),
            "encoder_mean": np.stack(self.encoder_means),
        }
