"""Text as tensors: the vocabulary, a padded sentence set, and length-bucketed minibatches."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from lagvae.atomic import save_json_atomic
from lagvae.config import ConfigError, read_json
from lagvae.data.batches import IndexBatches

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIALS = (PAD, BOS, EOS, UNK)
PAD_ID, BOS_ID, EOS_ID, UNK_ID = range(4)


def strip_ids(ids: Sequence[int]) -> list[int]:
    """The content of an id sequence: up to the first </s>, without <s> and <pad>."""
    out = []
    for i in ids:
        if i == EOS_ID:
            break
        if i not in (BOS_ID, PAD_ID):
            out.append(i)
    return out


class Vocab:
    """Token <-> id map; ids 0-3 are always <pad>, <s>, </s>, <unk>."""

    def __init__(self, words: Sequence[str]) -> None:
        self.itos = list(SPECIALS) + [w for w in words if w not in SPECIALS]
        self.stoi = {w: i for i, w in enumerate(self.itos)}

    def __len__(self) -> int:
        return len(self.itos)

    def encode(self, tokens: Sequence[str]) -> list[int]:
        """<s> tokens </s> as ids, unknown words mapped to <unk>."""
        return [BOS_ID, *(self.stoi.get(t, UNK_ID) for t in tokens), EOS_ID]

    def decode(self, ids: Sequence[int]) -> list[str]:
        """Ids back to words, dropping <s>/<pad> and stopping at </s>."""
        return [self.itos[i] for i in strip_ids(ids)]

    def save(self, path: Path) -> None:
        save_json_atomic(self.itos[len(SPECIALS) :], path)

    @classmethod
    def load(cls, path: Path) -> Vocab:
        words = read_json(path, list, "a vocabulary")
        if not all(isinstance(w, str) for w in words):
            raise ConfigError(f"cannot read vocabulary {path}: not a JSON list of words")
        return cls(words)


@dataclass
class TextSet:
    """Sentences as one right-padded id tensor [N, T] (with <s>, </s>) and their lengths [N]."""

    tokens: Tensor
    lengths: Tensor

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @classmethod
    def from_ids(cls, sentences: Sequence[Sequence[int]]) -> TextSet:
        if not sentences:
            raise ValueError("empty text split")
        lengths = torch.tensor([len(s) for s in sentences])
        tokens = torch.full((len(sentences), int(lengths.max())), PAD_ID, dtype=torch.long)
        for i, s in enumerate(sentences):
            tokens[i, : len(s)] = torch.as_tensor(s)
        return cls(tokens, lengths)

    def head(self, n: int) -> TextSet:
        return TextSet(self.tokens[:n], self.lengths[:n])

    def first(self, n: int) -> Tensor:
        """The first n sentences as one padded batch tensor."""
        part = self.head(n)
        return part.tokens[:, : int(part.lengths.max())]

    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> TextBatches:
        return TextBatches(self, batch_size, shuffle=shuffle, generator=generator)


class TextBatches(IndexBatches):
    """Minibatches of similar-length sentences, trimmed to their longest member.

    Each epoch shuffles, then stably sorts by length and cuts consecutive runs, so most batches hold one
    length and padding (never counted in a loss; decoders mask <pad>) stays rare.
    """

    data: TextSet
    unit = "token"  # a row of a batch trimmed to length T costs T decoder positions per sample

    def batch_widths(self) -> list[int]:
        """Each batch's trimmed length, in an unshuffled epoch's order (an evaluation's: shortest first)."""
        if self.shuffle:
            raise ValueError("batch widths are known in advance only for unshuffled (evaluation) batches")
        return [int(self.data.lengths[idx].max()) for idx in self._cut()]

    def _cut(self) -> list[Tensor]:
        order = self._order()
        order = order[torch.sort(self.data.lengths[order], stable=True).indices]
        batches = list(order.split(self.batch_size))
        if self.shuffle:
            perm = torch.randperm(len(batches), generator=self.generator).tolist()
            batches = [batches[i] for i in perm]
        return batches

    def _gather(self, idx: Tensor) -> Tensor:
        return self.data.tokens[idx, : int(self.data.lengths[idx].max())]
