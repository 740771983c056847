"""Semi-amortized VAE (Kim et al. 2018): SVI steps refine the encoder's posterior, differentiated through."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from lagvae import draws
from lagvae.config import TrainConfig
from lagvae.distributed import SINGLE, World
from lagvae.draws import Rows
from lagvae.inference import Posterior, Refined, svi_refine
from lagvae.models.vae import VAE
from lagvae.training.strategies import Batch, JointStrategy, KLTerm, StepStats, _stats, plain_kl, shard_mean


def svi_options(t: TrainConfig) -> dict[str, Any]:
    """svi_refine's keyword options for a run configured by `t` (its SVI steps, step size and clip): the one
    place they come from, for training and for a finished run's posterior alike."""
    return {
        "steps": t.savae.steps,
        # Kim et al. step on the batch-mean loss, so lr 1 there is lr 1/B on one example's ELBO; svi_refine
        # divides by B, the size of the batch it refines (the epoch's last can be short). Taking lr 1 per
        # example (B times theirs) let the refined log-variance run off to overflow in 3 of 6 grid runs.
        "lr": t.savae.lr,
        "momentum": t.savae.momentum,
        "max_grad_norm": t.savae.max_grad_norm,
        "clip": t.savae.clip,
    }


class SemiAmortizedStrategy(JointStrategy):
    """SA-VAE (Kim et al. 2018): the encoder's (mu, logvar) start SVI steps on each x's ELBO (`svi`:
    svi_refine's options, `svi_options(train config)`).

    As Kim et al. by default: the SVI objective carries the current KL weight (`anneal`), and the loss at
    the refined lambda_K is differentiated through the unrolled steps into the encoder and the decoder
    (`decoder_through`). Unlike Kim's, the SVI gradients are clipped per example by default
    (train.savae.clip=example); Kim's per-batch clip (clip=batch) let one example's log-variance run off
    (docs/DESIGN.md, "SA-VAE"). With decoder_through off, the decoder steps on the loss at lambda_K held
    fixed (lagvae's earlier choice). Metrics use the refined posterior too, at KL weight 1 (`posterior`).
    """

    def __init__(
        self,
        model: VAE,
        enc_opt: torch.optim.Optimizer,
        dec_opt: torch.optim.Optimizer,
        clip_grad: float,
        svi: dict[str, Any],
        kl_term: KLTerm = plain_kl,
        world: World = SINGLE,
        anneal: bool = True,
        decoder_through: bool = True,
    ) -> None:
        super().__init__(model, enc_opt, dec_opt, clip_grad, kl_term, world)
        self.svi: dict[str, Any] = dict(svi)
        if world.distributed:  # the batch clip's norm spans the global batch
            self.svi["reduce"] = world.all_reduce_
        self.anneal = anneal
        self.decoder_through = decoder_through

    @property
    def posterior(self) -> Posterior:
        return Refined(self.svi)

    @staticmethod
    def _options(t: TrainConfig, sample_batch: Callable[[], Batch]) -> dict[str, Any]:
        return {"svi": svi_options(t), "anneal": t.savae.anneal, "decoder_through": t.savae.decoder_through}

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
