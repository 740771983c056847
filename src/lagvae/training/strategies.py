"""How one outer step updates encoder and decoder: the joint (plain VAE) step and what every strategy shares."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from lagvae import draws
from lagvae.config import TrainConfig
from lagvae.distributed import SINGLE, World
from lagvae.draws import Rows
from lagvae.inference import Posterior, amortized
from lagvae.models.vae import VAE
from lagvae.objectives import elbo, free_bits_kl
from lagvae.training.flat_grads import FlatGrads

KLTerm = Callable[[Tensor], Tensor]  # KL per dimension [B, D] -> the per-example KL term in the loss [B]


Batch = tuple[Tensor, Rows | None]  # this process's rows of a global minibatch (None: the whole, one process)


def on_device(device: torch.device, batch: Batch) -> Batch:
    return batch[0].to(device, non_blocking=True), batch[1]


def plain_kl(kl_per_dim: Tensor) -> Tensor:
    return kl_per_dim.sum(-1)


def sharded_free_bits(world: World, target: float) -> KLTerm:
    """Free bits whose per-dimension batch mean spans the global batch, so a sharded step equals one process's.

    A rank's loss is the sum over its rows divided by the global count, so the constant term is weighted by
    total/count to give this rank the whole gradient through its own rows' KL; the ranks' summed gradients
    then equal the one-process gradient, and the summed values its value.
    """

    def term(kl_per_dim: Tensor) -> Tensor:
        rows = draws.current_rows()
        if rows is None:
            return free_bits_kl(kl_per_dim, target)
        local = kl_per_dim.sum(0)
        summed = local + (world.all_reduce_(local.detach().clone()) - local.detach())
        per_dim = (summed / rows.total).clamp(min=target).sum()
        value = per_dim.detach()
        return (value + (per_dim - value) * (rows.total / rows.count)).expand(rows.count)

    return term


def shard_mean(loss: Tensor, rows: Rows | None) -> Tensor:
    """The global batch mean's share from this process's rows: sum / global count (summed over ranks: the mean)."""
    return loss.mean() if rows is None else loss.sum() / rows.total


@dataclass
class StepStats:
    """Detached per-example means of one outer step (this rank's shares of them when sharded), and how many
    encoder-only steps preceded it."""

    loss: Tensor
    rec: Tensor
    kl: Tensor
    inner_steps: int = 0


class JointStrategy:
    """A plain VAE step: one gradient step on encoder and decoder together."""

    aggressive = False

    def __init__(
        self,
        model: VAE,
        enc_opt: torch.optim.Optimizer,
        dec_opt: torch.optim.Optimizer,
        clip_grad: float,
        kl_term: KLTerm = plain_kl,
        world: World = SINGLE,
    ) -> None:
        self.model = model
        self.world = world
        self.enc_opt = enc_opt
        self.dec_opt = dec_opt
        self.clip_grad = clip_grad
        self.kl_term = kl_term
        self.grads = FlatGrads(model.encoder, model.decoder)
        # called with the running count after every encoder-only step (the trainer's progress display)
        self.on_inner_step: Callable[[int], None] | None = None

    @classmethod
    def from_config(
        cls,
        t: TrainConfig,
        model: VAE,
        enc_opt: torch.optim.Optimizer,
        dec_opt: torch.optim.Optimizer,
        kl_term: KLTerm,
        sample_batch: Callable[[], Batch],
        world: World = SINGLE,
    ) -> JointStrategy:
        """The strategy `t` describes; subclasses add their own fields through `_options`."""
        options = cls._options(t, sample_batch)
        return cls(model, enc_opt, dec_opt, t.clip_grad, kl_term=kl_term, world=world, **options)

    @staticmethod
    def _options(t: TrainConfig, sample_batch: Callable[[], Batch]) -> dict[str, Any]:
        return {}

    def _combine(self, rec: Tensor, kl_per_dim: Tensor, kl_weight: float) -> tuple[Tensor, Tensor, Tensor]:
        """(per-example loss -ELBO_beta with the strategy's KL term, rec, the plain KL that is reported)."""
        return -elbo(-rec, self.kl_term(kl_per_dim), kl_weight), rec, kl_per_dim.sum(-1)

    def _loss(self, x: Tensor, kl_weight: float, rows: Rows | None) -> tuple[Tensor, Tensor, Tensor]:
        with draws.sharded(rows):
            return self._combine(*self.model.loss_terms(x), kl_weight)

    def _update(self, loss: Tensor, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        """Backpropagate into every parameter, clip the norm over all of them, then step only `optimizers`.

        The clip norm deliberately includes the network that is not stepped (as in the paper's code): in an
        encoder-only step the decoder's large gradients shrink the encoder's step. Clipping only the stepped
        network left I_q near 0 over the first 400 aggressive steps on the synthetic data, against 1.0-1.4
        this way (docs/DESIGN.md, "Gradient clipping").
        """
        self.grads.zero_()
        loss.backward()
        self._clip_and_step(optimizers)

    def _clip_and_step(self, optimizers: Sequence[torch.optim.Optimizer]) -> None:
        # Each rank's gradient is of its rows' share of the global mean, so their sum is the one-process
        # gradient; one all-reduce of the flat buffer covers every path, SA-VAE's unrolled backward included.
        self.world.all_reduce_(self.grads.buffer)
        if self.clip_grad > 0:
            self.grads.clip_(self.clip_grad)
        for optimizer in optimizers:
            optimizer.step()

    def _joint_step(self, x: Tensor, kl_weight: float, rows: Rows | None) -> StepStats:
        loss, rec, kl = self._loss(x, kl_weight, rows)
        self._update(shard_mean(loss, rows), (self.enc_opt, self.dec_opt))
        return _stats(loss, rec, kl, rows)

    def step(self, x: Tensor, kl_weight: float, rows: Rows | None = None) -> StepStats:
        """One outer step on x: the whole minibatch, or this process's `rows` of it."""
        return self._joint_step(x, kl_weight, rows)

    def end_epoch(self, val: dict[str, float]) -> None:
        """Joint training has no epoch-level decision."""

    def epoch_record(self) -> dict[str, float]:
        """The strategy's own numbers for the epoch's metrics record (MDR's multiplier)."""
        return {}

    @property
    def posterior(self) -> Posterior:
        """The q(z|x) this method's metrics evaluate."""
        return amortized

    def optimizers(self) -> Iterable[torch.optim.Optimizer]:
        return (self.enc_opt, self.dec_opt)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _stats(loss: Tensor, rec: Tensor, kl: Tensor, rows: Rows | None, inner_steps: int = 0) -> StepStats:
    parts = (shard_mean(t.detach(), rows) for t in (loss, rec, kl))
    return StepStats(*parts, inner_steps=inner_steps)
