"""The kernel-level measurements behind the speed decisions of docs/DESIGN.md ("Speed"), on one thread.

Run: .venv/bin/python benchmarks/bench_kernels.py [--repeats 20]
- dropout: F.dropout (bernoulli_) against lagvae's torch.rand mask, on a synthetic-preset activation;
- output layer + cross-entropy, forward and backward: F.cross_entropy(h @ W.T) against linear_cross_entropy,
  at the synthetic size and at a PTB batch (770 tokens, H = 128, 10k words);
- the 10k-word output-layer matmul in float32 against bfloat16 (what a bf16 option would gain);
- IW chunk sizes: ms per test sentence at K = 500 for several samples-per-chunk, synthetic and PTB-cpu models.
Each line prints the two times and their ratio; the timings are best-of-`repeats` means of short loops.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

import lagvae.metrics as metrics
from lagvae.config import ModelConfig
from lagvae.models import build_model
from lagvae.models.linear_ce import dropout, linear_cross_entropy


def ms(fn: Callable[[], object], repeats: int) -> float:
    fn()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            fn()
        best = min(best, (time.perf_counter() - start) / repeats * 1000)
    return best


def compare(label: str, a: tuple[str, Callable[[], object]], b: tuple[str, Callable[[], object]], repeats: int) -> None:
    ta, tb = ms(a[1], repeats), ms(b[1], repeats)
    print(f"{label}: {a[0]} {ta:.3f} ms, {b[0]} {tb:.3f} ms, ratio {ta / tb:.2f}")


def loss_pair(n: int, hidden: int, vocab: int) -> tuple[Callable[[], None], Callable[[], None]]:
    h = torch.randn(n, hidden, requires_grad=True)
    w = (0.1 * torch.randn(vocab, hidden)).requires_grad_()
    y = torch.randint(0, vocab, (n,))

    def plain() -> None:
        F.cross_entropy(h @ w.T, y, reduction="none").sum().backward()

    def fused() -> None:
        linear_cross_entropy(h, w, y, -1).sum().backward()

    return plain, fused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    r = args.repeats
    print(f"torch {torch.__version__}, 1 thread")

    act = torch.randn(16, 11, 50)
    compare(
        "dropout 16x11x50",
        ("F.dropout", lambda: F.dropout(act, 0.5, True)),
        ("rand mask", lambda: dropout(act, 0.5, True)),
        r,
    )

    for label, (n, hidden, vocab) in {
        "synthetic 176x50x1k": (176, 50, 1000),
        "PTB 770x128x10k": (770, 128, 10_000),
    }.items():
        plain, fused = loss_pair(n, hidden, vocab)
        compare(f"output layer + CE fwd/bwd, {label}", ("F.cross_entropy", plain), ("fused", fused), max(3, r // 4))

    h, w = torch.randn(770, 128), torch.randn(10_000, 128)
    hb, wb = h.bfloat16(), w.bfloat16()
    flop = 2 * 770 * 128 * 10_000
    t32, t16 = ms(lambda: h @ w.T, r), ms(lambda: hb @ wb.T, r)
    print(f"output matmul 770x128x10k: float32 {flop / t32 / 1e6:.0f} GFLOP/s, bfloat16 {flop / t16 / 1e6:.0f} GFLOP/s")

    sizes = {
        "synthetic": (ModelConfig(50, 50, 50, 2), 1004, 12),
        "PTB --size cpu": (ModelConfig(64, 128, 128, 32), 10_004, 15),
    }
    original = metrics.samples_per_chunk
    try:
        for label, (config, vocab, length) in sizes.items():
            model = build_model(config, vocab_size=vocab).eval()
            x = torch.randint(4, vocab, (16, length))
            for chunk in (5, 25, 50, 100, 250):
                metrics.samples_per_chunk = lambda *_, c=chunk: c  # type: ignore[assignment]
                with torch.no_grad():
                    t = ms(lambda m=model, x=x: metrics.iw_log_likelihood(m, x, 500), 1)
                print(
                    f"IW K=500, {label} model, 16 x {length - 1} tokens, {chunk} samples a chunk: "
                    f"{t / 16:.1f} ms/sentence"
                )
    finally:
        metrics.samples_per_chunk = original


if __name__ == "__main__":
    main()
