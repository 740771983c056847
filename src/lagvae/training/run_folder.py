"""The run folder contract: config.json, vocab.json, metrics.jsonl, final.json and checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lagvae.config import ConfigError, RunConfig, save_json
from lagvae.training.checkpoint import save_json_atomic

CONFIG, VOCAB, METRICS, FINAL = "config.json", "vocab.json", "metrics.jsonl", "final.json"
DATA_STATS = "data_stats.json"
BEST, LAST = "best.pt", "last.pt"
POSTERIOR_PNG, POSTERIOR_NPZ = "posterior_mean.png", "posterior_mean.npz"


class RunFolder:
    """One run's directory; every file a later command or user reads is named here."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def create(self) -> None:
        """Make the folder and prove it is writable, with a one-line error otherwise."""
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            probe = self.path / ".write-test"
            probe.write_text("")
            probe.unlink()
        except OSError as err:
            raise ConfigError(f"cannot write to output folder {str(self.path)!r}: {err.strerror}") from None

    def file(self, name: str) -> Path:
        return self.path / name

    def write_config(self, config: RunConfig) -> None:
        save_json(config, self.file(CONFIG))

    def append_metrics(self, record: dict[str, Any]) -> None:
        with self.file(METRICS).open("a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        path = self.file(METRICS)
        return [json.loads(line) for line in path.read_text().splitlines() if line] if path.exists() else []

    def write_final(self, results: dict[str, Any]) -> None:
        save_json_atomic(results, self.file(FINAL))
