"""The paper's synthetic corpus: sentences sampled from a random LSTM language model driven by a 2-d latent."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lagvae.config import ConfigError

MIXTURE_MEANS = ((2.0, 2.0), (2.0, -2.0), (-2.0, 2.0), (-2.0, -2.0))


class _RandomLSTMGenerator(nn.Module):
    """input = [emb(x_t); z], c0 = A z, h0 = tanh(c0), logits = W1 h + W2 z (no biases anywhere)."""

    def __init__(self, vocab_size: int, latent_dim: int, embed_dim: int = 100, hidden: int = 100) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim)
        self.init_state = nn.Linear(latent_dim, hidden, bias=False)
        self.cell = nn.LSTMCell(embed_dim + latent_dim, hidden, bias=False)
        self.w1 = nn.Linear(hidden, vocab_size, bias=False)
        self.w2 = nn.Linear(latent_dim, vocab_size, bias=False)

    def reset(self, generator: torch.Generator) -> None:
        for p in self.parameters():
            p.data.uniform_(-1.0, 1.0, generator=generator)
        # A wide z -> logits map makes sentences strongly depend on z, so a latent is worth using.
        self.w2.weight.data.uniform_(-5.0, 5.0, generator=generator)


def sample_latents(n: int, generator: torch.Generator) -> Tensor:
    """z ~ equal mixture of 4 unit-scale Gaussians centred at (+-2, +-2)."""
    means = torch.tensor(MIXTURE_MEANS)
    comp = torch.randint(0, len(MIXTURE_MEANS), (n,), generator=generator)
    return means[comp] + torch.randn(n, 2, generator=generator)


@torch.no_grad()
def generate_synthetic(
    n: int, seq_len: int = 10, vocab_size: int = 1000, seed: int = 783435, latent_dim: int = 2
) -> tuple[Tensor, Tensor]:
    """Sample `n` sentences of `seq_len` token ids in [0, vocab_size) and their latents; deterministic in `seed`.

    x_1 is uniform over the vocabulary; x_{t+1} ~ softmax(W1 h_t + W2 z) where h_t is the LSTM state after
    reading [emb(x_t); z]. The generator's weights and the samples both come from `seed`.
    """
    if latent_dim != 2:
        raise ConfigError("data.latent_dim must be 2: the paper's generator draws z from 4 Gaussians in R^2")
    gen = torch.Generator().manual_seed(seed)
    model = _RandomLSTMGenerator(vocab_size, latent_dim)
    model.reset(gen)
    z = sample_latents(n, gen)
    tokens = torch.empty(n, seq_len, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, vocab_size, (n,), generator=gen)
    c = model.init_state(z)
    h = torch.tanh(c)
    z_logits = model.w2(z)
    for t in range(1, seq_len):
        h, c = model.cell(torch.cat([model.embed(tokens[:, t - 1]), z], dim=-1), (h, c))
        probs = torch.softmax(model.w1(h) + z_logits, dim=-1)
        tokens[:, t] = torch.multinomial(probs, 1, generator=gen).squeeze(-1)
    return tokens, z
