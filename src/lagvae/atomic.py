"""Atomic files: write to a temporary sibling, fsync, then rename over the old one, so a crash never tears one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from lagvae.errors import WriteFailed


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write `path` so that a crash leaves either the old file or the new one, never a torn one.

    A failing write (a full disk, a read-only folder) leaves the old file and no temporary, and is one
    WriteFailed line naming `path` and the reason. The rename replaces a symlink at `path`, never its target."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as err:
        raise write_failed(path, err) from None
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            # mkstemp creates 0600; give the file the permissions a plain open() would (shared run folders)
            os.fchmod(f.fileno(), 0o666 & ~_umask())
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError) and not isinstance(err, WriteFailed):
            raise write_failed(path, err) from None
        raise


def write_failed(path: Path, err: OSError) -> WriteFailed:
    """The one-line error of a file that could not be written: which file, and the OS's reason."""
    return WriteFailed(err.errno, f"cannot write {path}: {err.strerror or err}")


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_json_atomic(obj: Any, path: Path) -> None:
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))
