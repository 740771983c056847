"""Peak memory of the IW test at the paper's text size: what eval.max_memory_mb bounds.

Run: .venv/bin/python benchmarks/bench_memory.py [--budget-mb 512] [--k 20]
Builds the `--size paper` model (512/1024 LSTMs, z = 32) over a 20,000-word vocabulary and evaluates the IW
bound on one batch of 32 sentences of 40 tokens, printing the samples decoded per chunk and the rise in peak
RSS over the model alone. Chunks never exceed the budget, so K only sets how many chunks run: the peak at
K = 20 is the peak at K = 500, at a twenty-fifth of the time.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from lagvae.experiments.presets import SIZES
from lagvae.metrics import iw_log_likelihood, sample_bytes, samples_per_chunk
from lagvae.models import build_model


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget-mb", type=float, default=512)
    parser.add_argument("--k", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    model = build_model(SIZES["paper"][0], vocab_size=20_000).eval()
    x = torch.randint(4, 20_000, (32, 40))
    with torch.no_grad():
        model.encode(x)  # the encoder pass, so the baseline includes what it allocates
    base = peak_mb()
    chunk = samples_per_chunk(model, x, args.k, args.budget_mb)
    start = time.perf_counter()
    with torch.no_grad():
        iw_log_likelihood(model, x, args.k, args.budget_mb)
    print(
        f"--size paper, 20k words, batch 32 x 40 tokens, K = {args.k}, budget {args.budget_mb:.0f} MB: "
        f"{chunk} samples per chunk (stated {sample_bytes(model, x) / 2**20:.1f} MB each), "
        f"peak RSS +{peak_mb() - base:.0f} MB over the model, {time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
