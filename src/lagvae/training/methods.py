"""Method names a user types, each a composition of config pieces: strategy, KL schedule, KL term, latent."""

from __future__ import annotations

from typing import Any

from lagvae.config import ConfigError, RunConfig, apply_override

# The paper anneals the KL weight linearly from 0.1 to 1 over the first 10 epochs.
_ANNEAL = {"train.kl_start": 0.1, "train.warm_up": 10}

METHODS: dict[str, dict[str, Any]] = {
    "vae": {"train.strategy": "joint"},
    "vae-anneal": {"train.strategy": "joint", **_ANNEAL},
    "aggressive": {"train.strategy": "aggressive"},
    "aggressive-anneal": {"train.strategy": "aggressive", **_ANNEAL},
    "beta": {"train.strategy": "joint", "train.schedule": "constant"},
    "cyclical": {"train.strategy": "joint", "train.schedule": "cyclical"},
    "free-bits": {"train.strategy": "joint", "train.kl_term": "free-bits"},
    "savae": {"train.strategy": "savae"},
    "savae-anneal": {"train.strategy": "savae", **_ANNEAL},
    # No latent: the decoder alone, whose "IW bound" is its exact likelihood (one sample suffices).
    "lm": {"train.strategy": "joint", "model.latent_dim": 0, "eval.iw_samples": 1},
    # The image analogue of `lm`: an unconditional gated PixelCNN, its NLL exact.
    "pixelcnn": {"train.strategy": "joint", "model.kind": "image", "model.latent_dim": 0, "eval.iw_samples": 1},
}


def apply_method(config: RunConfig, method: str) -> None:
    """Set the fields that define `method`; flags and key=value overrides applied afterwards still win."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    config.train.method = method
    for key, value in METHODS[method].items():
        apply_override(config, f"{key}={value}")
