"""Property-based tests (hypothesis) of the invariants the rest of lagvae leans on.

Each property is checked over drawn inputs rather than a few hand-picked ones:

1. the Gaussian KL term equals torch.distributions' KL(N(mu, sigma) || N(0, 1)) in float32, and is >= 0;
2. the importance-weighted bound (log-mean-exp of the log weights) lies between their mean and their max;
3. mi_full is at most log N, 0 for identical posteriors, and independent of its row-chunk size;
4. an epoch's batches cover every example exactly once;
5. resuming an epoch at batch k from what last.pt holds replays the rest of the uninterrupted epoch (and the next);
6. sharded draws and sharded batches are the rows of the global ones (a strict xfail records where a 1-row
   shard's draws are not);
7. a config survives config.json's save and load.
"""

from __future__ import annotations

import itertools
import math
import tempfile
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import Tensor
from torch.distributions import Normal, kl_divergence

from lagvae import draws, metrics
from lagvae.config import RunConfig, load_json
from lagvae.data.batches import IndexBatches, ShardedBatches, shard_bounds
from lagvae.data.images import ImageSet
from lagvae.data.text import PAD_ID, TextSet
from lagvae.draws import Rows
from lagvae.experiments.presets import make_config
from lagvae.metrics import mutual_information_full
from lagvae.objectives import gaussian_kl, gaussian_kl_per_dim, iw_bound
from lagvae.training import checkpoint
from lagvae.training.methods import METHODS
from lagvae.training.run_folder import CONFIG, RunFolder

SEEDS = st.integers(min_value=0, max_value=2**31 - 1)


# ---------------------------------------------------------------------------------------------------------------
# 1. Gaussian KL


@st.composite
def gaussian_params(draw: st.DrawFn) -> tuple[Tensor, Tensor]:
    """float32 (mu, logvar) of a [B, D] batch of diagonal Gaussians, within the ranges an encoder produces."""
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, max_side=6))
    # Some entries near the prior (mu, logvar ~ 0), where e^v - 1 - v cancels to nearly nothing in float32.
    near_prior = st.floats(-(2.0**-20), 2.0**-20, width=32)
    mu = draw(hnp.arrays(np.float32, shape, elements=st.floats(-10, 10, width=32) | near_prior))
    logvar = draw(hnp.arrays(np.float32, shape, elements=st.floats(-10, 5, width=32) | near_prior))
    return torch.from_numpy(mu), torch.from_numpy(logvar)


@given(gaussian_params())
def test_gaussian_kl_is_torchs_normal_kl_and_never_negative(params: tuple[Tensor, Tensor]) -> None:
    mu, logvar = params
    kl = gaussian_kl(mu, logvar)
    # The reference: per-dimension KL of independent Normals, summed over the latent dimensions.
    expected = kl_divergence(Normal(mu, (0.5 * logvar).exp()), Normal(0.0, 1.0)).sum(-1)
    assert kl.dtype == torch.float32 and kl.shape == (mu.shape[0],)
    torch.testing.assert_close(kl, expected, rtol=1e-5, atol=1e-5)
    # expm1 keeps every dimension's term >= 0 even in float32 (exp(v) - 1 - v rounds below 0 for tiny v).
    assert bool((gaussian_kl_per_dim(mu, logvar) >= 0).all())
    assert bool((kl >= 0).all())


# ---------------------------------------------------------------------------------------------------------------
# 2. The importance-weighted bound


@st.composite
def log_weights(draw: st.DrawFn) -> Tensor:
    """Log importance weights [B, K], float32 or float64, spread as widely as a poor proposal makes them."""
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    shape = draw(hnp.array_shapes(min_dims=2, max_dims=2, max_side=8))
    width = 32 if dtype == np.float32 else 64
    return torch.from_numpy(draw(hnp.arrays(dtype, shape, elements=st.floats(-1e3, 1e3, width=width))))


@given(log_weights())
def test_iw_bound_lies_between_the_mean_and_the_max_log_weight(log_w: Tensor) -> None:
    bound = iw_bound(log_w)
    assert bound.shape == log_w.shape[:1]
    # log (1/K) sum_k e^w_k >= (1/K) sum_k w_k (Jensen) and <= max_k w_k; the slack covers the rounding of
    # logsumexp and of the log K shift, a few ulps of the largest weight.
    slack = 8 * torch.finfo(log_w.dtype).eps * (1 + log_w.abs().amax(-1))
    mean, top = log_w.mean(-1), log_w.amax(-1)
    assert bool((bound >= mean - slack).all()), (bound, mean)
    assert bool((bound <= top + slack).all()), (bound, top)


# ---------------------------------------------------------------------------------------------------------------
# 3. mi_full


