"""Checkpoints: written atomically (lagvae.atomic), read with weights_only and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from lagvae.atomic import atomic_write
from lagvae.config import ConfigError, LagvaeError


def save_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load(path: Path, device: str | torch.device = "cpu") -> Any:
    """Checkpoints hold only tensors, numbers and strings, so they load with weights_only (no code runs).

    A truncated, foreign or refused file is a one-line error naming it (the CLI exits with code 2).
    """
    try:
        return torch.load(path, map_location=device, weights_only=True)
    except FileNotFoundError:
        raise LagvaeError(f"{path} does not exist") from None
    except Exception as err:  # noqa: BLE001 - torch raises several types for a bad file
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise LagvaeError(f"cannot read checkpoint {path}: {reason[:200]}") from None


def entries(saved: Any, path: Path, keys: tuple[str, ...]) -> None:
    """Refuse a checkpoint that lacks one of `keys` (a foreign file, or one of an older format), naming them."""
    missing = [key for key in keys if not isinstance(saved, dict) or key not in saved]
    if missing:
        raise ConfigError(f"{path} lacks {', '.join(missing)}; is it a lagvae {path.name}?")


def load_weights(model: nn.Module, saved: Any, path: Path, vocab: tuple[Path, int] | None = None) -> None:
    """Put a checkpoint's `model` weights into `model`; weights of other names or shapes (another model size, or
    another vocabulary: `vocab` is the vocabulary file and its size) are one line naming the first difference,
    instead of torch's page-long report."""
    entries(saved, path, ("model",))
    weights, own = saved["model"], model.state_dict()
    if not isinstance(weights, dict):
        raise ConfigError(f"{path}: its model weights are not a state dict; is it a lagvae {path.name}?")
    missing, extra = [k for k in own if k not in weights], [k for k in weights if k not in own]
    shapes = [k for k in own if k in weights and tuple(getattr(weights[k], "shape", ())) != tuple(own[k].shape)]
    problem, hint = "", "; was the run trained with other sizes?"
    if shapes:
        k = shapes[0]
        problem = f"{k} is {list(weights[k].shape)} there but {list(own[k].shape)} here"
        if vocab is not None and own[k].shape[0] == vocab[1] != weights[k].shape[0]:  # one row per word
            hint = f"; {vocab[0]} has {vocab[1]:,} entries, the checkpoint {weights[k].shape[0]:,}: not this run's"
    elif missing or extra:
        problem = f"missing {missing[0]}" if missing else f"unexpected {extra[0]}"
    if problem:
        more = len(shapes) + len(missing) + len(extra) - 1
        problem += f" (and {more} more)" if more else ""
        raise ConfigError(f"{path} does not fit this model: {problem}{hint}")
    try:
        model.load_state_dict(weights)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ConfigError(f"{path} does not fit this model: {str(err).strip().splitlines()[0][:200]}{hint}") from None
