"""The VAE: an encoder q(z|x) and a decoder p(x|z) under a standard normal prior, kept as separate modules."""

from __future__ import annotations

from typing import Protocol

from torch import Tensor, nn

from lagvae.objectives import gaussian_kl, reparameterize


class Decoder(Protocol):
    def log_prob(self, x: Tensor, z: Tensor) -> Tensor: ...
    def n_units(self, x: Tensor) -> Tensor: ...


class VAE(nn.Module):
    """Pairs an encoder `x -> (mu, logvar)` with a decoder `(x, z[B,S,D]) -> log p(x|z) [B,S]`."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module, latent_dim: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.latent_dim = latent_dim

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        return self.decoder.log_prob(x, z)

    def loss_terms(self, x: Tensor, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Per-example reconstruction loss -E_q[log p(x|z)] (Monte Carlo) and analytic KL(q(z|x) || p(z))."""
        mu, logvar = self.encode(x)
        z = reparameterize(mu, logvar, n_samples)
        return -self.log_prob(x, z).mean(-1), gaussian_kl(mu, logvar)

    def n_units(self, x: Tensor) -> Tensor:
        return self.decoder.n_units(x)
