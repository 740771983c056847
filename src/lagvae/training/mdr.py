"""The minimum desired rate (Pelsmaeker and Aziz 2020): a Lagrange multiplier holds the KL at or above r."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lagvae.config import TrainConfig
from lagvae.distributed import SINGLE, World
from lagvae.draws import Rows
from lagvae.models.vae import VAE
from lagvae.objectives import elbo
from lagvae.training.strategies import Batch, JointStrategy, KLTerm, StepStats, plain_kl


class MDRStrategy(JointStrategy):
    """Joint steps on -ELBO_beta + |lambda| (r - KL), KL the batch-mean KL; after each, one RMSprop step of
    gradient ascent on lambda, whose gradient sign(lambda) (r - KL) raises |lambda| while the rate is below r
    and lowers it above (|lambda|, the multiplier, is never negative). As their code: no hinge, lambda
    outside the gradient clip, the KL weight 1 unless a schedule is asked for."""

    def __init__(
        self,
        model: VAE,
        enc_opt: torch.optim.Optimizer,
        dec_opt: torch.optim.Optimizer,
        clip_grad: float,
        rate: float,
        init: float,
        lr: float,
        kl_term: KLTerm = plain_kl,
        world: World = SINGLE,
    ) -> None:
        super().__init__(model, enc_opt, dec_opt, clip_grad, kl_term, world)
        self.rate = rate
        self.lam = torch.tensor(float(init), dtype=torch.float64)
        self.lam_opt = torch.optim.RMSprop([self.lam], lr=lr)

    @staticmethod
    def _options(t: TrainConfig, sample_batch: Callable[[], Batch]) -> dict[str, Any]:
        return {"rate": t.mdr.rate, "init": t.mdr.init, "lr": t.mdr.lr}

    @property
    def multiplier(self) -> float:
        return abs(float(self.lam))

    def _combine(self, rec: Tensor, kl_per_dim: Tensor, kl_weight: float) -> tuple[Tensor, Tensor, Tensor]:
        kl = kl_per_dim.sum(-1)
        loss = -elbo(-rec, self.kl_term(kl_per_dim), kl_weight) + self.multiplier * (self.rate - kl)
        return loss, rec, kl

    def step(self, x: Tensor, kl_weight: float, rows: Rows | None = None) -> StepStats:
        stats = self._joint_step(x, kl_weight, rows)
        kl = stats.kl.detach().double().clone()
        if self.world.distributed:
            self.world.all_reduce_(kl)  # the ranks' shares of the global batch mean
        # descent on -(Lagrangian) is ascent on it: d/d lambda of |lambda| (r - KL) is sign(lambda) (r - KL)
        self.lam.grad = -torch.sign(self.lam) * (self.rate - kl)
        self.lam_opt.step()
        return stats

    def epoch_record(self) -> dict[str, float]:
        return {"mdr_multiplier": self.multiplier}

    def state_dict(self) -> dict:
        return {"lam": float(self.lam), "lam_opt": self.lam_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        with torch.no_grad():
            self.lam.fill_(state["lam"])
        self.lam_opt.load_state_dict(state["lam_opt"])
