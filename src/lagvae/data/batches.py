"""Index-based minibatching shared by every modality: epoch iteration plus a random batch for the inner loop."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch import Tensor

from lagvae.draws import Rows


class IndexBatches:
    """Cuts a split's indices into batches each epoch; subclasses say how (`_cut`) and what a batch is (`_gather`)."""

    unit = "sample"  # what a row costs to decode per latent sample, in batch_widths' units

    def __init__(
        self, data: Sized, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None
    ) -> None:
        self.data = data
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator or torch.Generator().manual_seed(0)
        self._batches: list[Tensor] = []

    def _order(self) -> Tensor:
        n = len(self.data)
        return torch.randperm(n, generator=self.generator) if self.shuffle else torch.arange(n)

    def _cut(self) -> list[Tensor]:
        return list(self._order().split(self.batch_size))

    def _gather(self, idx: Tensor) -> Tensor:
        raise NotImplementedError

    def __len__(self) -> int:
        return -(-len(self.data) // self.batch_size)

    def batch_sizes(self) -> list[int]:
        """The sizes of an epoch's batches: every cut splits its order into runs of batch_size."""
        full, last = divmod(len(self.data), self.batch_size)
        return [self.batch_size] * full + ([last] if last else [])

    def batch_widths(self) -> list[int]:
        """What one row of each batch costs to decode, in `unit`s, in the order of an unshuffled epoch: 1 each,
        unless a subclass's batches differ in shape."""
        return [1] * len(self)

    def __iter__(self) -> Iterator[Tensor]:
        self._batches = self._cut()
        for idx in self._batches:
            yield self._gather(idx)

    def epoch_order(self) -> list[Tensor]:
        """The current epoch's batches as index tensors (a mid-epoch checkpoint saves them)."""
        return list(self._batches)

    def resume_epoch(self, order: list[Tensor], start: int) -> Iterator[Tensor]:
        """Continue an epoch cut as `order` from its batch `start` (the generator state must be restored too)."""
        self._batches = list(order)
        for idx in self._batches[start:]:
            yield self._gather(idx)

    def sample(self) -> Tensor:
        """A random minibatch of the current epoch (the aggressive inner loop's fresh data)."""
        if not self._batches:
            self._batches = self._cut()
        i = int(torch.randint(len(self._batches), (1,), generator=self.generator))
        return self._gather(self._batches[i])


class ShardedBatches:
    """This process's rows of every global minibatch of `source`, as (x, Rows) pairs; one process gets (x, None).

    Every rank cuts and gathers the same global batches (the same seeded generator, the same order) and keeps
    its contiguous slice (`torch.tensor_split`, so sizes differ by at most one). A text shard keeps the global
    batch's trimmed length, so shards have one shape and the sharded draws (lagvae.draws) line up.
    """

    def __init__(self, source: IndexBatches, rank: int = 0, world_size: int = 1) -> None:
        self.source = source
        self.rank = rank
        self.world_size = world_size

    def _shard(self, x: Tensor) -> tuple[Tensor, Rows | None]:
        if self.world_size == 1:
            return x, None
        bounds = shard_bounds(x.shape[0], self.world_size)
        lo, hi = bounds[self.rank], bounds[self.rank + 1]
        return x[lo:hi], Rows(lo, hi, x.shape[0])

    def __len__(self) -> int:
        return len(self.source)

    def __iter__(self) -> Iterator[tuple[Tensor, Rows | None]]:
        return (self._shard(x) for x in self.source)

    def sample(self) -> tuple[Tensor, Rows | None]:
        return self._shard(self.source.sample())

    def rows_per_batch(self) -> list[int]:
        """This process's rows of each batch: its shard of it."""
        bounds = (shard_bounds(n, self.world_size) for n in self.source.batch_sizes())
        return [b[self.rank + 1] - b[self.rank] for b in bounds]

    def rows_per_epoch(self) -> int:
        """This process's rows over one epoch: its shard of every batch."""
        return sum(self.rows_per_batch())

    def epoch_order(self) -> list[Tensor]:
        return self.source.epoch_order()

    def resume_epoch(self, order: list[Tensor], start: int) -> Iterator[tuple[Tensor, Rows | None]]:
        return (self._shard(x) for x in self.source.resume_epoch(order, start))


def shard_bounds(n: int, world_size: int) -> list[int]:
    """Row boundaries of `torch.tensor_split(range(n), world_size)`: rank r holds rows [b[r], b[r+1])."""
    base, extra = divmod(n, world_size)
    bounds = [0]
    for r in range(world_size):
        bounds.append(bounds[-1] + base + (1 if r < extra else 0))
    return bounds
