"""Checkpoints: written atomically (lagvae.atomic), read with weights_only and one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from lagvae.atomic import atomic_write
from lagvae.config import LagvaeError


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
