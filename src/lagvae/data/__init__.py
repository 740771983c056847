"""Datasets by name: `build_data(config)` returns the train/val/test splits every run consumes."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from lagvae.config import ConfigError, DataConfig
from lagvae.data.synthetic import generate_synthetic
from lagvae.data.text import BOS_ID, EOS_ID, SPECIALS, TextSet, Vocab


@dataclass
class Splits:
    """The three splits of one corpus and its vocabulary."""

    train: TextSet
    val: TextSet
    test: TextSet
    vocab: Vocab


def synthetic_splits(config: DataConfig) -> Splits:
    """The paper's synthetic corpus: train first, then validation, then test, in generation order."""
    n = config.n_train + config.n_val + config.n_test
    tokens, _ = generate_synthetic(n, config.seq_len, config.vocab_size, config.seed, config.latent_dim)
    vocab = Vocab([str(i) for i in range(config.vocab_size)])
    ids = tokens + len(SPECIALS)
    bos = torch.full((n, 1), BOS_ID)
    eos = torch.full((n, 1), EOS_ID)
    full = TextSet(torch.cat([bos, ids, eos], dim=1), torch.full((n,), config.seq_len + 2))
    a, b = config.n_train, config.n_train + config.n_val
    cut = lambda lo, hi: TextSet(full.tokens[lo:hi], full.lengths[lo:hi])  # noqa: E731
    return Splits(cut(0, a), cut(a, b), cut(b, n), vocab)


LOADERS = {"synthetic": synthetic_splits}


def build_data(config: DataConfig) -> Splits:
    """Load the corpus `config.name` and apply `train_limit`."""
    if config.name not in LOADERS:
        raise ConfigError(f"unknown dataset {config.name!r}; choose from {', '.join(sorted(LOADERS))}")
    splits = LOADERS[config.name](config)
    if config.train_limit is not None:
        if config.train_limit <= 0:
            raise ConfigError("train_limit must be positive")
        splits.train = splits.train.head(config.train_limit)
    return splits
