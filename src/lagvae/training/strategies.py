"""Training strategies: how one outer step updates encoder and decoder (joint VAE, aggressive inference, SA-VAE)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import torch
from torch import Tensor

from lagvae import draws
from lagvae.config import TrainConfig
from lagvae.draws import Rows
from lagvae.inference import svi_refine
from lagvae.models.vae import VAE
from lagvae.objectives import elbo, free_bits_kl
from lagvae.training.flat_grads import FlatGrads
from lagvae.training.world import SINGLE, World

KLTerm = Callable[[Tensor], Tensor]  # KL per dimension [B, D] -> the per-example KL term in the loss [B]


Batch = tuple[Tensor, Rows | None]  # this process's rows of a global minibatch (None: the whole, one process)


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

    def optimizers(self) -> Iterable[torch.optim.Optimizer]:
        return (self.enc_opt, self.dec_opt)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def _stats(loss: Tensor, rec: Tensor, kl: Tensor, rows: Rows | None, inner_steps: int = 0) -> StepStats:
    parts = (shard_mean(t.detach(), rows) for t in (loss, rec, kl))
    return StepStats(*parts, inner_steps=inner_steps)


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
            "window": t.agg_window,
            "max_inner": t.agg_max_inner,
            "mi_patience": t.agg_mi_patience,
            "switch_on": t.agg_switch_on,
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


class SemiAmortizedStrategy(JointStrategy):
    """SA-VAE (Kim et al. 2018): the encoder's (mu, logvar) start `svi_steps` SVI steps on each x's ELBO.

    As Kim et al. by default: the SVI objective carries the current KL weight (`anneal`), the loss at the
    refined lambda_K is differentiated through the unrolled steps into the encoder and the decoder
    (`decoder_through`), and the SVI gradients are clipped per batch (`clip`). With decoder_through off,
    the decoder steps on the loss at lambda_K held fixed (lagvae's earlier choice). Metrics use the refined
    posterior too (the model's `refine` hook, with KL weight 1).
    """

    def __init__(
        self,
        model: VAE,
        enc_opt: torch.optim.Optimizer,
        dec_opt: torch.optim.Optimizer,
        clip_grad: float,
        svi_steps: int = 20,
        svi_lr: float = 1.0,
        svi_momentum: float = 0.5,
        kl_term: KLTerm = plain_kl,
        world: World = SINGLE,
        svi_max_grad_norm: float = 5.0,
        svi_clip: str = "batch",
        anneal: bool = True,
        decoder_through: bool = True,
    ) -> None:
        super().__init__(model, enc_opt, dec_opt, clip_grad, kl_term, world)
        self.svi: dict[str, Any] = {"steps": svi_steps, "lr": svi_lr, "momentum": svi_momentum}
        self.svi |= {"max_grad_norm": svi_max_grad_norm, "clip": svi_clip}
        if world.distributed:  # the batch clip's norm spans the global batch
            self.svi["reduce"] = world.all_reduce_
        self.anneal = anneal
        self.decoder_through = decoder_through
        model.refine = partial(svi_refine, **self.svi)

    @staticmethod
    def _options(t: TrainConfig, sample_batch: Callable[[], Batch]) -> dict[str, Any]:
        # Kim et al. step on the batch-mean loss, so lr 1 there is lr 1/B on one example's ELBO. Taking lr 1
        # per example (B times theirs) let the refined log-variance run off to overflow in 3 of 6 grid runs.
        return {
            "svi_steps": t.svi_steps,
            "svi_lr": t.svi_lr / t.batch_size,
            "svi_momentum": t.svi_momentum,
            "svi_max_grad_norm": t.svi_max_grad_norm,
            "svi_clip": t.svi_clip,
            "anneal": t.svi_anneal,
            "decoder_through": t.svi_decoder_through,
        }

    def step(self, x: Tensor, kl_weight: float, rows: Rows | None = None) -> StepStats:
        model = self.model
        svi_weight = kl_weight if self.anneal else 1.0
        with draws.sharded(rows):
            mu0, logvar0 = model.encode(x)
            mu, logvar = svi_refine(model, x, mu0, logvar0, **self.svi, create_graph=True, kl_weight=svi_weight)
            loss, rec, kl = self._combine(*model.terms_at(x, mu, logvar), kl_weight)
            if not self.decoder_through:  # the decoder's loss at lambda_K held fixed
                dec_loss, rec, kl = self._combine(*model.terms_at(x, mu.detach(), logvar.detach()), kl_weight)
        self.grads.zero_()
        if self.decoder_through:
            shard_mean(loss, rows).backward()
        else:
            shard_mean(loss, rows).backward(inputs=self.grads.encoder_params)
            shard_mean(dec_loss, rows).backward(inputs=self.grads.decoder_params)
            loss = dec_loss
        self._clip_and_step((self.enc_opt, self.dec_opt))
        return _stats(loss, rec, kl, rows)


STRATEGIES: dict[str, type[JointStrategy]] = {
    "joint": JointStrategy,
    "aggressive": AggressiveStrategy,
    "savae": SemiAmortizedStrategy,
}
