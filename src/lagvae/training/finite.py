"""The finite checks of training: the running loss when it is shown, and everything before a checkpoint write."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from lagvae.errors import NonFiniteLossError


def check_loss(loss: float | None, step: int, folder: Path) -> None:
    """Raise NonFiniteLossError (one line) if the training loss (a running sum or mean; None: not known) is
    NaN or inf."""
    if loss is not None and not math.isfinite(loss):
        raise _non_finite("training loss", step, folder)


def ensure_finite(model: nn.Module, step: int, folder: Path, loss_sum: float | None = None) -> None:
    """Raise NonFiniteLossError (one line) if any parameter of `model`, or the epoch's running `loss_sum`, is
    NaN or inf.

    In one process the training loss is only looked at when the progress display refreshes, so a checkpoint
    can fall due between a NaN step and that look; checking here, just before the write, keeps the last good
    last.pt. A NaN loss reaches every weight through the clip (its scale is NaN), so the weights tell even
    when no loss is given (an end-of-epoch write). One host sync per checkpoint, not per step.
    """
    check_loss(loss_sum, step, folder)
    params = [p.detach() for p in model.parameters()]
    if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
        raise _non_finite("weights", step, folder)


def _non_finite(what: str, step: int, folder: Path) -> NonFiniteLossError:
    return NonFiniteLossError(
        f"non-finite {what} at step {step}; checkpoints already saved in {folder} are intact "
        "(try a lower train.lr or train.clip_grad)"
    )
