"""Seed-level statistics of paired comparisons: the t quantile, the t interval over seeds, and the verdict."""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

# The 0.975 quantile of Student's t for df = 1..30 (scipy.stats.t.ppf, 6 decimals; tests/test_stats.py checks them).
T975 = (
    12.706205, 4.302653, 3.182446, 2.776445, 2.570582, 2.446912, 2.364624, 2.306004, 2.262157, 2.228139,
    2.200985, 2.178813, 2.160369, 2.144787, 2.131450, 2.119905, 2.109816, 2.100922, 2.093024, 2.085963,
    2.079614, 2.073873, 2.068658, 2.063899, 2.059539, 2.055529, 2.051831, 2.048407, 2.045230, 2.042272,
)  # fmt: skip
Z975 = 1.959963984540054  # its normal limit

BETTER, WORSE, TIE, ONE_SEED = "better", "worse", "tie", "one seed, no verdict"


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with `df` degrees of freedom: the table up to 30, above it the
    Cornish-Fisher expansion about the normal quantile z, t = z + g1/df + g2/df^2 + g3/df^3 + g4/df^4
    (within 1e-7 of the exact value for df > 30)."""
    if df < 1:
        raise ValueError(f"a t quantile needs df >= 1, got {df}")
    if df <= len(T975):
        return T975[df - 1]
    z = Z975
    g1 = (z**3 + z) / 4
    g2 = (5 * z**5 + 16 * z**3 + 3 * z) / 96
    g3 = (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384
    g4 = (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160
    return z + g1 / df + g2 / df**2 + g3 / df**3 + g4 / df**4


@dataclass(frozen=True)
class Paired:
    """A paired difference (method - reference) over the seeds both finished.

    `mean`: the mean over seeds of the per-seed mean differences d_s; `low`, `high`: the seed-level 95% t
    interval mean ± t975(n - 1) sd(d_s) / sqrt(n) (None with one seed); `within_se`: the mean over seeds of
    the per-seed standard error sd_i(d_s,i) / sqrt(#examples), the test set's noise, not the seeds'."""

    seeds: int
    mean: float
    low: float | None
    high: float | None
    within_se: float

    @property
    def verdict(self) -> str:
        return verdict(self.low, self.high)


def verdict(low: float | None, high: float | None) -> str:
    """'better' (below 0: the method's NLL is lower) or 'worse' when the interval excludes 0, 'tie' when it
    holds 0, and 'one seed, no verdict' when there is no interval (one seed)."""
    if low is None or high is None:
        return ONE_SEED
    if high < 0:
        return BETTER
    if low > 0:
        return WORSE
    return TIE


def seed_interval(per_seed: Sequence[float]) -> tuple[float, float | None, float | None]:
    """The mean of `per_seed` and its 95% t interval over seeds (n - 1 degrees of freedom); no interval for one."""
    if not per_seed:
        raise ValueError("an interval needs at least one seed")
    mean = statistics.fmean(per_seed)
    if len(per_seed) < 2:
        return mean, None, None
    half = t975(len(per_seed) - 1) * statistics.stdev(per_seed) / math.sqrt(len(per_seed))
    return mean, mean - half, mean + half


def paired(differences: Sequence[np.ndarray]) -> Paired:
    """`differences`: one array per seed of the per-example differences nll_method,i - nll_reference,i."""
    means = [float(d.mean()) for d in differences]
    mean, low, high = seed_interval(means)
    errors = [float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else 0.0 for d in differences]
    return Paired(len(differences), mean, low, high, statistics.fmean(errors))
