"""The paper's Yahoo Answers documents (../shared/data/yahoo): hash check, `_UNK` mapping and the reduced split.

Only the paper's validation and test files exist offline (the 100k training file does not), so the `yahoo`
preset cuts a reduced setting from them: train on `yahoo.valid.txt` less a held-out part, validate on that
part, test on `yahoo.test.txt` (the paper's own test documents).

Both files hold 10 topics of 1,000 documents each, one topic after another. Read in file order, any cut
would validate on one topic and `data.eval_limit=N` would test on the first topics only; so each file is
read topic-interleaved (document k is the file's line (k mod 10) * 1000 + k div 10). The held-out part is
the last HELD_OUT documents in that order (the last 100 of each topic), and the first N of either split
hold N / 10 documents of each topic.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

from lagvae.config import ConfigError
from lagvae.data.text import UNK

# sha256 of each file, copied from ../shared/data/README.md (tests/test_yahoo.py checks they still agree)
YAHOO_FILES = {
    "yahoo.valid.txt": "6129c0622bd0a12b092814e7b660f70c20481788f42860d980431c0a614006ef",
    "yahoo.test.txt": "54dd2d2de3843cc701faebf793ab72253ff2286b00879d25790ad087a74917a1",
}
TOPICS = 10  # consecutive equal blocks of each file (Yang et al.'s 10 Yahoo Answers categories)
HELD_OUT = 1_000  # validation documents cut from yahoo.valid.txt: 100 of each topic
FILE_UNK = "_UNK"  # the files' own unknown word


def read_checked(path: Path, expected: str) -> list[str]:
    """`path`'s lines, after checking the very bytes read against `expected` (hashed on every load, never cached).

    A mismatch is a one-line ConfigError naming the file.
    """
    if not path.is_file():
        raise ConfigError(f"Yahoo file not found: {path} (see ../shared/data/README.md)")
    raw = path.read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != expected:
        raise ConfigError(
            f"{path} has sha256 {digest[:12]}..., not the {expected[:12]}... that ../shared/data/README.md gives; "
            "restore the original file"
        )
    return raw.decode("utf-8").splitlines()


def map_unk(line: str) -> str:
    """A document with the files' `_UNK` tokens as lagvae's `<unk>` (so it is the unknown word, not a word)."""
    return " ".join(UNK if token == FILE_UNK else token for token in line.split())


def interleave(lines: Sequence[str], blocks: int = TOPICS) -> list[str]:
    """Round-robin over `blocks` equal consecutive blocks: block 0's first line, block 1's first, ..."""
    if len(lines) % blocks:
        raise ValueError(f"{len(lines)} lines do not cut into {blocks} equal blocks")
    size = len(lines) // blocks
    return [lines[b * size + j] for j in range(size) for b in range(blocks)]


def yahoo_split(valid: Sequence[str], test: Sequence[str], held_out: int = HELD_OUT) -> dict[str, list[str]]:
    """The reduced setting from the two files' lines: train/valid from `valid` (the last `held_out`
    interleaved documents validate), test is all of `test`; every split interleaved and `_UNK`-mapped."""
    if not 0 < held_out < len(valid):
        raise ValueError(f"held_out={held_out} must leave training documents of {len(valid)}")
    docs = [map_unk(line) for line in interleave(valid)]
    return {"train": docs[:-held_out], "valid": docs[-held_out:], "test": [map_unk(x) for x in interleave(test)]}


def yahoo_lines(root: Path) -> dict[str, list[str]]:
    """The reduced Yahoo split from `root`/yahoo, after checking both files against their sha256."""
    valid, test = (read_checked(root / "yahoo" / name, digest) for name, digest in YAHOO_FILES.items())
    return yahoo_split(valid, test)
