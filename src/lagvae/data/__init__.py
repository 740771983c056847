"""Datasets by name: `build_data(config)` returns the train/val/test splits every run consumes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor

from lagvae.config import ConfigError, DataConfig
from lagvae.data.corpus import default_data_root, encode_corpus, ptb_lines, user_corpus_lines, yelp_lines
from lagvae.data.images import ImageSplits, fashion_mnist_images, omniglot_images, to_sets, user_images
from lagvae.data.synthetic import generate_synthetic
from lagvae.data.text import BOS_ID, EOS_ID, SPECIALS, TextSet, Vocab
from lagvae.data.yahoo import yahoo_lines


class BatchSource(Protocol):
    """Minibatches of one split: iterate for an epoch; `sample()` gives a random one (aggressive inner loop)."""

    def __iter__(self) -> Iterator[Tensor]: ...
    def __len__(self) -> int: ...
    def sample(self) -> Tensor: ...
    def epoch_order(self) -> list[Tensor]: ...
    def resume_epoch(self, order: list[Tensor], start: int) -> Iterator[Tensor]: ...


class Dataset(Protocol):
    """One split of any modality; the training loop sees only this."""

    def __len__(self) -> int: ...
    def head(self, n: int) -> Dataset: ...
    def first(self, n: int) -> Tensor: ...
    def batches(self, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> BatchSource: ...


@dataclass
class Splits:
    """The three splits of one corpus, and its vocabulary when it is text."""

    train: Dataset
    val: Dataset
    test: Dataset
    vocab: Vocab | None
    stats: dict[str, Any] = field(default_factory=dict)  # what loading skipped, truncated or dropped; image shape


def synthetic_splits(config: DataConfig, vocab: Vocab | None = None) -> Splits:
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
    return Splits(cut(0, a), cut(a, b), cut(b, n), vocab, {"longest": {"train": config.seq_len}})


def _corpus_splits(raw: dict[str, list[str]], config: DataConfig, vocab: Vocab | None) -> Splits:
    sets, vocab, stats = encode_corpus(raw, config, vocab)
    return Splits(sets["train"], sets["valid"], sets["test"], vocab, asdict(stats))


def ptb_splits(config: DataConfig, vocab: Vocab | None = None) -> Splits:
    return _corpus_splits(ptb_lines(), config, vocab)


def yelp_splits(config: DataConfig, vocab: Vocab | None = None) -> Splits:
    root = Path(config.path) if config.path else default_data_root()
    if root is None or not (root / "yelp_sentences").is_dir():
        where = f"{root}/yelp_sentences" if root else "../shared/data/yelp_sentences"
        raise ConfigError(f"Yelp sentences not found at {where}; set data.path=FOLDER holding yelp_sentences/")
    return _corpus_splits(yelp_lines(root, config.seed), config, vocab)


def yahoo_splits(config: DataConfig, vocab: Vocab | None = None) -> Splits:
    """The paper's Yahoo documents, reduced: 9,000 / 1,000 cut from its validation file, its test file whole."""
    root = Path(config.path) if config.path else default_data_root()
    if root is None or not (root / "yahoo").is_dir():
        where = f"{root}/yahoo" if root else "../shared/data/yahoo"
        raise ConfigError(f"Yahoo documents not found at {where}; set data.path=FOLDER holding yahoo/")
    return _corpus_splits(yahoo_lines(root), config, vocab)


def text_splits(config: DataConfig, vocab: Vocab | None = None) -> Splits:
    return _corpus_splits(user_corpus_lines(config), config, vocab)


def _image_splits(read: Callable[[DataConfig], ImageSplits]) -> Callable[[DataConfig, Vocab | None], Splits]:
    """An image loader as a split builder: grey-level arrays -> dynamically binarised train, fixed val/test."""

    def load(config: DataConfig, vocab: Vocab | None = None) -> Splits:
        raw = read(config)
        train, val, test = to_sets(raw, config.seed)
        return Splits(train, val, test, None, raw.stats)

    return load


LOADERS = {
    "synthetic": synthetic_splits,
    "ptb": ptb_splits,
    "yelp": yelp_splits,
    "yahoo": yahoo_splits,
    "text": text_splits,
    "omniglot": _image_splits(omniglot_images),
    "fashion-mnist": _image_splits(fashion_mnist_images),
    "images": _image_splits(user_images),
}


def build_data(config: DataConfig, vocab: Vocab | None = None) -> Splits:
    """Load the corpus `config.name` (reusing `vocab` when given, as evaluation does) and apply `train_limit`."""
    if config.name not in LOADERS:
        raise ConfigError(f"unknown dataset {config.name!r}; choose from {', '.join(sorted(LOADERS))}")
    splits = LOADERS[config.name](config, vocab)
    if config.train_limit is not None:
        if config.train_limit <= 0:
            raise ConfigError("train_limit must be positive")
        splits.train = splits.train.head(config.train_limit)
    if config.eval_limit is not None:
        if config.eval_limit <= 0:
            raise ConfigError("eval_limit must be positive")
        splits.val, splits.test = splits.val.head(config.eval_limit), splits.test.head(config.eval_limit)
    return splits


def describe(splits: Splits) -> list[str]:
    """The corpus summary printed when a run starts: sizes, lengths, and (text) vocabulary coverage and losses."""
    lines = []
    if splits.vocab is not None:
        lines.append(f"vocabulary: {len(splits.vocab):,} words (with <pad>, <s>, </s>, <unk>)")
    stats = splits.stats
    for name in ("train", "val", "test"):
        split = getattr(splits, name)
        if isinstance(split, TextSet):
            lengths = (split.lengths - 2).float()  # without <s> and </s>
            q = torch.quantile(lengths, torch.tensor([0.5, 0.95])).tolist()
            words = int(lengths.sum())
            key = "valid" if name == "val" else name
            count = {k: stats.get(k, {}).get(key, 0) for k in ("unknown_tokens", "truncated", "dropped", "empty_lines")}
            coverage = 100.0 * (1 - count["unknown_tokens"] / max(words, 1))
            lines.append(
                f"{name}: {len(split):,} documents, length median {q[0]:.0f}, 95% {q[1]:.0f}, max "
                f"{int(lengths.max())}; {coverage:.1f}% of {words:,} words known ({count['unknown_tokens']:,} <unk>); "
                f"{count['truncated']:,} truncated, {count['dropped']:,} dropped, "
                f"{count['empty_lines']:,} empty lines skipped"
            )
        else:
            lines.append(f"{name}: {len(split):,} examples")
    return lines
