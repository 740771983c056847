"""KL-weight schedules: pure functions of the global (outer) training step."""

from __future__ import annotations

import math

from lagvae.config import ConfigError, TrainConfig


def linear_anneal(step: int, start: float, warmup_steps: int) -> float:
    """beta(t) = min(1, start + t (1 - start) / warmup_steps): the paper's per-iteration KL annealing."""
    if warmup_steps <= 0 or start >= 1.0:
        return 1.0
    return min(1.0, start + step * (1.0 - start) / warmup_steps)


def cyclical(step: int, period: float, ratio: float = 0.5, floor: float = 0.0, shape: str = "linear") -> float:
    """Fu et al. (2019): within each period, rise from `floor` to 1 over the first `ratio` of it, then hold 1.

    beta(t) = floor + (1 - floor) f(tau / ratio) for tau = (t mod period) / period < ratio, else 1, where f
    is linear, cosine (1 - cos(pi u)) / 2, or sigmoid (logistic over [-6, 6], rescaled to [0, 1]).
    """
    tau = (step % period) / period
    if tau >= ratio:
        return 1.0
    u = tau / ratio
    if shape == "linear":
        ramp = u
    elif shape == "cosine":
        ramp = 0.5 * (1.0 - math.cos(math.pi * u))
    elif shape == "sigmoid":
        lo, hi = 1 / (1 + math.exp(6)), 1 / (1 + math.exp(-6))
        ramp = (1 / (1 + math.exp(-12 * u + 6)) - lo) / (hi - lo)
    else:
        raise ConfigError(f"unknown cycle shape {shape!r}; choose from {', '.join(CYCLE_SHAPES)}")
    return floor + (1.0 - floor) * ramp


SCHEDULES = ("linear", "constant", "cyclical")
CYCLE_SHAPES = ("linear", "cosine", "sigmoid")


def kl_weight(step: int, train: TrainConfig, iters_per_epoch: int, cycle_epochs: int | None = None) -> float:
    """The KL weight at `step` under the run's schedule; the cyclical period spans `cycle_epochs` (the epoch
    count the run started with, so a resume with a new --epochs keeps the schedule) / cyclical.n_cycles."""
    if train.schedule == "constant":
        return train.beta
    if train.schedule == "cyclical":
        epochs = cycle_epochs or train.epochs
        c = train.cyclical
        return cyclical(step, epochs * iters_per_epoch / c.n_cycles, c.ratio, 0.0, c.shape)
    return linear_anneal(step, train.kl_start, train.warm_up * iters_per_epoch)
