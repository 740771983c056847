"""The paper's text networks: an LSTM encoder to (mu, logvar) and an LSTM decoder conditioned on z."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lagvae.data.text import PAD_ID
from lagvae.models.linear_ce import dropout, linear_cross_entropy


def _init_uniform(module: nn.Module, embed: nn.Embedding) -> None:
    """Weights U(-0.01, 0.01), embeddings U(-0.1, 0.1), as in the paper's code."""
    for p in module.parameters():
        nn.init.uniform_(p, -0.01, 0.01)
    nn.init.uniform_(embed.weight, -0.1, 0.1)


class LSTMEncoder(nn.Module):
    """q(z|x): embedding -> 1-layer LSTM -> last real hidden state -> Linear to (mu, logvar)."""

    def __init__(self, vocab_size: int, embed_dim: int, hidden: int, latent_dim: int, init: str = "uniform") -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.lstm = nn.LSTM(embed_dim, hidden, batch_first=True)
        self.linear = nn.Linear(hidden, 2 * latent_dim, bias=False)
        if init == "uniform":
            _init_uniform(self, self.embed)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out, _ = self.lstm(self.embed(x))
        last = (x != PAD_ID).sum(1) - 1
        h = out[torch.arange(x.shape[0], device=x.device), last]
        mu, logvar = self.linear(h).chunk(2, dim=-1)
        return mu, logvar


class LSTMDecoder(nn.Module):
    """p(x|z): input [dropout(emb(x_t)); z], c0 = Linear(z), h0 = tanh(c0), dropout on outputs, Linear to vocab
    (of [h_t; z] when `skip`)."""

    def __init__(
        self,
        vocab_size: int,
        embed_dim: int,
        hidden: int,
        latent_dim: int,
        dropout_in: float = 0.5,
        dropout_out: float = 0.5,
        skip: bool = False,
    ) -> None:
        super().__init__()
        self.skip = skip
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=PAD_ID)
        self.dropout_in = dropout_in
        self.dropout_out = dropout_out
        self.init_state = nn.Linear(latent_dim, hidden, bias=False)
        self.lstm = nn.LSTM(embed_dim + latent_dim, hidden, batch_first=True)
        # Skip-VAE: the output layer reads [h_t; z] (yoonkim/skip-vae concatenates; dropout never touches z)
        self.output = nn.Linear(hidden + (latent_dim if skip else 0), vocab_size, bias=False)
        _init_uniform(self, self.embed)

    def _hidden(self, inputs: Tensor, z: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple]:
        """The output layer's input for `inputs` [N, T] given z [N, D] (the LSTM outputs after output dropout,
        with z beside them under Skip-VAE), and the new LSTM state."""
        if state is None:
            c0 = self.init_state(z).unsqueeze(0)
            state = (torch.tanh(c0), c0)
        emb = dropout(self.embed(inputs), self.dropout_in, self.training)
        emb = torch.cat([emb, z.unsqueeze(1).expand(-1, inputs.shape[1], -1)], dim=-1)
        out, state = self.lstm(emb, state)
        out = dropout(out, self.dropout_out, self.training)
        if self.skip:
            out = torch.cat([out, z.unsqueeze(1).expand(-1, out.shape[1], -1)], dim=-1)
        return out, state

    def step_logits(self, inputs: Tensor, z: Tensor, state: tuple[Tensor, Tensor] | None) -> tuple[Tensor, tuple]:
        """Logits for the token after each of `inputs` [N, T] given z [N, D]; returns the new LSTM state."""
        out, state = self._hidden(inputs, z, state)
        return self.output(out), state

    def log_prob(self, x: Tensor, z: Tensor) -> Tensor:
        """log p(x|z) = sum_t log p(x_{t+1} | x_<=t, z) over real (non-pad) targets; x [B, T], z [B, S, D] -> [B, S]."""
        b, s = z.shape[:2]
        src = x[:, :-1].repeat_interleave(s, dim=0) if s > 1 else x[:, :-1]
        tgt = x[:, 1:].repeat_interleave(s, dim=0) if s > 1 else x[:, 1:]
        out, _ = self._hidden(src, z.reshape(b * s, -1), None)
        nll = linear_cross_entropy(out.reshape(-1, out.shape[-1]), self.output.weight, tgt.reshape(-1), PAD_ID)
        return -nll.view(b * s, -1).sum(-1).view(b, s)

    def sample_bytes(self, x: Tensor) -> int:
        """Working memory of decoding one latent sample for every sentence of x without gradients (an upper
        estimate: token ids, embeddings and LSTM input, gates, cell and output per step, fp32). The output
        layer adds one fixed chunk of logits (linear_ce.CHUNK_LOGITS), whatever the number of samples."""
        e, d = self.embed.embedding_dim, self.init_state.in_features
        per_token = 16 + 4 * (3 * (e + d) + 8 * self.lstm.hidden_size + (d if self.skip else 0))
        return x.shape[0] * (x.shape[1] - 1) * per_token

    @staticmethod
    def n_units(x: Tensor) -> Tensor:
        """Predicted tokens in a batch (</s> counted, <s> and padding not): the per-token loss denominator."""
        return (x[:, 1:] != PAD_ID).sum()
