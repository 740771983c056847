"""TensorBoard event files for a run (optional: `pip install 'lagvae[tensorboard]'`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lagvae.config import ConfigError

TENSORBOARD_DIR = "tensorboard"


class TensorBoardLog:
    """Per-epoch validation scalars and the training loss every few steps, under <run>/tensorboard."""

    def __init__(self, run_dir: Path, resume_step: int) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError(
                "log.tensorboard=true needs the tensorboard package: pip install 'lagvae[tensorboard]'"
            ) from None
        if (run_dir / TENSORBOARD_DIR).is_symlink():  # its event files would be written where the link points
            raise ConfigError(
                f"{run_dir / TENSORBOARD_DIR} is a symbolic link; lagvae does not write through links in a run "
                "folder: delete it"
            )
        # purge_step drops events a killed run logged after the checkpoint this run resumes from
        self.writer = SummaryWriter(str(run_dir / TENSORBOARD_DIR), purge_step=resume_step or None)

    def step_loss(self, step: int, loss: float) -> None:
        self.writer.add_scalar("train/loss", loss, step)

    def epoch(self, record: dict[str, Any]) -> None:
        """Every number of a metrics.jsonl record, under validation/ (train/ for the training side)."""
        for key, value in record.items():
            if key in ("step", "epoch") or isinstance(value, str) or value is None:
                continue
            group = "train" if key in ("train_loss", "train_seconds", "lr", "kl_weight", "inner_steps") else "val"
            self.writer.add_scalar(f"{group}/{key}", float(value), record["step"])
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
