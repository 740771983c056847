"""The guard every checkpoint write passes: nothing non-finite reaches last.pt."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from lagvae.errors import NonFiniteLossError


def ensure_finite(model: nn.Module, step: int, folder: Path, loss_sum: float | None = None) -> None:
    """Raise NonFiniteLossError (one line) if any parameter of `model`, or the epoch's running `loss_sum`, is
    NaN or inf.

    In one process the training loss is only looked at when the progress display refreshes, so a checkpoint
    can fall due between a NaN step and that look; checking here, just before the write, keeps the last good
    last.pt. A NaN loss reaches every weight through the clip (its scale is NaN), so the weights tell even
    when no loss is given (an end-of-epoch write). One host sync per checkpoint, not per step.
    """
    params = [p.detach() for p in model.parameters()]
    weights_ok = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
    loss_ok = loss_sum is None or math.isfinite(loss_sum)
    if not (weights_ok and loss_ok):
        what = "training loss" if not loss_ok else "weights"
        raise NonFiniteLossError(
            f"non-finite {what} at step {step}; not checkpointing it: checkpoints already saved in {folder} are "
            "intact (try a lower train.lr or train.clip_grad)"
        )
