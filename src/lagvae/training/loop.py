"""The epoch loop: a Trainer trains one run in one folder, selects on validation and tests."""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lagvae.atomic import atomic_write, save_json_atomic
from lagvae.config import RunConfig
from lagvae.data import Splits, build_data, describe
from lagvae.data.batches import ShardedBatches
from lagvae.metrics import evaluate
from lagvae.models import build_model
from lagvae.plots import plot_posterior_means
from lagvae.posterior import PosteriorTracker, latent_grid
from lagvae.training import checkpoint
from lagvae.training.aggressive import AggressiveStrategy
from lagvae.training.alarm import alarm_message, collapse_alarm
from lagvae.training.build import build_strategy, set_lr, validate
from lagvae.training.epoch import NonFiniteLossError, train_epoch
from lagvae.training.evaluation import eval_batches, final_results, test_metrics, with_progress
from lagvae.training.lr_rule import PlateauHalving
from lagvae.training.provenance import data_fingerprints
from lagvae.training.resume import Checkpoints, TrainState
from lagvae.training.run_folder import (
    BEST,
    DATA_STATS,
    POSTERIOR_NPZ,
    POSTERIOR_PNG,
    PROVENANCE,
    VOCAB,
    RunFolder,
)
from lagvae.training.runtime import setup_runtime
from lagvae.training.strategies import Batch, on_device
from lagvae.training.tensorboard_log import TensorBoardLog
from lagvae.training.world import check_shards, join, prepare_model

log = logging.getLogger("lagvae")
LARGE_VOCAB = 20_000  # above this many words a run warns (the paper's Yahoo/Yelp cap)


