"""Networks and the VAE that pairs them; `build_model` makes one from a config and a vocabulary size."""

from __future__ import annotations

import warnings

from torch import nn

from lagvae.config import ConfigError, ModelConfig
from lagvae.models.heads import HEADS, BNHead, DeltaHead, DUHead, GaussianHead, HeadedEncoder
from lagvae.models.image import PixelCNNDecoder, ResNetEncoder, parse_kernels
from lagvae.models.text import LSTMDecoder, LSTMEncoder
from lagvae.models.vae import VAE

KINDS = ("lstm", "image")
ENC_INITS = ("uniform", "torch")


def check_choices(config: ModelConfig) -> None:
    """Refuse a model.kind, model.posterior or model.enc_init that no model has, in one line each (the config
    validation calls this too, so a grid refuses it before any cell runs)."""
    for key, value, allowed in (
        ("model.kind", config.kind, KINDS),
        ("model.posterior", config.posterior, HEADS),
        ("model.enc_init", config.enc_init, ENC_INITS),
    ):
        if value not in allowed:
            raise ConfigError(f"unknown {key} {value!r}; choose from {', '.join(allowed)}")


def build_head(config: ModelConfig) -> nn.Module:
    """The posterior head `config.posterior` names, with its section's settings."""
    if config.posterior == "bn":
        return BNHead(config.latent_dim, config.bn.gamma)
    if config.posterior == "delta":
        return DeltaHead(config.delta.rate)
    if config.posterior == "du":
        return DUHead(config.latent_dim, config.du.gamma, config.du.rate, config.du.dropout)
    return GaussianHead()


def build_model(config: ModelConfig, vocab_size: int) -> VAE:
    """The VAE of `config.kind`: the paper's LSTM VAE for text (vocab_size > 0), or the ResNet / gated PixelCNN
    VAE for binary images (vocab_size 0). latent_dim 0 gives the latent-free model (z-maps become empty)."""
    check_choices(config)
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
            encoder: nn.Module = ResNetEncoder(config.latent_dim, config.channels, config.enc_features)
            decoder: nn.Module = PixelCNNDecoder(config.latent_dim, config.channels, kernels, skip=config.skip)
        else:
            encoder = LSTMEncoder(vocab_size, config.embed_dim, config.enc_hidden, config.latent_dim, config.enc_init)
            decoder = LSTMDecoder(
                vocab_size,
                config.embed_dim,
                config.dec_hidden,
                config.latent_dim,
                config.dec_dropout_in,
                config.dec_dropout_out,
                skip=config.skip,
            )
        head = build_head(config)
        if config.latent_dim > 0 and not isinstance(head, GaussianHead):
            encoder = HeadedEncoder(encoder, head)  # the paper's posterior keeps its checkpoint keys
    return VAE(encoder, decoder)


__all__ = ["VAE", "LSTMDecoder", "LSTMEncoder", "PixelCNNDecoder", "ResNetEncoder", "build_model"]
