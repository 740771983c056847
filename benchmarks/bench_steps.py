"""Cost of one training step and of IW evaluation for any preset, method and size, on one thread.

Run: .venv/bin/python benchmarks/bench_steps.py PRESET METHOD [--size S] [--set key=value ...]
Prints ms per outer step (with the mean number of inner encoder steps) and ms per test example for the
IW bound; the per-epoch costs quoted in docs/RESULTS.md are these times the steps per epoch.
"""

from __future__ import annotations

import argparse

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
    args = parser.parse_args()
    config = make_config(args.preset, args.method, size=args.size, overrides=args.overrides)
    config.progress, config.threads = False, 1
    torch.manual_seed(0)
    trainer = Trainer(config, f"{args.tmp}/{args.preset}-{args.method}")
    rate, inner = steps_per_second(trainer, args.seconds)
    iw = iw_examples_per_second(trainer, args.iw_samples, args.seconds)
    print(
        f"{args.preset} {args.method} size={args.size} {' '.join(args.overrides)}: "
        f"{1000 / rate:.0f} ms per outer step (mean inner {inner:.1f}), "
        f"IW K={args.iw_samples}: {1000 / iw:.0f} ms per test example"
    )


if __name__ == "__main__":
    main()
