"""Index-based minibatching shared by every modality: epoch iteration plus a random batch for the inner loop."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch import Tensor


class IndexBatches:
    """Cuts a split's indices into batches each epoch; subclasses say how (`_cut`) and what a batch is (`_gather`)."""

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
