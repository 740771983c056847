"""What makes a run resumable: last.pt (all a resume needs), best.pt, and the data they were trained on."""

from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from lagvae.config import ConfigError, RunConfig
from lagvae.models import VAE
from lagvae.posterior import PosteriorTracker
from lagvae.training import checkpoint
from lagvae.training.lr_rule import PlateauHalving
from lagvae.training.provenance import check_same_data, run_provenance
from lagvae.training.run_folder import (
    BEST,
    LAST,
    METRICS,
    POSTERIOR_NPZ,
    PROVENANCE,
    RunFolder,
)
from lagvae.training.strategies import JointStrategy
from lagvae.training.world import World


@dataclass
class TrainState:
    """Counters that, with the model, optimisers, strategy, LR rule and RNGs, make a run resumable."""

    step: int = 0
    epoch: int = 0  # next epoch to run
    train_seconds: float = 0.0
    best_epoch: int = -1
    stopped: bool = False  # the LR rule ended training early
    cycle_epochs: int = 0  # train.epochs when the run started: fixes the cyclical schedule's period
    history: list[dict[str, Any]] = field(default_factory=list)


class Checkpoints:
    """The Trainer's checkpoint side: writing and restoring last.pt, reloading best.pt, checking the data."""

    config: RunConfig
    folder: RunFolder
    device: torch.device
    world: World
    main: bool
    model: VAE
    strategy: JointStrategy
    lr_rule: PlateauHalving
    state: TrainState
    generator: torch.Generator
    tracker: PosteriorTracker | None
    fingerprints: dict[str, str]
    _partial_epoch: dict[str, Any] | None

    def _save_last(self, partial_epoch: dict[str, Any] | None = None) -> None:
        """last.pt: everything a resume needs; `partial_epoch` (the epoch's batch order, position and running
        sums) when it is written inside an epoch. Rank 0 writes it: every rank's random streams equal rank 0's,
        because all of them make the same global draws (lagvae.draws)."""
        if not self.main:
            return
        s = self.strategy
        checkpoint.save_atomic(
            {
                "partial_epoch": partial_epoch,
                "model": self.model.state_dict(),
                "optimizers": [opt.state_dict() for opt in s.optimizers()],
                "strategy": s.state_dict(),
                "lr_rule": self.lr_rule.state_dict(),
                "state": vars(self.state),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "data_rng": self.generator.get_state(),
            },
            self.folder.file(LAST),
        )

    def resume(self) -> None:
        """Restore everything from last.pt, so the run continues where it stopped."""
        path = self.folder.file(LAST)
        if not path.exists():
            raise ConfigError(f"nothing to resume: {path} does not exist")
        self.check_data()
        ckpt = checkpoint.load(path, self.device)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise ConfigError(f"{path} does not fit this model; was the run trained with other sizes?") from None
        for opt, opt_state in zip(self.strategy.optimizers(), ckpt["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.strategy.load_state_dict(ckpt["strategy"])
        self.lr_rule.load_state_dict(ckpt["lr_rule"])
        self.state = TrainState(**ckpt["state"])
        torch.set_rng_state(ckpt["rng"].cpu())
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([state.cpu() for state in ckpt["cuda_rng"]])
        self.generator.set_state(ckpt["data_rng"].cpu())
        self._partial_epoch = ckpt.get("partial_epoch")
        if self.main:
            # A crash after an epoch's records but before last.pt would otherwise leave them twice.
            self.folder.file(METRICS).unlink(missing_ok=True)
            for record in self.state.history:
                self.folder.append_metrics(record)
        npz = self.folder.file(POSTERIOR_NPZ)
        if self.tracker is not None and npz.exists():
            try:
                saved = dict(np.load(npz))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise ConfigError(
                    f"cannot read {npz}: {err}; delete it to resume without the earlier snapshots"
                ) from None
            keep = saved["step"] <= self.state.step
            self.tracker.steps = saved["step"][keep].tolist()
            self.tracker.epochs = saved["epoch"][keep].tolist()
            self.tracker.true_means = list(saved["true_mean"][keep])
            self.tracker.encoder_means = list(saved["encoder_mean"][keep])

    def _provenance(self) -> dict[str, Any]:
        return run_provenance(self.device, self.fingerprints, self.world.size)

    def check_data(self) -> None:
        """Refuse data that differ from the run's."""
        check_same_data(self.folder.read_json(PROVENANCE), self.fingerprints, self.folder.path)

    def _load_best(self) -> None:
        self.world.barrier()  # rank 0 has written best.pt
        self.model.load_state_dict(checkpoint.load(self.folder.file(BEST), self.device)["model"])
