"""The run folder contract: config.json, vocab.json, metrics.jsonl, final.json and checkpoints."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from lagvae.atomic import atomic_write, save_json_atomic, write_failed
from lagvae.config import RunConfig, read_json, to_dict
from lagvae.errors import ConfigError, FolderInUseError  # FolderInUseError: also imported from here, as before

CONFIG, VOCAB, METRICS, FINAL = "config.json", "vocab.json", "metrics.jsonl", "final.json"
DATA_STATS = "data_stats.json"
BEST, LAST = "best.pt", "last.pt"
POSTERIOR_PNG, POSTERIOR_NPZ = "posterior_mean.png", "posterior_mean.npz"
ERROR = "error.txt"  # written by `compare` when a cell fails
PROVENANCE = "provenance.json"  # versions, device and data hashes at the run's start
TEST_NLL = "test_nll.csv"  # each test example's IW-NLL, for paired comparisons between runs
LOCK = ".lock"  # flock-ed by the one process writing the run; holds its pid for the refusal message
# `eval --iw-samples K` at a K other than the run's: its numbers beside final.json and test_nll.csv
EVAL_JSON, EVAL_NLL = "eval_k{k}.json", "test_nll_k{k}.csv"
RUN_FILES = (
    CONFIG, VOCAB, METRICS, FINAL, DATA_STATS, BEST, LAST, POSTERIOR_PNG, POSTERIOR_NPZ, ERROR, PROVENANCE, TEST_NLL,
)  # fmt: skip


# What every metrics.jsonl record holds and its readers (eval, report, compare) index without looking.
RECORD_KEYS = ("step", "epoch", "lr", "train_seconds")
# Files opened in place in a run folder are opened without following a symlink (POSIX O_NOFOLLOW; 0 elsewhere):
# in a folder others can write to, a planted link would make this process write the file it points to.
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


def open_in_place(path: Path, flags: int, mode: str) -> Any:
    """`path` opened with os.open `flags` (and `mode` for the file object), refusing a symlink with one line."""
    try:
        fd = os.open(path, flags | _NOFOLLOW | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError:
        if path.is_symlink():  # ELOOP, or EEXIST/ENOENT for a dangling one
            raise ConfigError(
                f"{path} is a symbolic link; lagvae does not write through links in a run folder: delete it"
            ) from None
        raise
    return os.fdopen(fd, mode)


class RunFolder:
    """One run's directory; every file a later command or user reads is named here."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def create(self) -> None:
        """Make the folder and prove it is writable, with a one-line error otherwise; drop orphan temporaries."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.unlink(missing_ok=True)  # a leftover, or a planted symlink: removed, never written through
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _NOFOLLOW, 0o666))
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"cannot write to output folder {str(self.path)!r}: {err.strerror}") from None
        self.remove_orphans()

    def file(self, name: str) -> Path:
        return self.path / name

    @contextmanager
    def lock(self) -> Iterator[None]:
        """Hold the folder for this process: a second run or test into it fails at once instead of mixing
        two runs' files. The OS drops the lock when the process dies, so a killed run never leaves it held.

        The lock is POSIX flock; where the platform has no fcntl module (Windows) the folder is not locked,
        and every command still imports and runs."""
        try:
            import fcntl  # here, not at the top: train, eval and compare must import where fcntl does not exist
        except ImportError:
            yield
            return
        made = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            handle = open_in_place(self.file(LOCK), os.O_RDWR | os.O_CREAT, "r+")
        except OSError as err:
            raise ConfigError(f"cannot write to output folder {str(self.path)!r}: {err.strerror}") from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            owner = handle.read().strip() or "unknown"
            handle.close()
            raise FolderInUseError(
                f"{self.path} is in use by another lagvae process (pid {owner}); wait for it to end or choose "
                "another output folder"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:
            if made and [p.name for p in self.path.iterdir()] == [LOCK]:  # failed before writing: leave no folder
                self.file(LOCK).unlink()
                self.path.rmdir()
            handle.close()

    def holds_run(self) -> bool:
        """A folder holds a run once it has a config.json or a checkpoint."""
        return any(self.file(name).exists() for name in (CONFIG, BEST, LAST))

    def remove_orphans(self) -> None:
        """Delete the temporaries of atomic writes that a kill interrupted (`.<name>.<random>.tmp`)."""
        for name in (*RUN_FILES, EVAL_JSON.format(k="*"), EVAL_NLL.format(k="*")):
            for orphan in self.path.glob(f".{name}.*.tmp"):
                orphan.unlink(missing_ok=True)

    def clear(self) -> None:
        """Delete the run files (and only those) so that a new run can start here."""
        for name in RUN_FILES:
            self.file(name).unlink(missing_ok=True)
        for pattern in (EVAL_JSON.format(k="*"), EVAL_NLL.format(k="*")):  # an old run's re-tests
            for path in self.path.glob(pattern):
                path.unlink(missing_ok=True)
        self.remove_orphans()

    def write_config(self, config: RunConfig) -> None:
        save_json_atomic(to_dict(config), self.file(CONFIG))

    def append_metrics(self, record: dict[str, Any]) -> None:
        try:
            with open_in_place(self.file(METRICS), os.O_WRONLY | os.O_APPEND | os.O_CREAT, "a") as f:
                f.write(json.dumps(record) + "\n")
        except OSError as err:  # a full disk: one line naming the file (resume rewrites it from last.pt)
            raise write_failed(self.file(METRICS), err) from None

    def rewrite_metrics(self, records: list[dict[str, Any]]) -> None:
        """metrics.jsonl anew from a resumed run's history: a crash after an epoch's record was appended but
        before last.pt was written would otherwise leave that record twice."""
        self.file(METRICS).unlink(missing_ok=True)
        for record in records:
            self.append_metrics(record)

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS)
        if not path.exists():
            return []
        records = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line:
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    raise ConfigError(f"{path} line {number} is not JSON; the file is damaged") from None
                if not isinstance(record, dict):
                    raise ConfigError(f"{path} line {number} is not an epoch's record (a JSON object)")
                missing = [key for key in RECORD_KEYS if key not in record]
                if missing:
                    raise ConfigError(f"{path} line {number} lacks {', '.join(missing)}; the file is damaged")
                records.append(record)
        return records

    def write_final(
        self, results: dict[str, Any], index: np.ndarray | None = None, nll: np.ndarray | None = None
    ) -> None:
        """final.json, after test_nll.csv when each test example's IW-NLL (`nll`, at its position `index` in the
        test split) is given: final.json marks a finished run, so it is written last."""
        if index is not None and nll is not None and len(nll):
            self._write_test_nll(index, nll)
        save_json_atomic(results, self.file(FINAL))

    def write_eval(self, results: dict[str, Any], index: np.ndarray, nll: np.ndarray, k: int) -> None:
        """A re-test at K other than the run's, beside final.json and test_nll.csv: those stay the run's."""
        if len(nll):
            self._write_test_nll(index, nll, EVAL_NLL.format(k=k))
        save_json_atomic(results, self.file(EVAL_JSON.format(k=k)))

    def _write_test_nll(self, index: np.ndarray, nll: np.ndarray, name: str = TEST_NLL) -> None:
        order = np.argsort(index, kind="stable")
        lines = ["index,nll", *(f"{int(i)},{float(v):.6f}" for i, v in zip(index[order], nll[order], strict=True))]
        atomic_write(self.file(name), lambda f: f.write(("\n".join(lines) + "\n").encode()))

    def read_test_table(self) -> np.ndarray | None:
        """test_nll.csv as rows of (index, nll), None when absent; a file that does not parse is one line."""
        path = self.file(TEST_NLL)
        if not path.exists():
            return None
        try:
            table = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
        except (OSError, ValueError) as err:
            reason = str(err).strip().splitlines()[0][:120] if str(err).strip() else type(err).__name__
            raise ConfigError(f"cannot read {path}: {reason}; it is damaged (expected index,nll lines)") from None
        if table.shape[1] != 2 or not len(table):
            raise ConfigError(f"cannot read {path}: expected index,nll lines, found {table.shape[1]} columns")
        return table

    def read_json(self, name: str) -> dict[str, Any] | None:
        """A JSON run file as a dict, None when absent; a damaged one is a one-line error naming it."""
        path = self.file(name)
        return read_json(path, dict, f"a lagvae {name}") if path.exists() else None
