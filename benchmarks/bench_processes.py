"""Outer steps/s of one run in 1 and in 2 processes (torchrun, gloo) on this CPU, at the same global batch.

Run: .venv/bin/python benchmarks/bench_processes.py [PRESET] [--method vae] [--size S] [--steps 40]
It launches `torchrun --standalone --nproc_per_node=N benchmarks/bench_processes.py --worker ...` three ways:
1 process on 1 thread, 1 process on 2 threads, and 2 processes on 1 thread each (the same two cores as the
second). Each times the same outer steps on the same global batches (the random streams do not depend on
the number of processes) and reports steps/s and its peak resident memory per process.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

WARMUP = 3


def worker(args: argparse.Namespace) -> None:
    from lagvae.experiments.presets import make_config
    from lagvae.training.loop import Trainer
    from lagvae.training.strategies import on_device
    from lagvae.training.world import leave

    overrides = ["eval.posterior_points=0", *args.overrides]
    config = make_config(args.preset, args.method, size=args.size, train_limit=args.train_limit, overrides=overrides)
    config.progress, config.threads = False, args.threads
    trainer = Trainer(config, f"{args.tmp}/{args.preset}-{args.method}")
    batches = iter(trainer.train_batches)
    inner = 0
    for i in range(WARMUP + args.steps):
        if i == WARMUP:
            trainer.world.barrier()
            start = time.perf_counter()
        x, rows = on_device(trainer.device, next(batches))
        inner += trainer.strategy.step(x, 1.0, rows).inner_steps if i >= WARMUP else 0
    trainer.world.barrier()
    seconds = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if trainer.world.is_main:
        print(json.dumps({"steps_per_s": args.steps / seconds, "inner": inner / args.steps, "peak_mb": peak_mb}))
    leave()


def launch(args: argparse.Namespace, processes: int, threads: int) -> dict[str, float]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command += [__file__, args.preset, "--worker", "--threads", str(threads), "--method", args.method]
    command += ["--steps", str(args.steps), "--train-limit", str(args.train_limit), "--tmp", args.tmp]
    command += (["--size", args.size] if args.size else []) + [f"--set={o}" for o in args.overrides]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("preset", nargs="?", default="synthetic")
    parser.add_argument("--method", default="vae")
    parser.add_argument("--size")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--train-limit", type=int, default=2000)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--tmp", default="/tmp/lagvae-bench-processes")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    Path(args.tmp).mkdir(parents=True, exist_ok=True)
    print(f"{args.preset} {args.method} size={args.size} torch {torch.__version__}, {args.steps} outer steps")
    one = launch(args, 1, 1)
    rows = [("1 process, 1 thread", one), ("1 process, 2 threads", launch(args, 1, 2))]
    rows.append(("2 processes, 1 thread each", launch(args, 2, 1)))
    print("| layout | outer steps/s | vs 1 process, 1 thread | mean inner steps | peak RSS per process |")
    print("|---|---|---|---|---|")
    for name, r in rows:
        ratio = r["steps_per_s"] / one["steps_per_s"]
        print(f"| {name} | {r['steps_per_s']:.2f} | {ratio:.2f}x | {r['inner']:.1f} | {r['peak_mb']:.0f} MB |")


if __name__ == "__main__":
    main()
