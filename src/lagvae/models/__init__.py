"""Networks and the VAE that pairs them; `build_model` makes one from a config and a vocabulary size."""

from __future__ import annotations

import warnings

from lagvae.config import ModelConfig
from lagvae.models.text import LSTMDecoder, LSTMEncoder
from lagvae.models.vae import VAE


def build_model(config: ModelConfig, vocab_size: int) -> VAE:
    """The paper's LSTM VAE; latent_dim 0 gives the latent-free language model (z-maps become empty)."""
    with warnings.catch_warnings():
        # latent_dim 0 makes zero-size Linear layers, whose initialisation torch reports as a no-op
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        encoder = LSTMEncoder(vocab_size, config.embed_dim, config.enc_hidden, config.latent_dim)
        decoder = LSTMDecoder(
            vocab_size,
            config.embed_dim,
            config.dec_hidden,
            config.latent_dim,
            config.dec_dropout_in,
            config.dec_dropout_out,
        )
    return VAE(encoder, decoder)


__all__ = ["VAE", "LSTMDecoder", "LSTMEncoder", "build_model"]
