"""Every lagvae exception: failures the user can act on, which the CLI prints as one line (exit code 2).

They live here, below every other module, so that any layer can raise them; the modules that defined them
before (config, training.run_folder, training.world, training.epoch) re-export them, so old imports work.
"""

from __future__ import annotations


class LagvaeError(Exception):
    """A failure the user can act on; the CLI prints it as one line, without a traceback."""


class ConfigError(LagvaeError, ValueError):
    """A configuration or input mistake."""


class WriteFailed(LagvaeError, OSError):
    """A file could not be written (a full disk, a read-only folder); the message names the file and the reason.
    Also an OSError, so code that catches the OS's failures still does."""

    def __str__(self) -> str:
        return str(self.strerror)  # the message alone, without OSError's "[Errno N]"


class FolderInUseError(ConfigError):
    """Another live process is training or testing in this run folder."""


class GroupFailed(LagvaeError):
    """Another process of the run failed; this one stops too, leaving the run folder resumable."""


class NonFiniteLossError(LagvaeError):
    """Training produced NaN/inf; the last good checkpoint is kept on disk."""


class GradientsUnbound(LagvaeError):
    """A parameter's .grad no longer views the flat gradient buffer, so the clip and the all-reduce would miss it."""


class Preempted(LagvaeError):
    """SIGTERM arrived: a checkpoint was written at the next step boundary, and the run stopped."""
