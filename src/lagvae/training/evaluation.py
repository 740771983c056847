"""Held-out evaluation of a run's model: batches behind a progress bar, and the test from its own seeded stream."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lagvae.config import RunConfig
from lagvae.data import Dataset
from lagvae.data.batches import ShardedBatches
from lagvae.distributed import World
from lagvae.inference import Posterior
from lagvae.metrics import evaluate
from lagvae.models.vae import VAE
from lagvae.training.strategies import Batch, on_device

TEST_SEED_OFFSET = 1  # the test's random stream: train.seed + this
IW_RANK_STRIDE = 1_000_003  # rank r's IW stream under several processes: the test's seed + this * (r + 1)

log = logging.getLogger("lagvae")


def eval_batches(data: Dataset, config: RunConfig, world: World) -> ShardedBatches:
    """This rank's shard of every evaluation batch of `data`, in order."""
    source = data.batches(config.eval.batch_size or config.train.batch_size, shuffle=False)
    return ShardedBatches(source, world.rank, world.size)  # type: ignore[arg-type]


def with_progress(
    batches: ShardedBatches, device: torch.device, desc: str, enabled: bool, position: int = 0
) -> Iterable[Batch]:
    """The batches moved to `device`, behind a bar with an ETA (an evaluation can take minutes)."""
    return tqdm(
        (on_device(device, b) for b in batches),
        total=len(batches),
        desc=desc,
        disable=not enabled,
        position=position,
        leave=False,
        dynamic_ncols=True,
    )


def rough_duration(seconds: float) -> str:
    """A rough duration for people: '40 s', '12 min', '2 h 10 min'."""
    if seconds < 59.5:
        return f"{max(seconds, 1):.0f} s"
    hours, minutes = divmod(round(seconds / 60), 60)
    return f"{hours} h {minutes} min" if hours else f"{minutes} min"


class IWProgress:
    """The IW test's progress bar, which moves per chunk of samples ((example, sample) pairs decoded, each
    weighted by its batch's width: a text batch's length), not per batch: at K in the thousands one batch can
    take minutes. Before the test runs in earnest it logs how long the whole will take, timed on the first
    batch and scaled by the widths: text batches run shortest first, so a count of pairs alone would promise
    a long test in a fraction of its time.

    The first chunk's end minus the batch's start is the posterior (SA-VAE's refinement is costly) plus one
    chunk; the second chunk alone gives the cost per pair, so the two are told apart. A first batch decoded
    in one chunk is timed whole instead.
    """

    def __init__(
        self,
        config: RunConfig,
        batches: ShardedBatches,
        world: World,
        device: torch.device,
        enabled: bool,
        position: int,
    ) -> None:
        e = config.eval
        self.k = e.iw_samples if config.model.latent_dim > 0 else 1  # no latent: one sample is exact
        self.n = len(batches.source.data)
        self.widths = batches.source.batch_widths()
        self.work = sum(r * w for r, w in zip(batches.rows_per_batch(), self.widths, strict=True))  # row-units
        self.device = device
        self.announce = world.is_main
        self.bar = tqdm(
            total=self.work * self.k,
            desc=f"test (IW, K = {e.iw_samples})",
            unit=batches.source.unit,
            unit_scale=True,
            disable=not enabled,
            position=position,
            leave=False,
            dynamic_ncols=True,
        )
        self.width = self.widths[0] if self.widths else 1  # the current batch's
        self.estimated = False
        self.chunks = 0
        self.start = self.first_end = 0.0
        self.first_pairs = self.first_rows = 0

    def _now(self) -> float:
        # CUDA runs ahead of the host: wait for it, but only while timing (at most three times a test)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def batches(self, batches: Iterable[Batch]) -> Iterator[Batch]:
        """The batches moved to the device; the first one's start is the timing's zero."""
        for i, (x, rows) in enumerate(on_device(self.device, b) for b in batches):
            self.width = self.widths[i]
            if i == 0:
                self.start, self.first_rows = self._now(), x.shape[0]
            elif not self.estimated and self.chunks:  # the first batch was one chunk: time it whole
                self._estimate(self._now() - self.start, 0.0)
            yield x, rows
        if not self.estimated and self.chunks:
            self._estimate(self._now() - self.start, 0.0)
        self.bar.close()

    def on_chunk(self, pairs: int) -> None:
        """metrics.evaluate's `on_iw_chunk`: move the bar, and time the first batch's first two chunks."""
        self.bar.update(pairs * self.width)
        if self.estimated:
            return
        self.chunks += 1
        if self.chunks == 1:
            self.first_end, self.first_pairs = self._now(), pairs
        elif self.chunks == 2:
            per_pair = (self._now() - self.first_end) / max(pairs, 1)
            self._estimate(max(0.0, self.first_end - self.start - per_pair * self.first_pairs), per_pair)

    def _estimate(self, per_batch: float, per_pair: float) -> None:
        """Log the test's estimated duration: `per_batch` seconds for the first batch's rows besides the IW
        pairs (its posterior), `per_pair` for each of its (example, sample) pairs; both grow with the width."""
        self.estimated = True
        if not self.announce:
            return
        scale = self.work / max(self.first_rows * self.widths[0], 1)  # the test, in first batches
        seconds = (per_batch + per_pair * self.first_rows * self.k) * scale
        log.info(
            f"test: K = {self.k:,} on {self.n:,} examples, about {rough_duration(seconds)} (timed on the first batch, "
            "scaled to the whole test); eval.iw_samples or data.eval_limit cut it"
        )


