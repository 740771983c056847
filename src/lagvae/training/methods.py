"""Method names a user types, each a composition of a strategy and a KL schedule (fields of TrainConfig)."""

from __future__ import annotations

from typing import Any

from lagvae.config import ConfigError, TrainConfig

# The paper anneals the KL weight linearly from 0.1 to 1 over the first 10 epochs.
_ANNEAL = {"kl_start": 0.1, "warm_up": 10}

METHODS: dict[str, dict[str, Any]] = {
    "vae": {"strategy": "joint", "kl_start": 1.0},
    "vae-anneal": {"strategy": "joint", **_ANNEAL},
    "aggressive": {"strategy": "aggressive", "kl_start": 1.0},
    "aggressive-anneal": {"strategy": "aggressive", **_ANNEAL},
}


def apply_method(train: TrainConfig, method: str) -> None:
    """Set the strategy and schedule fields that define `method` (later overrides may still change them)."""
    if method not in METHODS:
        raise ConfigError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    train.method = method
    for key, value in METHODS[method].items():
        setattr(train, key, value)
