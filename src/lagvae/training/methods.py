"""Method names a user types, each a composition of config pieces: strategy, KL schedule, KL term, latent."""

from __future__ import annotations

import difflib
from typing import Any

from lagvae.config import ConfigError, RunConfig, apply_override

# The paper anneals the KL weight linearly from 0.1 to 1 over the first 10 epochs.
_ANNEAL = {"train.kl_start": 0.1, "train.warm_up": 10}
# BN-VAE's and DU-VAE's README commands anneal from 0 over 10 epochs
_FROM_ZERO = {"train.kl_start": 0.0, "train.warm_up": 10}
# What a method's authors set differently for images (DU-VAE's OMNIGLOT command; Skip-VAE's image script
# has no KL warm-up)
IMAGE_SETTINGS: dict[str, dict[str, Any]] = {
    "du-vae": {"model.du.dropout": 0.1},
    "skip-vae": {"train.kl_start": 1.0},
}

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
    # Later fixes (docs/DESIGN.md, "Later fixes"): each with its authors' settings for the closest setting.
    # Li et al. 2019: an autoencoder phase, a fresh decoder, then annealing from 0 and per-example free bits
    # (target_kl 8 over z = 32 in their Yahoo command: 0.25 nats per dimension)
    "pretrain-fb": {
        "train.strategy": "joint",
        "train.pretrain.enabled": True,
        "train.kl_term": "free-bits-example",
        "train.free_bits": 0.25,
        "train.kl_start": 0.0,
        "train.warm_up": 10,
    },
    "bn-vae": {"train.strategy": "joint", "model.posterior": "bn", "model.enc_init": "torch", **_FROM_ZERO},
    "delta-vae": {"train.strategy": "joint", "model.posterior": "delta"},
    "du-vae": {"train.strategy": "joint", "model.posterior": "du", "model.enc_init": "torch", **_FROM_ZERO},
    "skip-vae": {"train.strategy": "joint", "model.skip": True, **_ANNEAL},
    "mdr": {"train.strategy": "mdr"},
    # No latent: the decoder alone, whose "IW bound" is its exact likelihood (one sample suffices).
    "lm": {"train.strategy": "joint", "model.latent_dim": 0, "eval.iw_samples": 1},
    # The image analogue of `lm`: an unconditional gated PixelCNN, its NLL exact.
    "pixelcnn": {"train.strategy": "joint", "model.kind": "image", "model.latent_dim": 0, "eval.iw_samples": 1},
}


def check_method(name: str) -> None:
    """A one-line error for a method name lagvae does not know, with the closest one when a typo is likely."""
    if name in METHODS:
        return
    guess = difflib.get_close_matches(name, METHODS, n=1)
    hint = f"did you mean {guess[0]}? " if guess else ""
    raise ConfigError(f"unknown method {name!r}; {hint}choose from {', '.join(METHODS)}")


def apply_method(config: RunConfig, method: str) -> None:
    """Set the fields that define `method`; flags and key=value overrides applied afterwards still win."""
    check_method(method)
    config.train.method = method
    settings = METHODS[method] | (IMAGE_SETTINGS.get(method, {}) if config.model.kind == "image" else {})
    for key, value in settings.items():
        apply_override(config, f"{key}={value}")
