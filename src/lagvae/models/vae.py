"""The VAE: an encoder q(z|x) and a decoder p(x|z) under a standard normal prior, kept as separate modules."""

from __future__ import annotations

from torch import Tensor, nn

from lagvae.objectives import gaussian_kl_per_dim, reparameterize


class VAE(nn.Module):
    """Pairs an encoder `x -> (mu, logvar)` with a decoder `(x, z[B,S,D]) -> log p(x|z) [B,S]`."""

    def __init__(self, encoder: nn.Module, decoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.encoder(x)

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        return self.decoder.log_prob(x, z)

    def loss_terms(self, x: Tensor, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """Reconstruction loss -E_q[log p(x|z)] (Monte Carlo) [B] and analytic KL per latent dimension [B, D]."""
        return self.terms_at(x, *self.encode(x), n_samples)

    def terms_at(self, x: Tensor, mu: Tensor, logvar: Tensor, n_samples: int = 1) -> tuple[Tensor, Tensor]:
        """`loss_terms` for a given q(z|x) = N(mu, diag(e^logvar))."""
        z = reparameterize(mu, logvar, n_samples)
        return -self.log_prob(x, z).mean(-1), gaussian_kl_per_dim(mu, logvar)

    def observe_kl_weight(self, weight: float) -> None:
        """Tell the parts that change with the KL schedule (DU-VAE's head) the current weight."""
        for module in self.modules():
            flag = getattr(module, "full_kl", None)
            if isinstance(flag, Tensor):
                flag.fill_(weight >= 1.0)

    def n_units(self, x: Tensor) -> Tensor:
        return self.decoder.n_units(x)
