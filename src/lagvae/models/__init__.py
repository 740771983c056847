"""Networks and the VAE that pairs them; `build_model` makes one from a config and a vocabulary size."""

from __future__ import annotations

import warnings

from lagvae.config import ConfigError, ModelConfig
from lagvae.models.image import PixelCNNDecoder, ResNetEncoder, parse_kernels
from lagvae.models.text import LSTMDecoder, LSTMEncoder
from lagvae.models.vae import VAE

KINDS = ("lstm", "image")


def build_model(config: ModelConfig, vocab_size: int) -> VAE:
    """The VAE of `config.kind`: the paper's LSTM VAE for text (vocab_size > 0), or the ResNet / gated PixelCNN
    VAE for binary images (vocab_size 0). latent_dim 0 gives the latent-free model (z-maps become empty)."""
    if config.kind not in KINDS:
        raise ConfigError(f"unknown model.kind {config.kind!r}; choose from {', '.join(KINDS)}")
    if config.kind == "lstm" and vocab_size <= 0:
        raise ConfigError("model.kind=lstm is a text model but the data are images; use model.kind=image")
    if config.kind == "image" and vocab_size > 0:
        raise ConfigError("model.kind=image is an image model but the data are text; use model.kind=lstm")
    with warnings.catch_warnings():
        # latent_dim 0 makes zero-size Linear layers, whose initialisation torch reports as a no-op
        warnings.filterwarnings("ignore", "Initializing zero-element tensors")
        if config.kind == "image":
            try:
                kernels = parse_kernels(config.kernels)
            except ValueError as err:
                raise ConfigError(str(err)) from None
            encoder = ResNetEncoder(config.latent_dim, config.channels, config.enc_features)
            decoder = PixelCNNDecoder(config.latent_dim, config.channels, kernels)
            return VAE(encoder, decoder)
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


__all__ = ["VAE", "LSTMDecoder", "LSTMEncoder", "PixelCNNDecoder", "ResNetEncoder", "build_model"]
