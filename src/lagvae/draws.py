"""Random draws that do not depend on the number of processes: draw for the global batch, keep this shard's rows.

Every rank of a data-parallel run seeds the same generators and makes the same draws, so its random streams
stay equal to a one-process run's. Inside `sharded(rows)`, a draw whose first dimension is this rank's rows
draws the global batch's tensor and returns the rows lo:hi; outside it (rows None, one process), draws are
plain `torch.randn`/`torch.rand`, unchanged from a run that never heard of sharding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Rows:
    """This process's shard: rows lo:hi of a global batch of `total` rows."""

    lo: int
    hi: int
    total: int

    @property
    def count(self) -> int:
        return self.hi - self.lo


_rows: ContextVar[Rows | None] = ContextVar("lagvae_rows", default=None)


@contextmanager
def sharded(rows: Rows | None) -> Iterator[None]:
    """Inside, draws with `rows.count` leading rows are the global draw's rows lo:hi (None: plain draws)."""
    token = _rows.set(rows)
    try:
        yield
    finally:
        _rows.reset(token)


def current_rows() -> Rows | None:
    return _rows.get()


def _global_shape(shape: tuple[int, ...]) -> tuple[tuple[int, ...], Rows | None]:
    rows = _rows.get()
    if rows is None:
        return shape, None
    if shape[0] != rows.count:
        raise RuntimeError(f"a sharded draw of {shape[0]} rows inside a shard of {rows.count}")
    return (rows.total, *shape[1:]), rows


def randn(shape: tuple[int, ...], like: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """eps ~ N(0, I) of `shape`, on like's device and dtype; a given generator draws for this process alone."""
    if generator is not None:
        return torch.randn(shape, device=like.device, dtype=like.dtype, generator=generator)
    full, rows = _global_shape(shape)
    eps = torch.randn(full, device=like.device, dtype=like.dtype)
    return eps if rows is None else eps[rows.lo : rows.hi]


def rand_like(x: Tensor) -> Tensor:
    """u ~ U(0, 1) shaped as x, filled in x's memory order as torch.rand_like fills it (an LSTM's batch-first
    output is time-major in memory), so one process draws exactly what torch.rand_like would."""
    full, rows = _global_shape(tuple(x.shape))
    order = _memory_order(x)
    u = torch.rand([full[d] for d in order], device=x.device, dtype=x.dtype).permute(_inverse(order))
    return u if rows is None else u[rows.lo : rows.hi]


def _memory_order(x: Tensor) -> list[int]:
    """x's dimensions from outermost to innermost in memory when x is dense (as torch.*_like keeps it), else
    the logical order (torch.*_like then allocates contiguously)."""
    # A size-1 dimension's stride ties with the dimension just outside it (a 1-row shard of a time-major LSTM
    # output has batch and time strides equal): sort it inside, where the global batch's rows lie in memory.
    order = sorted(range(x.dim()), key=lambda d: (-x.stride(d), x.shape[d] == 1))
    expected = 1
    for d in reversed(order):
        if x.shape[d] == 1:
            continue
        if x.stride(d) != expected:
            return list(range(x.dim()))
        expected *= x.shape[d]
    return order


def _inverse(order: list[int]) -> list[int]:
    inverse = [0] * len(order)
    for position, d in enumerate(order):
        inverse[d] = position
    return inverse