@st.composite
def posteriors(draw: st.DrawFn, max_n: int = 40) -> tuple[Tensor, Tensor]:
    """(mu, logvar) [N, D] of N examples' posteriors, from well separated (small variances) to overlapping."""
    n = draw(st.integers(1, max_n))
    d = draw(st.integers(1, 4))
    mu = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-5, 5)))
    logvar = draw(hnp.arrays(np.float64, (n, d), elements=st.floats(-8, 2)))
    return torch.from_numpy(mu), torch.from_numpy(logvar)


@given(posteriors(), SEEDS)
def test_mi_full_never_exceeds_log_n(params: tuple[Tensor, Tensor], seed: int) -> None:
    mu, logvar = params
    mi = float(mutual_information_full(mu, logvar, torch.Generator().manual_seed(seed)))
    # log q(z_n) includes z_n's own component, log q(z_n|x_n) - log N, so every term is at most log N.
    assert mi <= math.log(mu.shape[0]) + 1e-9, (mi, math.log(mu.shape[0]))


@given(
    st.integers(1, 60),
    hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=1, max_side=4), elements=st.floats(-5, 5)),
    st.floats(-8, 2),
    SEEDS,
)
def test_mi_full_of_identical_posteriors_is_zero(n: int, mu_row: np.ndarray, logvar: float, seed: int) -> None:
    # A collapsed encoder: every example has the same q(z|x), so q(z) = q(z|x) and I_q = 0 exactly (not only
    # in expectation), because log q(z_n|x_n) is taken at the same sample as log q(z_n).
    mu = torch.from_numpy(mu_row).expand(n, -1)
    mi = float(mutual_information_full(mu, torch.full_like(mu, logvar), torch.Generator().manual_seed(seed)))
    assert abs(mi) < 1e-9, mi


@settings(max_examples=30)
@given(posteriors(), st.integers(1, 40), SEEDS)
def test_mi_full_does_not_depend_on_its_chunk_size(params: tuple[Tensor, Tensor], rows: int, seed: int) -> None:
    mu, logvar = params
    whole = float(mutual_information_full(mu, logvar, torch.Generator().manual_seed(seed)))
    # `rows` z's a chunk (the chunk holds MI_CHUNK_VALUES = rows x N log densities); a mock.patch rather than the
    # monkeypatch fixture, which hypothesis would share between examples.
    with mock.patch.object(metrics, "MI_CHUNK_VALUES", rows * mu.shape[0]):
        chunked = float(mutual_information_full(mu, logvar, torch.Generator().manual_seed(seed)))
    # Equal up to rounding: BLAS may sum a one-row product in another order than a many-row one, and the expanded
    # square's terms are as large as (|mu| + 5 sd)^2 / var, so the rounding scales with them.
    terms = ((mu.abs() + 5 * (0.5 * logvar).exp()).pow(2) * (-logvar).exp() + logvar.abs()).sum(-1).max()
    assert chunked == pytest.approx(whole, rel=1e-12, abs=64 * torch.finfo(torch.float64).eps * float(terms + 1))


# ---------------------------------------------------------------------------------------------------------------
# Batches: three kinds whose gathered tensors reveal which examples they hold


class _IndexOnly(IndexBatches):
    """The base class's cut, gathering the indices themselves."""

    def _gather(self, idx: Tensor) -> Tensor:
        return idx.clone()


def _text_set(lengths: list[int]) -> TextSet:
    """Sentence i is the token i + 1 repeated lengths[i] times, so a gathered batch's first column minus 1 are
    its examples and its non-<pad> count per row their lengths."""
    return TextSet.from_ids([[i + 1] * length for i, length in enumerate(lengths)])


def _batches(
    kind: str, n: int, batch_size: int, shuffle: bool, generator: torch.Generator, data: st.DataObject
) -> IndexBatches:
    if kind == "index":
        return _IndexOnly(range(n), batch_size, shuffle=shuffle, generator=generator)
    if kind == "text":
        lengths = data.draw(st.lists(st.integers(1, 6), min_size=n, max_size=n), label="lengths")
        return _text_set(lengths).batches(batch_size, shuffle=shuffle, generator=generator)
    # dynamic images: each gather draws fresh binary pixels from the same generator as the order
    probs = torch.rand(n, 1, 2, 3, generator=torch.Generator().manual_seed(n))
    return ImageSet(probs, dynamic=True).batches(batch_size, shuffle=shuffle, generator=generator)


def _examples(kind: str, batch: Tensor) -> list[int]:
    return (batch if kind == "index" else batch[:, 0] - 1).tolist()


def _equal(a: list[Tensor], b: list[Tensor]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(a, b, strict=True))


# ---------------------------------------------------------------------------------------------------------------
# 4. Every example exactly once per epoch


