"""A finished run folder: its test numbers again, its model for generation, what its data looked like."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lagvae.config import ConfigError, RunConfig, load_json
from lagvae.data.text import Vocab
from lagvae.models import VAE, build_model
from lagvae.training import checkpoint
from lagvae.training.build import build_strategy
from lagvae.training.loop import Trainer
from lagvae.training.resume import TrainState
from lagvae.training.run_folder import (
    BEST,
    CONFIG,
    DATA_STATS,
    VOCAB,
    RunFolder,
)
from lagvae.training.runtime import resolve_device

log = logging.getLogger("lagvae")


def _saved_vocab(folder: RunFolder) -> Vocab | None:
    return Vocab.load(folder.file(VOCAB)) if folder.file(VOCAB).exists() else None


def saved_image_shape(run_dir: Path | str) -> tuple[int, int] | None:
    """The (height, width) an image run was trained on (from data_stats.json), None for text runs."""
    shape = (RunFolder(run_dir).read_json(DATA_STATS) or {}).get("image_shape")
    return (int(shape[0]), int(shape[1])) if shape else None


def saved_longest_document(run_dir: Path | str) -> int | None:
    """Tokens of the longest training document of a text run (from data_stats.json), None when unknown."""
    stats = RunFolder(run_dir).read_json(DATA_STATS) or {}
    longest = stats.get("longest", {}).get("train")
    return int(longest) if longest else None


def _open_run(run_dir: Path | str) -> tuple[RunFolder, RunConfig]:
    folder = RunFolder(run_dir)
    if not folder.file(BEST).exists():
        raise ConfigError(f"{folder.path} has no {BEST}; is it a lagvae run folder?")
    return folder, load_json(folder.file(CONFIG))


def evaluate_run(run_dir: Path | str, iw_samples: int | None = None) -> dict[str, Any]:
    """Recompute final.json of a finished run from its best checkpoint."""
    folder, config = _open_run(run_dir)
    if iw_samples is not None:
        config.eval.iw_samples = iw_samples
    trainer = Trainer(config, run_dir, vocab=_saved_vocab(folder))
    trainer.check_data()
    history = folder.read_metrics()
    trainer.state = TrainState(
        train_seconds=history[-1]["train_seconds"] if history else 0.0,
        history=history,
        best_epoch=int(checkpoint.load(folder.file(BEST))["epoch"]),
    )
    return trainer.test()


def load_trained(run_dir: Path | str, device: str = "auto") -> tuple[RunConfig, VAE, Vocab | None]:
    """The best-validation model of a run folder, ready for generation (on the GPU when there is one)."""
    folder, config = _open_run(run_dir)
    vocab = _saved_vocab(folder)
    target = resolve_device(device)
    model = build_model(config.model, len(vocab) if vocab is not None else 0).to(target)
    model.load_state_dict(checkpoint.load(folder.file(BEST), target)["model"])
    if config.train.strategy == "savae":
        build_strategy(config, model, sample_batch=lambda: torch.empty(0))  # sets the SVI refinement hook
    return config, model.eval(), vocab
