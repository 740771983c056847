"""lagvae: VAEs trained with aggressive inference networks (He et al., ICLR 2019) and honest collapse metrics."""

from lagvae.config import RunConfig
from lagvae.experiments.presets import make_config
from lagvae.training.loop import evaluate_run, train_and_evaluate

__all__ = ["RunConfig", "evaluate_run", "make_config", "train_and_evaluate"]