@given(st.sampled_from(["index", "text"]), st.integers(1, 80), st.booleans(), SEEDS, st.data())
def test_every_epoch_covers_every_example_exactly_once(
    kind: str, n: int, shuffle: bool, seed: int, data: st.DataObject
) -> None:
    batch_size = data.draw(st.integers(1, n + 3), label="batch_size")  # larger than the split: one batch
    batches = _batches(kind, n, batch_size, shuffle, torch.Generator().manual_seed(seed), data)
    for _ in range(2):  # the second epoch is a fresh cut from the advanced generator
        served = list(batches)
        assert len(served) == len(batches) == -(-n // batch_size)
        members = [_examples(kind, x) for x in served]
        assert all(1 <= len(m) <= batch_size for m in members)
        assert sorted(itertools.chain.from_iterable(members)) == list(range(n))
        # what a mid-epoch checkpoint saves is what was served
        assert [idx.tolist() for idx in batches.epoch_order()] == members
        if kind == "text":
            lengths = [(x != PAD_ID).sum(1) for x in served]
            assert all(int(length.max()) == x.shape[1] for length, x in zip(lengths, served, strict=True))
            # sorted by length, then cut: batches are consecutive runs of the sorted lengths
            spans = sorted((int(length.min()), int(length.max())) for length in lengths)
            assert all(hi <= lo for (_, hi), (lo, _) in itertools.pairwise(spans))


# ---------------------------------------------------------------------------------------------------------------
# 5. Resuming an epoch at batch k


@settings(max_examples=40)
@given(st.sampled_from(["index", "text", "images"]), st.integers(2, 40), st.integers(0, 2), SEEDS, st.data())
def test_resuming_at_batch_k_serves_the_rest_of_the_uninterrupted_epoch(
    kind: str, n: int, epochs_before: int, seed: int, data: st.DataObject
) -> None:
    batch_size = data.draw(st.integers(1, n - 1), label="batch_size")  # at least two batches
    reference = _batches(kind, n, batch_size, True, torch.Generator().manual_seed(seed), data)
    for _ in range(epochs_before):
        list(reference)
    epoch, next_epoch = list(reference), list(reference)

    # The interrupted run: the same data (the text lengths are drawn once), the same seed.
    run = type(reference)(reference.data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed))
    for _ in range(epochs_before):
        list(run)
    # The trainer checkpoints after a step with 0 < count < iters: the order, count and data generator's state.
    k = data.draw(st.integers(1, len(epoch) - 1), label="k")
    stream = iter(run)
    head = [next(stream) for _ in range(k)]
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "last.pt"
        checkpoint.save_atomic(
            {"partial_epoch": {"order": run.epoch_order(), "count": k}, "data_rng": run.generator.get_state()}, path
        )
        saved = checkpoint.load(path)  # weights_only, as a resume reads it

    # A new process: another generator, overwritten by the checkpoint's state (as Checkpoints.resume does).
    resumed = type(reference)(reference.data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(1))
    resumed.generator.set_state(saved["data_rng"])
    rest = list(resumed.resume_epoch(saved["partial_epoch"]["order"], saved["partial_epoch"]["count"]))
    assert _equal(head + rest, epoch)
    assert _equal(list(resumed), next_epoch)  # and the following epoch is the uninterrupted run's


# ---------------------------------------------------------------------------------------------------------------
# 6. Sharded draws and batches are the global ones' rows


def _laid_out(shape: list[int], outer_to_inner: list[int]) -> Tensor:
    """An empty tensor of `shape` whose dimensions lie in memory from outermost to innermost as listed (a
    batch-first LSTM output is time-major: [1, 0, 2])."""
    base = torch.empty([shape[d] for d in outer_to_inner])
    return base.permute([outer_to_inner.index(d) for d in range(len(shape))])


@given(st.integers(1, 12), st.lists(st.integers(1, 4), max_size=2), SEEDS, st.data())
def test_sharded_draws_are_the_global_draws_rows(n: int, tail: list[int], seed: int, data: st.DataObject) -> None:
    world = data.draw(st.integers(1, n), label="world")  # check_shards: every process gets a row
    layout = data.draw(st.permutations(range(len(tail) + 1)), label="layout")
    bounds = shard_bounds(n, world)
    like = torch.empty(0)
    torch.manual_seed(seed)
    whole_n, whole_u = draws.randn((n, *tail), like), draws.rand_like(_laid_out([n, *tail], layout))
    parts_n, parts_u = [], []
    for r in range(world):
        rows = Rows(bounds[r], bounds[r + 1], n)
        torch.manual_seed(seed)  # every rank seeds the same stream
        with draws.sharded(rows):
            parts_n.append(draws.randn((rows.count, *tail), like))
            parts_u.append(draws.rand_like(_laid_out([rows.count, *tail], layout)))
    assert torch.equal(torch.cat(parts_n), whole_n)
    assert torch.equal(torch.cat(parts_u), whole_u)
    # a draw whose rows are not the shard's is refused, not silently drawn for another batch
    first = Rows(bounds[0], bounds[1], n)
    with draws.sharded(first), pytest.raises(RuntimeError, match="sharded draw"):
        draws.randn((first.count + 1, *tail), like)
    with draws.sharded(first), pytest.raises(RuntimeError, match="sharded draw"):
        draws.rand_like(_laid_out([first.count + 1, *tail], layout))