class Trainer(Checkpoints):
    """One run in one folder. `fit()` trains (resuming from last.pt when asked); `test()` writes final.json."""

    def __init__(self, config: RunConfig, out_dir: Path | str, *, bar_position: int = 0) -> None:
        """Under torchrun this process joins the run's process group (lagvae.training.world): every rank builds
        the same data, model and generators; rank 0 alone writes the folder and shows progress."""
        validate(config)
        self.config = config
        self.folder = RunFolder(out_dir)
        self.world, device_name = join(config.device)
        self.main = self.world.is_main
        self.progress = config.progress and self.main
        self.device = setup_runtime(config, device_name, self.world.local_size)
        torch.manual_seed(config.train.seed)
        self.splits: Splits = build_data(config.data)
        check_shards(self.world.size, config, self.splits)
        if self.main:
            self.folder.create()  # only once the data loaded: a bad corpus leaves no empty folder behind
        self.fingerprints = data_fingerprints(self.splits)
        for line in describe(self.splits):
            log.info(line)
        vocab_size = len(self.splits.vocab) if self.splits.vocab is not None else 0
        if vocab_size > LARGE_VOCAB + 4:  # + <pad>, <s>, </s>, <unk>
            log.warning(
                f"a {vocab_size:,}-word vocabulary: the output layer's cost and memory grow with it; "
                f"data.max_vocab={LARGE_VOCAB} is the paper's Yelp and Yahoo setting"
            )
        self.model = prepare_model(build_model(config.model, vocab_size), self.world, self.device)
        self.generator = torch.Generator().manual_seed(config.train.seed)
        source = self.splits.train.batches(config.train.batch_size, shuffle=True, generator=self.generator)
        self.train_batches = ShardedBatches(source, self.world.rank, self.world.size)  # type: ignore[arg-type]
        self.strategy = build_strategy(
            config, self.model, lambda: on_device(self.device, self.train_batches.sample()), self.world
        )
        t = config.train
        self.lr_rule = PlateauHalving(t.lr, t.lr_decay, t.lr_patience, t.lr_decay_min_epoch, t.max_decays)
        self.state = TrainState()
        self.tracker = self._make_tracker()
        self.bar_position = bar_position
        self.clock: Callable[[], float] = time.monotonic  # tests inject a fake clock
        self._partial_epoch: dict[str, Any] | None = None  # set by resume() from a mid-epoch last.pt
        self._stop_requested = False  # set by SIGTERM: checkpoint at the next step, then stop
        self.tensorboard: TensorBoardLog | None = None  # rank 0, while fit() runs with log.tensorboard

    def _make_tracker(self) -> PosteriorTracker | None:
        e = self.config.eval
        if not self.main or e.posterior_points <= 0 or not 1 <= self.config.model.latent_dim <= 2:
            return None
        x = self.splits.val.first(e.posterior_points).to(self.device)
        return PosteriorTracker(x, latent_grid(self.config.model.latent_dim, e.posterior_grid, e.posterior_range))

    def _progress(self, batches: ShardedBatches, desc: str) -> Iterable[Batch]:
        return with_progress(batches, self.device, desc, self.progress, self.bar_position)

    # ---- training ----------------------------------------------------------------------------------------
    def _snapshot(self, epoch: int) -> None:
        if self.tracker is None:  # no 1-2-d latent, or not rank 0
            return
        self.tracker.snapshot(self.model, self.state.step, epoch)
        arrays = self.tracker.arrays()
        atomic_write(self.folder.file(POSTERIOR_NPZ), lambda f: np.savez(f, **arrays))
        plot_posterior_means(arrays, self.folder.file(POSTERIOR_PNG), title=self.config.train.method)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        return train_epoch(self, epoch)

    def fit(self) -> TrainState:
        """Train to the epoch limit or the LR rule's stop. The folder is new or cleared, or this resumes its run
        (train_and_evaluate checks which before any file is touched), so config.json describes this run."""
        cfg, st = self.config, self.state
        st.cycle_epochs = st.cycle_epochs or cfg.train.epochs
        if self.main:
            self._write_run_files()
            if cfg.log.tensorboard:
                self.tensorboard = TensorBoardLog(self.folder.path, st.step)
        val_batches = eval_batches(self.splits.val, cfg, self.world)
        try:
            with _sigterm_sets(self):
                self._epochs(val_batches)
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
        return st

    def _write_run_files(self) -> None:
        cfg, st = self.config, self.state
        self.folder.write_config(cfg)  # a resume may have changed a RESUMABLE field
        if st.step == 0:  # a new run; a resumed one wrote these when it started, from the same (hashed) data
            save_json_atomic(self._provenance(), self.folder.file(PROVENANCE))
            if self.splits.vocab is not None:
                self.splits.vocab.save(self.folder.file(VOCAB))
            if self.splits.stats:
                save_json_atomic(self.splits.stats, self.folder.file(DATA_STATS))
            self._snapshot(0)

    def _sound_alarm(self, record: dict[str, Any]) -> None:
        """Record the collapse alarm the validations raise (`alarm`), and announce it when it begins."""
        e = self.config.eval
        if not e.alarm or self.config.model.latent_dim == 0:  # lm and pixelcnn have no latent to collapse
            return
        kind = collapse_alarm([*self.state.history, record], e)
        record["alarm"] = kind
        previous = self.state.history[-1].get("alarm") if self.state.history else None
        if kind is not None and kind != previous:
            aggressive = self.strategy.aggressive if isinstance(self.strategy, AggressiveStrategy) else None
            log.warning(alarm_message(kind, record, e.alarm_epochs, aggressive))

    def _epochs(self, val_batches: ShardedBatches) -> None:
        cfg, st = self.config, self.state
        while st.epoch < cfg.train.epochs and not st.stopped:
            epoch = st.epoch
            aggressive = self.strategy.aggressive
            lr = self.lr_rule.lr
            train = self._train_epoch(epoch)
            start = time.perf_counter()
            batches = self._progress(val_batches, f"validation after epoch {epoch}")
            posterior = self.strategy.posterior
            val = evaluate(self.model, batches, world=self.world, mi_full_max=cfg.eval.mi_full_max, posterior=posterior)
            if not np.isfinite(val["elbo"]):
                raise NonFiniteLossError(
                    f"non-finite validation ELBO after epoch {epoch}; "
                    f"checkpoints already saved in {self.folder.path} are intact"
                )
            self.strategy.end_epoch(val)
            decision = self.lr_rule.update(epoch, -val["elbo"])
            st.train_seconds += train["seconds"] + time.perf_counter() - start
            record = {
                "step": st.step,
                "epoch": epoch,
                "kl_weight": train["kl_weight"],
                "aggressive": aggressive,
                "lr": lr,
                **{k: val[k] for k in ("elbo", "rec", "kl", "mi", "mi_full", "mi_full_n", "au", "ppl") if k in val},
                "train_loss": train["train_loss"],
                "inner_steps": train["inner_steps"],
                "train_seconds": st.train_seconds,
            }
            self._sound_alarm(record)
            st.history.append(record)
            if decision.improved:
                st.best_epoch = epoch
            if self.main:
                self.folder.append_metrics(record)
                if self.tensorboard is not None:
                    self.tensorboard.epoch(record)
                if decision.improved:
                    best = {"model": self.model.state_dict(), "epoch": epoch}
                    checkpoint.save_atomic(best, self.folder.file(BEST))
            if decision.decay:
                self._load_best()
                set_lr(self.strategy, self.lr_rule.lr)
                for opt in self.strategy.optimizers():
                    opt.state.clear()  # momentum or Adam moments belong to the weights just discarded
            st.epoch += 1
            if epoch < cfg.eval.snapshot_epochs:
                self._snapshot(epoch)
            st.stopped = decision.stop
            self._save_last()

    def test(self) -> dict[str, Any]:
        """Reload the best-validation model and write final.json with IW-NLL (K = eval.iw_samples) on test."""
        self._load_best()
        metrics, index, nll = test_metrics(
            self.model, self.strategy.posterior, self.splits.test, self.config, self.world, self.device,
            self.progress, self.bar_position,
        )  # fmt: skip
        st = self.state
        results = final_results(metrics, self.config, st.history, st.train_seconds, st.best_epoch, self._provenance())
        if self.main:
            self.folder.write_final(results, index, nll)
        return results


@contextmanager
def _sigterm_sets(trainer: Trainer) -> Iterator[None]:
    """While training, SIGTERM (a scheduler's preemption) asks for a checkpoint at the next step boundary."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def request_stop(signum: int, frame: Any) -> None:
        trainer._stop_requested = True

    previous = signal.signal(signal.SIGTERM, request_stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
