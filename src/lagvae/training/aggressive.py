"""Aggressive inference-network training (He et al. 2019, Algorithm 1): encoder-only inner steps, then one
decoder step; switched off by validation I_q."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lagvae.config import TrainConfig
from lagvae.distributed import SINGLE, World
from lagvae.draws import Rows
from lagvae.models.vae import VAE
from lagvae.training.strategies import Batch, JointStrategy, KLTerm, StepStats, _stats, plain_kl, shard_mean


class InnerLoopStop:
    """When to end the encoder-only loop: every `window` steps compare the window's mean loss per unit
    (token or pixel) with the previous window's; stop when it rose, or after `max_steps` steps.

    Losses stay tensors until a window closes, so there is one host sync per window, not per step. Across
    processes, `world` sums each window's loss and units over the ranks, so every rank stops at the same step.
    """

    def __init__(self, window: int = 15, max_steps: int = 100, world: World = SINGLE) -> None:
        self.world = world
        self.window = window
        self.max_steps = max_steps
        self.steps = 0
        self.previous: float | None = None
        self._sum: Tensor | float = 0.0
        self._units: Tensor | float = 0.0

    def update(self, loss_sum: Tensor | float, units: Tensor | float) -> bool:
        """Record one step's summed loss and unit count; True means stop now."""
        self.steps += 1
        self._sum = self._sum + loss_sum
        self._units = self._units + units
        stop = False
        if self.steps % self.window == 0:
            if self.world.distributed:
                pair = torch.stack([torch.as_tensor(v, dtype=torch.float64) for v in (self._sum, self._units)])
                self.world.all_reduce_(pair)
                current = float(pair[0] / pair[1])
            else:
                current = float(self._sum / self._units)
            stop = self.previous is not None and current > self.previous
            self.previous = current
            self._sum, self._units = 0.0, 0.0
        return stop or self.steps >= self.max_steps


class AggressiveStrategy(JointStrategy):
    """He et al. (2019), Algorithm 1: while aggressive, optimise the encoder alone on fresh minibatches until
    its loss stops falling, then make one decoder step on the current batch. At each epoch end, switch to
    joint training for good once validation I_q falls below the previous epoch's (`mi_patience` 0, the
    text rule), or after `mi_patience` epochs below the best I_q (the paper's OMNIGLOT rule, 5): see
    `end_epoch`.
    """

    def __init__(
        self,
        model: VAE,
        enc_opt: torch.optim.Optimizer,
        dec_opt: torch.optim.Optimizer,
        clip_grad: float,
        sample_batch: Callable[[], Batch],
        window: int = 15,
        max_inner: int = 100,
        kl_term: KLTerm = plain_kl,
        mi_patience: int = 0,
        world: World = SINGLE,
        switch_on: str = "mi",
    ) -> None:
        super().__init__(model, enc_opt, dec_opt, clip_grad, kl_term, world)
        self.switch_on = switch_on  # the validation I_q estimate the switch-off reads: "mi" or "mi_full"
        self.sample_batch = sample_batch
        self.window = window
        self.max_inner = max_inner
        self.mi_patience = mi_patience
        self.aggressive = True
        self.previous_mi = 0.0  # the authors' pre_mi and best_mi both start at 0
        self.best_mi = 0.0
        self.mi_not_improved = 0

    @staticmethod
    def _options(t: TrainConfig, sample_batch: Callable[[], Batch]) -> dict[str, Any]:
        return {
            "sample_batch": sample_batch,
            "window": t.aggressive.window,
            "max_inner": t.aggressive.max_inner,
            "mi_patience": t.aggressive.mi_patience,
            "switch_on": t.aggressive.switch_on,
        }

    def step(self, x: Tensor, kl_weight: float, rows: Rows | None = None) -> StepStats:
        if not self.aggressive:
            return self._joint_step(x, kl_weight, rows)
        stopper = InnerLoopStop(self.window, self.max_inner, self.world)
        batch = (x, rows)  # the first inner batch is the current one, later ones are random
        while not stopper.update(self.encoder_step(batch[0], kl_weight, batch[1]), self.model.n_units(batch[0])):
            if self.on_inner_step is not None:
                self.on_inner_step(stopper.steps)
            batch = self.sample_batch()
        loss, rec, kl = self._loss(x, kl_weight, rows)
        self._update(shard_mean(loss, rows), (self.dec_opt,))
        return _stats(loss, rec, kl, rows, stopper.steps)

    def encoder_step(self, x: Tensor, kl_weight: float, rows: Rows | None = None) -> Tensor:
        """One inner-loop update of the encoder alone on `x`; returns the batch's summed loss (detached)."""
        loss, _, _ = self._loss(x, kl_weight, rows)
        self._update(shard_mean(loss, rows), (self.enc_opt,))
        return loss.detach().sum()

    def end_epoch(self, val: dict[str, float]) -> None:
        """The authors' switch-off rules, evaluated only while aggressive (text.py and image.py of their code).

        Text (`mi_patience` 0): off when I_q falls below the previous epoch's, the first comparison being
        against 0, so a negative I_q after epoch 0 already ends it. Images (`mi_patience` N): every epoch
        whose I_q is below the best so far (which starts at 0) counts; the Nth such epoch, consecutive or
        not, ends it.
        """
        if not self.aggressive:
            return
        mi = val[self.switch_on]
        if self.mi_patience > 0:
            if mi < self.best_mi:
                self.mi_not_improved += 1
                self.aggressive = self.mi_not_improved < self.mi_patience
            else:
                self.best_mi = mi
        elif mi < self.previous_mi:
            self.aggressive = False
        self.previous_mi = mi

    def state_dict(self) -> dict:
        return {
            "aggressive": self.aggressive,
            "previous_mi": self.previous_mi,
            "best_mi": self.best_mi,
            "mi_not_improved": self.mi_not_improved,
        }

    def load_state_dict(self, state: dict) -> None:
        self.aggressive = bool(state["aggressive"])
        # checkpoints written before the authors' rules held None before the first epoch, and lacked these
        self.previous_mi = state["previous_mi"] if state["previous_mi"] is not None else 0.0
        self.best_mi = state.get("best_mi") or 0.0
        self.mi_not_improved = int(state.get("mi_not_improved", state.get("epochs_since_best", 0)))
