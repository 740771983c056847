"""The README's main job: vae and aggressive on the synthetic preset, side by side."""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from lagvae.experiments.presets import make_config
from lagvae.training.loop import train_and_evaluate

DEMO_METHODS = ("vae", "aggressive")
DEMO_OVERRIDES: list[str] = []  # extra key=value overrides (tests shrink the data with these)


def _run(method: str, out: Path, epochs: int, seed: int, iw_samples: int, position: int) -> dict[str, Any]:
    overrides = [f"eval.iw_samples={iw_samples}", *DEMO_OVERRIDES]
    config = make_config("synthetic", method, epochs=epochs, seed=seed, overrides=overrides)
    config.threads = 1  # two runs share the cores; one thread each avoids oversubscription
    return train_and_evaluate(config, out / method, bar_position=position)


def run_demo(out: Path, epochs: int = 5, seed: int = 783435, iw_samples: int = 100) -> dict[str, dict[str, Any]]:
    """Train each of DEMO_METHODS into out/<method>, in parallel processes when there are cores for it."""
    workers = min(len(DEMO_METHODS), os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {m: pool.submit(_run, m, out, epochs, seed, iw_samples, i) for i, m in enumerate(DEMO_METHODS)}
        return {m: f.result() for m, f in futures.items()}
