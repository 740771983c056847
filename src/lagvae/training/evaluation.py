"""Held-out evaluation of a run's model: batches behind a progress bar, and the test from its own seeded stream."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from lagvae.config import RunConfig
from lagvae.data import Dataset
from lagvae.data.batches import ShardedBatches
from lagvae.inference import Posterior
from lagvae.metrics import evaluate
from lagvae.models.vae import VAE
from lagvae.training.strategies import Batch, on_device
from lagvae.training.world import World

TEST_SEED_OFFSET = 1  # the test's random stream: train.seed + this
IW_RANK_STRIDE = 1_000_003  # rank r's IW stream under several processes: the test's seed + this * (r + 1)


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


def test_metrics(
    model: VAE,
    posterior: Posterior,
    test: Dataset,
    config: RunConfig,
    world: World,
    device: torch.device,
    progress: bool,
    position: int = 0,
) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    """`evaluate` on the test split with IW-NLL at K = eval.iw_samples, drawing from the test's own seeded
    stream, so re-testing a finished run reproduces its final.json whatever training drew; with it each
    example's index in the split and its IW-NLL (both empty when iw_samples is 0)."""
    e = config.eval
    sharded = eval_batches(test, config, world)
    batches = with_progress(sharded, device, f"test (IW, K = {e.iw_samples})", progress, position)
    nll: list[torch.Tensor] = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        seed = config.train.seed + TEST_SEED_OFFSET
        torch.manual_seed(seed)
        iw_generator = None  # one process: the IW samples continue the test's stream
        if world.size > 1:  # each rank's IW samples: its own stream, reproducible per world size
            iw_generator = torch.Generator(device).manual_seed(seed + IW_RANK_STRIDE * (1 + world.rank))
        metrics = evaluate(
            model, batches, e.iw_samples, e.max_memory_mb, world, iw_generator, e.mi_full_max, posterior, nll
        )
    if not nll:
        return metrics, np.zeros(0, dtype=np.int64), np.zeros(0)
    index = torch.cat(sharded.epoch_order()).numpy()
    return metrics, index, torch.cat(nll).double().cpu().numpy()


def final_results(
    metrics: dict[str, float],
    config: RunConfig,
    history: list[dict[str, Any]],
    train_seconds: float,
    best_epoch: int,
    provenance: dict[str, Any],
) -> dict[str, Any]:
    """final.json: the test metrics with how the run got there."""
    return {
        **metrics,
        "method": config.train.method,
        "train_seconds": train_seconds,
        "epochs": len(history),
        "best_epoch": best_epoch,
        "iw_samples": config.eval.iw_samples,
        "provenance": provenance,
    }
