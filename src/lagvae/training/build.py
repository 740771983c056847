"""Building a run from its config: checks on the settings, the optimisers and the training strategy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from typing import Any

import torch

from lagvae.config import ConfigError, RunConfig
from lagvae.inference import Posterior, Refined, amortized
from lagvae.models import VAE, check_choices
from lagvae.objectives import free_bits_example_kl, free_bits_kl
from lagvae.training.aggressive import AggressiveStrategy
from lagvae.training.mdr import MDRStrategy
from lagvae.training.savae import SemiAmortizedStrategy, svi_options
from lagvae.training.schedules import CYCLE_SHAPES, SCHEDULES
from lagvae.training.strategies import Batch, JointStrategy, plain_kl, sharded_free_bits
from lagvae.training.world import SINGLE, World

log = logging.getLogger("lagvae")


KL_TERMS = ("plain", "free-bits", "free-bits-example")
# Seeds below 2**63: torch's generators take at most 2**64 - 1, and the test, the second training phase and each
# rank's IW stream seed from train.seed plus an offset (lagvae.training.evaluation), which must stay in range too.
SEED_LIMIT = 2**63
STRATEGIES: dict[str, type[JointStrategy]] = {
    "joint": JointStrategy,
    "aggressive": AggressiveStrategy,
    "savae": SemiAmortizedStrategy,
    "mdr": MDRStrategy,
}


def validate(config: RunConfig) -> None:
    """Reject settings no run can use, with one-line messages."""
    t, d, e = config.train, config.data, config.eval
    positive = {
        "log.every_steps": config.log.every_steps,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.lr": t.lr,
        "train.aggressive.window": t.aggressive.window,
        "train.aggressive.max_inner": t.aggressive.max_inner,
        "train.cyclical.n_cycles": t.cyclical.n_cycles,
        "eval.max_memory_mb": e.max_memory_mb,
        "eval.posterior_grid": e.posterior_grid,
        "eval.posterior_range": e.posterior_range,
        "model.delta.rate": config.model.delta.rate,
        "model.du.gamma": config.model.du.gamma,
        "train.mdr.lr": t.mdr.lr,
    }
    if t.pretrain.epochs is not None:
        positive["train.pretrain.epochs"] = t.pretrain.epochs
    m = config.model
    if m.kind == "image":  # the sizes each kind's constructors take: 0 or below is a traceback deep in torch
        positive |= {"model.channels": m.channels, "model.enc_features": m.enc_features}
    else:
        positive |= {"model.embed_dim": m.embed_dim, "model.enc_hidden": m.enc_hidden, "model.dec_hidden": m.dec_hidden}
    if d.name == "synthetic":
        positive.update({"data.n_train": d.n_train, "data.n_val": d.n_val, "data.n_test": d.n_test})
        positive.update({"data.seq_len": d.seq_len, "data.vocab_size": d.vocab_size})
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    non_negative = {"model.latent_dim": config.model.latent_dim, "eval.iw_samples": e.iw_samples}
    non_negative |= {"train.aggressive.mi_patience": t.aggressive.mi_patience}
    non_negative |= {"train.checkpoint_minutes": t.checkpoint_minutes}
    non_negative |= {"eval.batch_size": e.batch_size, "train.clip_grad": t.clip_grad, "train.momentum": t.momentum}
    non_negative |= {"eval.mi_full_max": e.mi_full_max, "eval.alarm_epochs": e.alarm_epochs}
    non_negative |= {"train.beta": t.beta, "train.free_bits": t.free_bits, "train.savae.steps": t.savae.steps}
    non_negative |= {"model.bn.gamma": m.bn.gamma, "model.du.rate": m.du.rate, "train.mdr.rate": t.mdr.rate}
    for key, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    for key, value in {"train.seed": t.seed, "data.seed": d.seed}.items():
        if not 0 <= value < SEED_LIMIT:  # data.seed seeds numpy, which takes no negative seed
            raise ConfigError(f"{key} must be in [0, 2**63), got {value}")
    choices = {
        "train.optimizer": (t.optimizer, ("sgd", "adam")),
        "train.strategy": (t.strategy, tuple(STRATEGIES)),
        "train.schedule": (t.schedule, SCHEDULES),
        "train.kl_term": (t.kl_term, KL_TERMS),
        "train.cyclical.shape": (t.cyclical.shape, CYCLE_SHAPES),
        "train.aggressive.switch_on": (t.aggressive.switch_on, ("mi", "mi_full")),
        "train.savae.clip": (t.savae.clip, ("batch", "example")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"unknown {key} {value!r}; choose from {', '.join(allowed)}")
    check_choices(config.model)
    if t.aggressive.switch_on == "mi_full" and e.mi_full_max == 0:
        raise ConfigError("train.aggressive.switch_on=mi_full needs eval.mi_full_max > 0 (it computes mi_full)")
    if not 0 <= config.model.du.dropout < 1:
        raise ConfigError(f"model.du.dropout must be in [0, 1), got {config.model.du.dropout}")
    if t.pretrain.enabled and t.strategy != "joint":
        raise ConfigError(f"train.pretrain.enabled needs train.strategy=joint, got {t.strategy!r}")
    if not 0 < t.cyclical.ratio <= 1:
        raise ConfigError(f"train.cyclical.ratio must be in (0, 1], got {t.cyclical.ratio}")


def make_optimizer(params: Any, config: RunConfig, lr: float) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=t.momentum)


def set_lr(strategy: JointStrategy, lr: float) -> None:
    for opt in strategy.optimizers():
        for group in opt.param_groups:
            group["lr"] = lr


def build_strategy(
    config: RunConfig, model: VAE, sample_batch: Callable[[], Batch], world: World = SINGLE
) -> JointStrategy:
    t = config.train
    enc = make_optimizer(model.encoder.parameters(), config, t.lr)
    dec = make_optimizer(model.decoder.parameters(), config, t.lr)
    kl_term = plain_kl
    if t.kl_term == "free-bits-example":  # per example: a shard's rows need nothing from the others
        kl_term = partial(free_bits_example_kl, target=t.free_bits)
    if t.kl_term == "free-bits":
        kl_term = (
            sharded_free_bits(world, t.free_bits) if world.distributed else partial(free_bits_kl, target=t.free_bits)
        )
    return STRATEGIES[t.strategy].from_config(t, model, enc, dec, kl_term, sample_batch, world)


def build_posterior(config: RunConfig) -> Posterior:
    """The q(z|x) a finished run's metrics and generation use, in one process: SA-VAE's refinement for its
    runs, else the encoder's (a training run takes its strategy's `posterior`, which is the same)."""
    return Refined(svi_options(config.train)) if config.train.strategy == "savae" else amortized
