"""Synthetic-preset throughput: joint, aggressive (outer and inner) and SA-VAE steps/s, IW-NLL examples/s.

Run: .venv/bin/python benchmarks/bench_synthetic.py [--seconds S] [--threads 1 2]
Ratios are against the joint (plain VAE) step rate measured in the same run, so they survive a busy machine.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator

import torch

from lagvae.data.batches import ShardedBatches
from lagvae.experiments.presets import make_config
from lagvae.metrics import iw_log_likelihood
from lagvae.training.loop import Trainer
from lagvae.training.strategies import Batch


def _trainer(method: str, tmp: str, threads: int) -> Trainer:
    config = make_config("synthetic", method, overrides=["eval.posterior_points=0"])
    config.progress = False
    config.threads = threads
    return Trainer(config, f"{tmp}/{method}")


def _forever(batches: ShardedBatches) -> Iterator[Batch]:
    while True:
        yield from batches


def steps_per_second(trainer: Trainer, seconds: float) -> tuple[float, float]:
    """Outer steps/s and mean inner steps over `seconds` of training from initialisation."""
    batches = _forever(trainer.train_batches)
    steps, inner = 0, 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        x, rows = next(batches)
        inner += trainer.strategy.step(x, 1.0, rows).inner_steps
        steps += 1
    if trainer.device.type == "cuda":  # the GPU runs ahead of the host: count the queued steps' time too
        torch.cuda.synchronize(trainer.device)
    return steps / (time.perf_counter() - start), inner / steps


def iw_examples_per_second(trainer: Trainer, k: int, seconds: float) -> float:
    """Test examples per second at K = k over `seconds`, on batches in a seeded random order: the test's own
    order runs text shortest first, and timing its first batches would flatter the cost of the rest."""
    generator = torch.Generator().manual_seed(0)
    batches = trainer.splits.test.batches(trainer.config.train.batch_size, shuffle=True, generator=generator)
    trainer.model.eval()
    n = 0
    start = time.perf_counter()
    with torch.no_grad():
        for x in batches:
            iw_log_likelihood(trainer.model, x, k, trainer.config.eval.max_memory_mb)
            n += x.shape[0]
            if time.perf_counter() - start > seconds:
                break
    return n / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=20.0, help="time per measurement")
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--tmp", default="/tmp/lagvae-bench")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {args.seconds:.0f} s per measurement, synthetic preset (batch 16)")
    print(
        "| threads | joint steps/s | aggressive outer steps/s | mean inner | inner steps/s | SA-VAE steps/s "
        "| IW-NLL ex/s (K=500) |"
    )
    print("|---|---|---|---|---|---|---|")
    base = None
    for threads in args.threads:
        torch.manual_seed(0)
        joint, _ = steps_per_second(_trainer("vae", args.tmp, threads), args.seconds)
        aggressive = _trainer("aggressive", args.tmp, threads)
        outer, inner = steps_per_second(aggressive, args.seconds)
        iw = iw_examples_per_second(aggressive, 500, args.seconds)
        savae, _ = steps_per_second(_trainer("savae", args.tmp, threads), args.seconds)
        base = base or joint
        print(
            f"| {threads} | {joint:.1f} ({joint / base:.2f}x) | {outer:.2f} ({outer / joint:.3f}x joint) | "
            f"{inner:.1f} | {outer * (inner + 1):.1f} ({outer * (inner + 1) / joint:.2f}x joint) | "
            f"{savae:.2f} ({savae / joint:.3f}x joint) | {iw:.1f} |"
        )


if __name__ == "__main__":
    main()
