"""lagvae: VAEs trained with aggressive inference networks (He et al., ICLR 2019) and honest collapse metrics."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lagvae.config import RunConfig
    from lagvae.experiments.presets import make_config
    from lagvae.training.finished import evaluate_run
    from lagvae.training.run import train_and_evaluate

# Imported on first use, so that `import lagvae.objectives` (or any small module) does not load the training
# loop and matplotlib (1.5 s before).
_HOMES = {
    "RunConfig": "lagvae.config",
    "make_config": "lagvae.experiments.presets",
    "evaluate_run": "lagvae.training.finished",
    "train_and_evaluate": "lagvae.training.run",
}
__all__ = ["RunConfig", "evaluate_run", "make_config", "train_and_evaluate"]


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'lagvae' has no attribute {name!r}")
