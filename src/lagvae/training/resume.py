"""What makes a run resumable: TrainState, and Checkpoints, which writes and reads last.pt and best.pt."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lagvae.errors import ConfigError
from lagvae.models import VAE
from lagvae.posterior import PosteriorTracker
from lagvae.training import checkpoint
from lagvae.training.finite import ensure_finite
from lagvae.training.lr_rule import PlateauHalving
from lagvae.training.run_context import RunContext
from lagvae.training.run_folder import BEST, LAST
from lagvae.training.strategies import JointStrategy

AUTOENCODER = "autoencoder"  # TrainState.phase of train.pretrain's first phase


@dataclass
class TrainState:
    """Counters that, with the model, optimisers, strategy, LR rule and RNGs, make a run resumable."""

    step: int = 0
    epoch: int = 0  # next epoch to run
    train_seconds: float = 0.0
    best_epoch: int = -1
    stopped: bool = False  # the LR rule ended training early
    cycle_epochs: int = 0  # train.epochs when the run started: fixes the cyclical schedule's period
    # "autoencoder" in train.pretrain's first phase, else "train"; the step and epoch where the phase began
    phase: str = "train"
    phase_step: int = 0
    phase_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def training_over(self, epochs: int) -> bool:
        """Whether training has ended at `epochs` (train.epochs): what Trainer.fit's loop runs until."""
        return self.phase != AUTOENCODER and (self.stopped or self.epoch - self.phase_epoch >= epochs)


# What last.pt holds (save_last); a file without one of them cannot resume the run.
LAST_KEYS = ("model", "optimizers", "strategy", "lr_rule", "state", "rng", "cuda_rng", "data_rng")


class Checkpoints:
    """last.pt and best.pt of one run: what they hold of its training objects, written by rank 0 (atomically)
    and read by every rank. The Trainer builds it once over its model, strategy (with its optimisers), LR rule
    and data generator; the counters (TrainState) and a mid-epoch position are passed in and handed back."""

    def __init__(
        self,
        run: RunContext,
        device: torch.device,
        model: VAE,
        strategy: JointStrategy,
        lr_rule: PlateauHalving,
        generator: torch.Generator,
    ) -> None:
        self.run = run
        self.device = device
        self.model = model
        self.strategy = strategy
        self.lr_rule = lr_rule
        self.generator = generator

    @property
    def last(self) -> Path:
        return self.run.folder.file(LAST)

    def save_last(self, state: TrainState, partial_epoch: dict[str, Any] | None = None) -> None:
        """last.pt: everything a resume needs; `partial_epoch` (the epoch's batch order, position and running
        sums) when it is written inside an epoch. Rank 0 writes it: every rank's random streams equal rank 0's,
        because all of them make the same global draws (lagvae.draws)."""
        ensure_finite(self.model, state.step, self.run.folder.path, (partial_epoch or {}).get("loss_sum"))
        if not self.run.world.is_main:
            return
        s = self.strategy
        checkpoint.save_atomic(
            {
                "partial_epoch": partial_epoch,
                "model": self.model.state_dict(),
                "optimizers": [opt.state_dict() for opt in s.optimizers()],
                "strategy": s.state_dict(),
                "lr_rule": self.lr_rule.state_dict(),
                "state": vars(state),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "data_rng": self.generator.get_state(),
            },
            self.last,
        )

    def resume(self) -> tuple[TrainState, dict[str, Any] | None]:
        """Restore the model, optimisers, strategy, LR rule and RNGs from last.pt, after checking that the data
        are the run's; returns the run's counters and, when last.pt was written inside an epoch, its position."""
        if not self.last.exists():
            raise ConfigError(f"nothing to resume: {self.last} does not exist")
        self.run.check_data()
        ckpt = checkpoint.load(self.last, self.device)
        checkpoint.entries(ckpt, self.last, LAST_KEYS)
        checkpoint.load_weights(self.model, ckpt, self.last)
        try:  # a last.pt of another method or an edited one: one line naming the part that does not fit
            part = "optimiser state"
            optimizers = self.strategy.optimizers()
            if len(ckpt["optimizers"]) != len(optimizers):
                raise ValueError(f"{len(ckpt['optimizers'])} optimisers saved, this run has {len(optimizers)}")
            for opt, opt_state in zip(optimizers, ckpt["optimizers"], strict=True):
                opt.load_state_dict(opt_state)
            part = "strategy state"
            self.strategy.load_state_dict(ckpt["strategy"])
            part = "learning-rate rule"
            self.lr_rule.load_state_dict(ckpt["lr_rule"])
            part = "counters"
            state = TrainState(**ckpt["state"])
            part = "random states"
            torch.set_rng_state(ckpt["rng"].cpu())
            if ckpt["cuda_rng"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all([s.cpu() for s in ckpt["cuda_rng"]])
            self.generator.set_state(ckpt["data_rng"].cpu())
        except (KeyError, ValueError, TypeError, RuntimeError, AttributeError) as err:
            reason = str(err).strip().splitlines()[0][:160] if str(err).strip() else type(err).__name__
            raise ConfigError(f"{self.last}: its {part} does not fit this run ({reason})") from None
        return state, ckpt.get("partial_epoch")

    def save_best(self, epoch: int) -> None:
        """best.pt: the model's weights after `epoch`, its best validation so far (rank 0 writes it)."""
        if self.run.world.is_main:
            checkpoint.save_atomic({"model": self.model.state_dict(), "epoch": epoch}, self.run.folder.file(BEST))

    def load_best(self) -> None:
        """Put best.pt's weights into the model, on every rank."""
        self.run.world.barrier()  # rank 0 has written best.pt
        best = self.run.folder.file(BEST)
        checkpoint.load_weights(self.model, checkpoint.load(best, self.device), best)


def restore_snapshots(tracker: PosteriorTracker, npz: Path, step: int) -> None:
    """Put back the posterior-mean snapshots a resumed run took up to `step` (the figure's earlier panels)."""
    if not npz.exists():
        return
    try:
        saved = dict(np.load(npz))
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
        raise ConfigError(f"cannot read {npz}: {err}; delete it to resume without the earlier snapshots") from None
    keep = saved["step"] <= step
    tracker.steps = saved["step"][keep].tolist()
    tracker.epochs = saved["epoch"][keep].tolist()
    tracker.true_means = list(saved["true_mean"][keep])
    tracker.encoder_means = list(saved["encoder_mean"][keep])
