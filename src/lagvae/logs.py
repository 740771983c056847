"""Where the `lagvae` logger's lines go: above any tqdm bars, on stderr, with a prefix saying whose they are."""

from __future__ import annotations

import logging
import sys

LOGGER = "lagvae"


class TqdmHandler(logging.Handler):
    """Log lines through tqdm.write, so they print above the progress bars instead of through them."""

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def setup_logging(level: int, prefix: str = "lagvae: ") -> None:
    """Send the `lagvae` logger's lines at `level` and above to stderr, each after `prefix`.

    Called again (a grid worker moving to its next cell), it changes the prefix and level of the one handler."""
    logger = logging.getLogger(LOGGER)
    handler = next((h for h in logger.handlers if isinstance(h, TqdmHandler)), None)
    if handler is None:
        handler = TqdmHandler()
        logger.addHandler(handler)
        logger.propagate = False
    handler.setFormatter(logging.Formatter(f"{prefix.replace('%', '%%')}%(message)s"))
    logger.setLevel(level)