def test_a_one_row_shard_of_a_time_major_tensor_draws_the_global_rows() -> None:
    # check_shards allows a last batch of 3 on 2 processes (rows 2 + 1). With one row, the shard's strides tie;
    # read as row-major (as draws._memory_order once did), rank 1's dropout mask is not the one-process run's.
    torch.manual_seed(0)
    whole = draws.rand_like(_laid_out([3, 5, 4], [1, 0, 2]))
    torch.manual_seed(0)
    with draws.sharded(Rows(2, 3, 3)):
        part = draws.rand_like(_laid_out([1, 5, 4], [1, 0, 2]))
    assert torch.equal(part, whole[2:3])


@settings(max_examples=30)
@given(st.sampled_from(["index", "text", "images"]), st.integers(1, 40), SEEDS, st.data())
def test_shards_partition_every_global_batch(kind: str, n: int, seed: int, data: st.DataObject) -> None:
    batch_size = data.draw(st.integers(1, n), label="batch_size")
    world = data.draw(st.integers(1, batch_size), label="world")
    whole_source = _batches(kind, n, batch_size, True, torch.Generator().manual_seed(seed), data)
    whole = [*whole_source, whole_source.sample()]  # an epoch, then an aggressive inner-loop sample
    shards = []
    for rank in range(world):
        # every rank cuts (and binarises) with the same seeded generator
        source = type(whole_source)(
            whole_source.data, batch_size, shuffle=True, generator=torch.Generator().manual_seed(seed)
        )
        sharded = ShardedBatches(source, rank, world)
        shards.append([*sharded, sharded.sample()])
        # what the IW test's progress counts: this rank's rows of one epoch
        assert sharded.rows_per_epoch() == sum(len(x) for x, _ in shards[-1][:-1])
    for i, batch in enumerate(whole):
        parts = [stream[i] for stream in shards]
        assert torch.equal(torch.cat([x for x, _ in parts]), batch)
        assert all(x.shape[1:] == batch.shape[1:] for x, _ in parts)  # a text shard keeps the global length
        bounds = shard_bounds(len(batch), world)
        assert bounds == [0, *itertools.accumulate(len(t) for t in torch.tensor_split(torch.arange(len(batch)), world))]
        if world > 1:
            assert [rows for _, rows in parts] == [Rows(a, b, len(batch)) for a, b in itertools.pairwise(bounds)]


# ---------------------------------------------------------------------------------------------------------------
# 7. The config's JSON round trip


@settings(max_examples=25)
@given(
    preset=st.sampled_from(["synthetic", "synthetic-1d", "ptb", "omniglot-small"]),
    method=st.sampled_from(sorted(METHODS)),
    seed=st.integers(0, 2**63 - 1),
    lr=st.floats(min_value=0, max_value=100, exclude_min=True),
    latent_dim=st.integers(0, 512),
    minutes=st.floats(min_value=0, max_value=1e6),
    train_limit=st.none() | st.integers(1, 10**9),
    progress=st.booleans(),
)
def test_a_config_survives_save_and_load(
    preset: str,
    method: str,
    seed: int,
    lr: float,
    latent_dim: int,
    minutes: float,
    train_limit: int | None,
    progress: bool,
) -> None:
    overrides = [f"train.lr={lr!r}", f"model.latent_dim={latent_dim}", f"train.checkpoint_minutes={minutes!r}"]
    overrides.append(f"progress={progress}")  # the last field of RunConfig, as train.checkpoint_minutes is of train
    config = make_config(preset, method, seed=seed, train_limit=train_limit, overrides=overrides)
    # the `key=value` text parses back to the very float
    assert (config.train.lr, config.train.checkpoint_minutes) == (lr, minutes)
    with tempfile.TemporaryDirectory() as tmp:
        RunFolder(Path(tmp)).write_config(config)
        loaded = load_json(Path(tmp) / CONFIG)
    assert isinstance(loaded, RunConfig) and loaded == config
    assert (loaded.train.lr, loaded.train.seed, loaded.model.latent_dim, loaded.train.method) == (
        lr,
        seed,
        latent_dim,
        method,
    )
    assert (loaded.data.train_limit, loaded.train.checkpoint_minutes, loaded.progress) == (
        train_limit,
        minutes,
        progress,
    )
