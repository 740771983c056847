"""Cost of one training step and of IW evaluation for any preset, method and size, on one thread.

Run: .venv/bin/python benchmarks/bench_steps.py PRESET METHOD [--size S] [--set key=value ...]
Prints ms per outer step (with the mean number of inner encoder steps), for an aggressive method also a
plain step (aggressive mode switched off, what its steps cost after the switch), and ms per test example for
the IW bound; the per-epoch costs quoted in docs/RESULTS.md are these times the steps per epoch.
`--extrapolate N,A,T` turns them into a whole run: N training examples (steps of the preset's batch), the
preset's epoch cap of which the first A aggressive, and T test examples at K = --iw-samples (validation
left out: one sample per example, a small part).
"""

from __future__ import annotations

import argparse
import math

import torch
from bench_synthetic import iw_examples_per_second, steps_per_second

from lagvae.experiments.presets import make_config
from lagvae.training.loop import Trainer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("preset")
    parser.add_argument("method")
    parser.add_argument("--size")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--seconds", type=float, default=20.0, help="time per measurement")
    parser.add_argument("--iw-samples", type=int, default=100)
    parser.add_argument("--tmp", default="/tmp/lagvae-bench-steps")
    parser.add_argument("--extrapolate", metavar="N,A,T", help="training examples, aggressive epochs, test examples")
    args = parser.parse_args()
    config = make_config(args.preset, args.method, size=args.size, overrides=args.overrides)
    config.progress, config.threads = False, 1
    torch.manual_seed(0)
    trainer = Trainer(config, f"{args.tmp}/{args.preset}-{args.method}")
    rate, inner = steps_per_second(trainer, args.seconds)
    plain = rate
    if getattr(trainer.strategy, "aggressive", False):
        trainer.strategy.aggressive = False
        plain, _ = steps_per_second(trainer, args.seconds)
    iw = iw_examples_per_second(trainer, args.iw_samples, args.seconds)
    label = " ".join([args.preset, args.method, *([f"size={args.size}"] if args.size else []), *args.overrides])
    print(
        f"{label} on {trainer.device}: "
        f"{1000 / rate:.0f} ms per outer step (mean inner {inner:.1f}), {1000 / plain:.0f} ms per plain step, "
        f"IW K={args.iw_samples}: {1000 / iw:.0f} ms per test example"
    )
    if args.extrapolate:
        n, aggressive, test = (int(v) for v in args.extrapolate.split(","))
        steps = math.ceil(n / config.train.batch_size)
        epochs = config.train.epochs
        hours = [steps / rate / 3600, steps / plain / 3600]
        train = min(aggressive, epochs) * hours[0] + max(epochs - aggressive, 0) * hours[1]
        print(
            f"extrapolated: {n:,} examples = {steps:,} steps an epoch; an aggressive epoch {hours[0]:.2f} h (from "
            f"initialisation: an upper bound), a plain epoch {hours[1]:.2f} h; {epochs} epochs with {aggressive} "
            f"aggressive {train:.1f} h; test {test:,} examples at K={args.iw_samples} {test / iw / 3600:.1f} h"
        )


if __name__ == "__main__":
    main()