def test_metrics(
    model: VAE,
    posterior: Posterior,
    test: Dataset,
    config: RunConfig,
    world: World,
    device: torch.device,
    progress: bool,
    position: int = 0,
    stop: Callable[[], None] | None = None,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """`evaluate` on the test split with IW-NLL at K = eval.iw_samples, drawing from the test's own seeded
    stream, so re-testing a finished run reproduces its final.json whatever training drew, and what the test
    took (`test_seconds`); with it each example's index in the split and its IW-NLL (both empty when iw_samples
    is 0).

    `stop` is called before each batch and after each chunk of IW samples: it raises to end a long test early
    (the Trainer's SIGTERM stop)."""
    e = config.eval
    started = time.perf_counter()
    sharded = eval_batches(test, config, world)
    iw = IWProgress(config, sharded, world, device, progress, position) if e.iw_samples > 0 else None
    batches = iw.batches(sharded) if iw else with_progress(sharded, device, "test", progress, position)
    on_chunk = iw.on_chunk if iw else None
    if stop is not None:
        batches = _checked(batches, stop)
        on_chunk = _then(on_chunk, stop) if on_chunk else None
    nll: list[torch.Tensor] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        seed = config.train.seed + TEST_SEED_OFFSET
        torch.manual_seed(seed)
        iw_generator = None  # one process: the IW samples continue the test's stream
        if world.size > 1:  # each rank's IW samples: its own stream, reproducible per world size
            iw_generator = torch.Generator(device).manual_seed(seed + IW_RANK_STRIDE * (1 + world.rank))
        metrics = evaluate(
            model, batches, e.iw_samples, e.max_memory_mb, world, iw_generator, e.mi_full_max, posterior, nll,
            on_iw_chunk=on_chunk,
        )  # fmt: skip
    metrics["test_seconds"] = time.perf_counter() - started
    if not nll:
        return metrics, np.zeros(0, dtype=np.int64), np.zeros(0)
    index = torch.cat(sharded.epoch_order()).numpy()
    return metrics, index, torch.cat(nll).double().cpu().numpy()


def _checked(batches: Iterable[Batch], stop: Callable[[], None]) -> Iterator[Batch]:
    for batch in batches:
        stop()
        yield batch


def _then(first: Callable[[int], None], stop: Callable[[], None]) -> Callable[[int], None]:
    def both(pairs: int) -> None:
        first(pairs)
        stop()

    return both


def final_results(
    metrics: dict[str, float],
    config: RunConfig,
    history: list[dict[str, Any]],
    train_seconds: float,
    best_epoch: int,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """final.json: the test metrics (with `test_seconds`) and how the run got there."""
    return {
        **metrics,
        "method": config.train.method,
        "train_seconds": train_seconds,
        "epochs": len(history),
        "best_epoch": best_epoch,
        "iw_samples": config.eval.iw_samples,
        "provenance": provenance,
    }
