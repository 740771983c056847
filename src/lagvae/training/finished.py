"""A finished run folder: its test numbers again, its model for generation, what its data looked like."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from lagvae.config import RunConfig, load_json
from lagvae.data import build_data
from lagvae.data.text import Vocab
from lagvae.distributed import SINGLE
from lagvae.errors import ConfigError
from lagvae.models import VAE, build_model
from lagvae.training import checkpoint
from lagvae.training.build import build_posterior, validate
from lagvae.training.evaluation import final_results, test_metrics
from lagvae.training.provenance import check_same_data, data_fingerprints, run_provenance
from lagvae.training.resume import TrainState
from lagvae.training.run_folder import BEST, CONFIG, DATA_STATS, FINAL, LAST, PROVENANCE, VOCAB, RunFolder
from lagvae.training.runtime import resolve_device, setup_runtime

log = logging.getLogger("lagvae")


def _saved_vocab(folder: RunFolder, config: RunConfig) -> Vocab | None:
    """vocab.json of a text run (None for an image run); a text run without it cannot map its word ids."""
    if folder.file(VOCAB).exists():
        return Vocab.load(folder.file(VOCAB))
    if config.model.kind != "image":
        raise ConfigError(
            f"{folder.file(VOCAB)} is missing: a text run's vocabulary, which its checkpoints' word ids index; "
            "restore it from a copy of the run folder"
        )
    return None


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
    config = load_json(folder.file(CONFIG))
    try:
        validate(config)
    except ConfigError as err:
        raise ConfigError(f"{folder.file(CONFIG)}: {err}") from None
    return folder, config


def _best_model(folder: RunFolder, config: RunConfig, vocab: Vocab | None, device: torch.device) -> tuple[VAE, int]:
    """best.pt's model (in eval mode) and the epoch it was saved after."""
    saved = checkpoint.load(folder.file(BEST), device)
    checkpoint.entries(saved, folder.file(BEST), ("model", "epoch"))
    model = build_model(config.model, len(vocab) if vocab is not None else 0).to(device)
    checkpoint.load_weights(model, saved, folder.file(BEST), (folder.file(VOCAB), len(vocab)) if vocab else None)
    return model.eval(), int(saved["epoch"])


def _check_training_over(folder: RunFolder, config: RunConfig) -> None:
    """Refuse to test a run whose training has not ended: its final.json would mark it finished, and `compare`,
    `--plan` and `--resume auto` would never train it on. last.pt's counters say; without one, final.json."""
    last = folder.file(LAST)
    if not last.exists():
        if folder.file(FINAL).exists():
            return
        raise ConfigError(f"{folder.path} has neither {LAST} nor {FINAL}: its training has not ended, or was lost")
    saved = checkpoint.load(last)
    checkpoint.entries(saved, last, ("state",))
    try:
        state = TrainState(**saved["state"])
    except TypeError:
        raise ConfigError(f"{last}: its counters are not a lagvae run's") from None
    if saved.get("partial_epoch") is not None or not state.training_over(config.train.epochs):
        raise ConfigError(
            f"{folder.path} has not finished training ({LAST} is in epoch {state.epoch} of {config.train.epochs}); "
            f"`lagvae train ... --out {folder.path} --resume auto` continues it and tests it; eval tests finished runs"
        )


def evaluate_run(run_dir: Path | str, iw_samples: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Recompute final.json of a finished run from its best checkpoint, on the data it was trained on."""
    folder, config = _open_run(run_dir)
    with folder.lock():  # a run still training here would have its final.json written under it
        _check_training_over(folder, config)
        return _evaluate(folder, config, iw_samples, progress)


def _evaluate(folder: RunFolder, config: RunConfig, iw_samples: int | None, progress: bool) -> dict[str, Any]:
    """The run's test again: at the run's K it rewrites final.json and test_nll.csv (the same numbers, the test
    being seeded); at another K it writes eval_k<K>.json and test_nll_k<K>.csv beside them, never over them."""
    own_k = config.eval.iw_samples
    if iw_samples is not None:
        config.eval.iw_samples = iw_samples
    device = setup_runtime(config)
    vocab = _saved_vocab(folder, config)
    splits = build_data(config.data, vocab)
    fingerprints = data_fingerprints(splits)
    check_same_data(folder.read_json(PROVENANCE), fingerprints, folder.path)
    model, best_epoch = _best_model(folder, config, vocab, device)
    metrics, index, nll = test_metrics(model, build_posterior(config), splits.test, config, SINGLE, device, progress)
    history = folder.read_metrics()
    train_seconds = history[-1]["train_seconds"] if history else 0.0
    provenance = run_provenance(device, fingerprints)
    results = final_results(metrics, config, history, train_seconds, best_epoch, provenance)
    if config.eval.iw_samples == own_k:
        folder.write_final(results, index, nll)
    else:
        folder.write_eval(results, index, nll, config.eval.iw_samples)
    return results


def load_trained(run_dir: Path | str, device: str = "auto") -> tuple[RunConfig, VAE, Vocab | None]:
    """The best-validation model of a run folder, ready for generation (on the GPU when there is one).

    SA-VAE runs encode through `build_posterior(config)`, the refined posterior their metrics used."""
    folder, config = _open_run(run_dir)
    vocab = _saved_vocab(folder, config)
    return config, _best_model(folder, config, vocab, resolve_device(device))[0], vocab
