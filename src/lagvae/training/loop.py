"""The Trainer: one run in one folder, built, trained epoch by epoch (steps, validation, checkpoints), tested."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lagvae.atomic import atomic_write, save_json_atomic
from lagvae.config import RunConfig
from lagvae.data import Splits, build_data, describe
from lagvae.data.batches import ShardedBatches
from lagvae.errors import NonFiniteLossError, Preempted
from lagvae.metrics import evaluate
from lagvae.models import build_model
from lagvae.plots import plot_posterior_means
from lagvae.posterior import PosteriorTracker, latent_grid
from lagvae.training.aggressive import AggressiveStrategy
from lagvae.training.alarm import alarm_message, collapse_alarm
from lagvae.training.build import build_strategy, set_lr, validate
from lagvae.training.cost import DecodeCost, StepTimer, cost_line, probe_decoding
from lagvae.training.epoch import EpochBar, EpochSums, epoch_line
from lagvae.training.evaluation import eval_batches, final_results, test_metrics, with_progress
from lagvae.training.finite import check_loss
from lagvae.training.lr_rule import LRDecision, PlateauHalving
from lagvae.training.provenance import data_fingerprints
from lagvae.training.resume import AUTOENCODER, Checkpoints, TrainState, restore_snapshots
from lagvae.training.run_context import RunContext
from lagvae.training.run_folder import DATA_STATS, LAST, POSTERIOR_NPZ, POSTERIOR_PNG, PROVENANCE, VOCAB
from lagvae.training.runtime import setup_runtime
from lagvae.training.schedules import kl_weight
from lagvae.training.strategies import Batch, on_device
from lagvae.training.tensorboard_log import TensorBoardLog
from lagvae.training.world import check_shards, prepare_model

log = logging.getLogger("lagvae")
LARGE_VOCAB = 20_000  # above this many words a run warns (the paper's Yahoo/Yelp cap)


class Trainer:
    """One run in one folder: `resume()` (when continuing a run), `fit()`, then `test()`, which writes final.json.

    The Trainer holds the data, the model, the strategy (how one outer step updates the model), the LR rule
    and the counters (`state`). Two objects of their own hold the rest: `checkpoints` writes and reads
    last.pt and best.pt, and `run` is the run's surroundings (the folder and its lock, this process's place
    in the process group, the SIGTERM stop request, provenance).
    """

    def __init__(self, config: RunConfig, run: RunContext | Path | str, *, bar_position: int = 0) -> None:
        """`run` is the RunContext train_and_evaluate opened (rank 0 holding the folder's lock), or a folder path.
        Under torchrun this process joins the run's process group (lagvae.distributed): every rank builds the
        same data, model and generators; rank 0 alone writes the folder and shows progress."""
        validate(config)
        self.config = config
        self.run = run if isinstance(run, RunContext) else RunContext.join(run, config.device)
        self.folder, self.world = self.run.folder, self.run.world
        self.main = self.world.is_main
        self.progress = config.progress and self.main
        self.device = setup_runtime(config, self.run.device_name, self.world.local_size)
        torch.manual_seed(config.train.seed)
        self.splits: Splits = build_data(config.data)
        check_shards(self.world.size, config, self.splits)
        if self.main:
            self.folder.create()  # only once the data loaded: a bad corpus leaves no empty folder behind
        self.run.record(self.device, data_fingerprints(self.splits))
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
        self.lr_rule = self._new_lr_rule()
        self.checkpoints = Checkpoints(self.run, self.device, self.model, self.strategy, self.lr_rule, self.generator)
        self.state = TrainState()
        self.partial_epoch: dict[str, Any] | None = None  # a mid-epoch last.pt's position: the next epoch starts there
        self.tracker = self._make_tracker()
        self.bar_position = bar_position
        self.clock: Callable[[], float] = time.monotonic  # tests inject a fake clock
        self.tensorboard: TensorBoardLog | None = None  # rank 0, while fit() runs with log.tensorboard
        self.step_timer: StepTimer | None = None  # rank 0, until fit()'s first steps are timed for the estimate
        self._decode_cost: DecodeCost | None = None  # the IW test's work, probed when fit() begins (rank 0)
        self.cost_seconds: float | None = None  # the cost estimate's total, once printed
        self._after_aggressive = False  # the estimate being timed is the one after aggressive mode ended

    def _make_tracker(self) -> PosteriorTracker | None:
        e = self.config.eval
        if not self.main or e.posterior_points <= 0 or not 1 <= self.config.model.latent_dim <= 2:
            return None
        x = self.splits.val.first(e.posterior_points).to(self.device)
        return PosteriorTracker(x, latent_grid(self.config.model.latent_dim, e.posterior_grid, e.posterior_range))

    # ---- resuming ----------------------------------------------------------------------------------------
    def resume(self) -> None:
        """Continue the folder's run from last.pt: weights, optimisers, strategy, LR rule, RNGs and counters,
        and the position inside an epoch when last.pt was written there."""
        self.state, self.partial_epoch = self.checkpoints.resume()
        if self.main:
            self.folder.rewrite_metrics(self.state.history)
        if self.tracker is not None:
            restore_snapshots(self.tracker, self.folder.file(POSTERIOR_NPZ), self.state.step)

    # ---- training ----------------------------------------------------------------------------------------
    def fit(self) -> TrainState:
        """Train to the epoch limit or the LR rule's stop. The folder is new or cleared, or this resumes its run
        (train_and_evaluate checks which before any file is touched), so config.json describes this run."""
        cfg, st = self.config, self.state
        st.cycle_epochs = st.cycle_epochs or cfg.train.epochs
        if cfg.train.pretrain.enabled and st.step == 0:
            st.phase = AUTOENCODER
        if self.main:
            self._write_run_files()
            if cfg.log.tensorboard:
                self.tensorboard = TensorBoardLog(self.folder.path, st.step)
        val_batches = eval_batches(self.splits.val, cfg, self.world)
        if self.main and self.training_left():
            self._decode_cost = probe_decoding(self.model, self.strategy.posterior, self.splits.test, cfg, self.device)
            self.step_timer = StepTimer(self.device)
        try:
            with self.run.sigterm_stops():
                while self.training_left():
                    self._epoch(val_batches)
                    self._stop_if_requested(f"after epoch {st.epoch - 1}")  # SIGTERM in its validation, say
        finally:
            if self.tensorboard is not None:
                self.tensorboard.close()
                self.tensorboard = None
        return st

    def _stop_if_requested(self, where: str) -> None:
        """End the run with Preempted when SIGTERM asked for it (every rank alike); last.pt already holds it."""
        if self.world.distributed:
            self.run.stop_requested = self.world.agree([self.run.stop_requested])[0] > 0
        if self.run.stop_requested:
            raise Preempted(
                f"stopped by SIGTERM {where}; {self.folder.file(LAST)} holds the run: rerun with --resume to continue"
            )

    def training_left(self) -> bool:
        """Whether fit() has epochs to train: the autoencoder phase, or epochs below the limit and no LR-rule stop."""
        return not self.state.training_over(self.config.train.epochs)

    def _write_run_files(self) -> None:
        cfg, st = self.config, self.state
        self.folder.write_config(cfg)  # a resume may have changed a RESUMABLE field
        if st.step == 0:  # a new run; a resumed one wrote these when it started, from the same (hashed) data
            save_json_atomic(self.run.provenance(), self.folder.file(PROVENANCE))
            if self.splits.vocab is not None:
                self.splits.vocab.save(self.folder.file(VOCAB))
            if self.splits.stats:
                save_json_atomic(self.splits.stats, self.folder.file(DATA_STATS))
            self._snapshot(0)

    def _epoch(self, val_batches: ShardedBatches) -> None:
        """One epoch: its steps, validation, the strategy's and the LR rule's decisions, the record, checkpoints."""
        st = self.state
        epoch = st.epoch
        aggressive = self.strategy.aggressive
        lr = self.lr_rule.lr
        train = self.train_epoch(epoch)
        start = time.perf_counter()
        val = self._validate(val_batches, epoch)
        self.strategy.end_epoch(val)
        # the autoencoder phase's own loss is its reconstruction (KL weight 0), as Li et al.'s first stage
        autoencoder = st.phase == AUTOENCODER
        decision = self.lr_rule.update(epoch - st.phase_epoch, val["rec"] if autoencoder else -val["elbo"])
        seconds = train["seconds"] + time.perf_counter() - start
        st.train_seconds += seconds
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
            **self.strategy.epoch_record(),
        }
        if self.config.train.pretrain.enabled:
            record["phase"] = st.phase
        self._tell_epoch(record, decision, aggressive, seconds)
        if not autoencoder:  # an autoencoder pays KL for nothing by design
            self._sound_alarm(record)
        if aggressive and not self.strategy.aggressive and self._decode_cost is not None:
            # the first estimate priced every epoch at aggressive steps' cost: time the plain steps and tell again
            self.step_timer, self._after_aggressive = StepTimer(self.device), True
        st.history.append(record)
        if decision.improved:
            st.best_epoch = epoch
        if self.main:
            self.folder.append_metrics(record)
            if self.tensorboard is not None:
                self.tensorboard.epoch(record)
        if decision.improved:
            self.checkpoints.save_best(epoch)
        if decision.decay:
            self.checkpoints.load_best()
            set_lr(self.strategy, self.lr_rule.lr)
            for opt in self.strategy.optimizers():
                opt.state.clear()  # momentum or Adam moments belong to the weights just discarded
        st.epoch += 1
        if epoch < self.config.eval.snapshot_epochs:
            self._snapshot(epoch)
        st.stopped = decision.stop
        if autoencoder and (st.stopped or st.epoch - st.phase_epoch >= self._autoencoder_epochs):
            self._end_autoencoder_phase()
        self.checkpoints.save_last(st)

    def _tell_epoch(self, record: dict[str, Any], decision: LRDecision, aggressive: bool, seconds: float) -> None:
        """The epoch's line under the bar, then what changed: aggressive mode ended, the LR rule halved or stopped."""
        if not self.main:
            return
        aggressive_method = isinstance(self.strategy, AggressiveStrategy)
        latent = self.config.model.latent_dim > 0
        log.info(
            epoch_line(
                record, best=decision.improved, aggressive_method=aggressive_method, seconds=seconds, latent=latent
            )
        )
        epoch = record["epoch"]
        if aggressive and not self.strategy.aggressive:
            log.info(
                f"aggressive mode ended after epoch {epoch}: validation I_q stopped rising; joint training from now on"
            )
        t, rule = self.config.train, self.lr_rule
        if decision.decay:
            log.info(
                f"no better validation for {t.lr_patience} epochs: learning rate x {t.lr_decay:g} -> {rule.lr:.3g} "
                f"(decay {rule.decays} of {t.max_decays}), the best model (epoch {self.state.best_epoch}) reloaded"
            )
        if decision.stop:
            ends = "the autoencoder phase ends" if record.get("phase") == AUTOENCODER else "training stops"
            log.info(f"{ends} after epoch {epoch}: the learning rate was cut {rule.decays} times (train.max_decays)")

    def _tell_cost(self, per_step: float, steps_done_this_epoch: int) -> None:
        """The run's cost estimate, once its first steps are timed (decoding was probed when fit() began)."""
        cfg, st = self.config, self.state
        iters = len(self.train_batches)
        epochs = cfg.train.epochs + (self._autoencoder_epochs if st.phase == AUTOENCODER else 0)
        epochs_left = max(epochs - (st.epoch - (st.phase_epoch if st.phase != AUTOENCODER else 0)), 1)
        steps_left = epochs_left * iters - steps_done_this_epoch
        vocab = len(self.splits.vocab) if self.splits.vocab is not None else 0
        line, self.cost_seconds = cost_line(
            cfg, per_step=per_step, steps_left=steps_left, steps_per_epoch=iters, epochs_left=epochs_left,
            decode=self._decode_cost, n_val=len(self.splits.val), n_test=len(self.splits.test), vocab=vocab,
            aggressive=self.strategy.aggressive, after_aggressive=self._after_aggressive,
        )  # fmt: skip
        log.info(line)

    def _new_lr_rule(self) -> PlateauHalving:
        t = self.config.train
        return PlateauHalving(t.lr, t.lr_decay, t.lr_patience, t.lr_decay_min_epoch, t.max_decays)

    @property
    def _autoencoder_epochs(self) -> int:
        p = self.config.train.pretrain
        return p.epochs if p.epochs is not None else self.config.train.epochs

    def _end_autoencoder_phase(self) -> None:
        """Li et al.'s second stage begins: the autoencoder's best weights, a re-initialised decoder, fresh
        optimiser states and LR rule, the KL schedule from its start. best.pt is the next phase's to write."""
        st, cfg = self.state, self.config
        best = st.best_epoch
        self.checkpoints.load_best()
        vocab_size = len(self.splits.vocab) if self.splits.vocab is not None else 0
        with torch.random.fork_rng(devices=[]):  # the run's own random streams continue untouched
            torch.manual_seed(cfg.train.seed + 1)
            fresh = build_model(cfg.model, vocab_size).decoder.state_dict()
        self.model.decoder.load_state_dict(fresh)
        self.lr_rule.load_state_dict(self._new_lr_rule().state_dict())
        set_lr(self.strategy, self.lr_rule.lr)
        for opt in self.strategy.optimizers():
            opt.state.clear()
        st.phase, st.phase_step, st.phase_epoch, st.best_epoch, st.stopped = "train", st.step, st.epoch, -1, False
        log.info(f"autoencoder phase over after {st.epoch} epochs (best: epoch {best}); decoder re-initialised")

    def train_epoch(self, epoch: int) -> dict[str, float]:
        """Train one epoch (or its rest, after a mid-epoch resume) behind a progress bar; returns its training numbers.

        last.pt is also written inside the epoch, every train.checkpoint_minutes and at the step after SIGTERM
        (which then ends the run with Preempted)."""
        cfg, st, run = self.config, self.state, self.run
        iters = len(self.train_batches)
        snap_every = iters // cfg.eval.snapshots_epoch0 if cfg.eval.snapshots_epoch0 > 0 else 0
        partial, self.partial_epoch = self.partial_epoch, None
        sums = EpochSums(self.device, partial)
        if partial is not None:  # resuming inside this epoch, from a mid-epoch last.pt
            batches = self.train_batches.resume_epoch(partial["order"], sums.count)
        else:
            batches = iter(self.train_batches)
        last_saved = self.clock()
        desc = f"{cfg.train.method} epoch {epoch}" + (" (autoencoder)" if st.phase == AUTOENCODER else "")
        bar = EpochBar(iters, desc, self.progress, self.bar_position, self.clock, shown_at=last_saved)
        save_every = 60.0 * cfg.train.checkpoint_minutes

        def on_inner_step(inner_now: int) -> None:
            if bar.due():
                self._show(bar, sums, inner_now)

        self.strategy.on_inner_step = on_inner_step if self.progress else None
        start = time.perf_counter()
        bar.advance(sums.count)
        for x, rows in (on_device(self.device, b) for b in batches):
            sums.beta = (
                0.0
                if st.phase == AUTOENCODER
                else kl_weight(st.step - st.phase_step, cfg.train, iters, st.cycle_epochs)
            )
            self.model.observe_kl_weight(sums.beta)
            stats = self.strategy.step(x, sums.beta, rows)
            st.step += 1
            due = save_every > 0 and self.clock() - last_saved >= save_every
            step_loss: Tensor | float = stats.loss
            if self.world.distributed:
                # One small all-reduce a step: the global loss, and a checkpoint or stop if any rank asks
                stop, due_any, step_loss = self.world.agree([run.stop_requested, due, float(stats.loss)])
                run.stop_requested, due = stop > 0, due_any > 0
            sums.add(step_loss, stats.inner_steps)
            if self.step_timer is not None:
                per_step = self.step_timer.step(epoch_over=sums.count == iters)
                if per_step is not None:
                    self.step_timer = None
                    self._tell_cost(per_step, sums.count)
            if self.world.distributed and not np.isfinite(step_loss):
                self._show(bar, sums)  # raises NonFiniteLossError on every rank at the same step
            if self.tensorboard is not None and st.step % cfg.log.every_steps == 0:
                self.tensorboard.step_loss(st.step, float(step_loss))
            if sums.count == iters or bar.due():
                self._show(bar, sums)
            if epoch == 0 and snap_every and st.step % snap_every == 0 and st.step < iters:
                sums.seconds += time.perf_counter() - start
                self._snapshot(epoch)
                start = time.perf_counter()
            if sums.count < iters and (due or run.stop_requested):
                seconds = sums.seconds + time.perf_counter() - start
                self.checkpoints.save_last(st, sums.partial_epoch(self.train_batches.epoch_order(), seconds))
                last_saved = self.clock()
                if run.stop_requested:
                    bar.close()
                    raise Preempted(
                        f"stopped by SIGTERM after step {st.step} (epoch {epoch}); {self.folder.file(LAST)} holds "
                        "it: rerun with --resume to continue"
                    )
        sums.seconds += time.perf_counter() - start
        bar.close()
        return {
            "train_loss": sums.mean_loss(),
            "kl_weight": sums.beta,
            "inner_steps": sums.mean_inner(),
            "seconds": sums.seconds,
        }

    def _show(self, bar: EpochBar, sums: EpochSums, inner_now: int | None = None) -> None:
        """Refresh the epoch's bar (one host sync); a NaN/inf running loss stops the run here."""
        mean_loss = sums.mean_loss()
        check_loss(mean_loss if sums.count else None, self.state.step, self.folder.path)
        bar.show(sums, mean_loss, self.strategy.aggressive, inner_now)

    def _validate(self, val_batches: ShardedBatches, epoch: int) -> dict[str, float]:
        batches = self._progress(val_batches, f"validation after epoch {epoch}")
        posterior = self.strategy.posterior
        cfg = self.config
        val = evaluate(self.model, batches, world=self.world, mi_full_max=cfg.eval.mi_full_max, posterior=posterior)
        if not np.isfinite(val["elbo"]):
            raise NonFiniteLossError(
                f"non-finite validation ELBO after epoch {epoch}; "
                f"checkpoints already saved in {self.folder.path} are intact"
            )
        return val

    def _progress(self, batches: ShardedBatches, desc: str) -> Iterable[Batch]:
        return with_progress(batches, self.device, desc, self.progress, self.bar_position)

    def _snapshot(self, epoch: int) -> None:
        if self.tracker is None:  # no 1-2-d latent, or not rank 0
            return
        self.tracker.snapshot(self.model, self.state.step, epoch)
        arrays = self.tracker.arrays()
        atomic_write(self.folder.file(POSTERIOR_NPZ), lambda f: np.savez(f, **arrays))
        plot_posterior_means(arrays, self.folder.file(POSTERIOR_PNG), title=self.config.train.method)

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

    # ---- testing -----------------------------------------------------------------------------------------
    def test(self) -> dict[str, Any]:
        """Reload the best-validation model and write final.json with IW-NLL (K = eval.iw_samples) on test.

        SIGTERM stops the test at its next chunk of samples (a test at large K can take hours): last.pt holds
        the trained run, so --resume goes straight to the test."""
        self.checkpoints.load_best()

        def stop() -> None:  # this rank's request alone: a collective per chunk would cost more than it saves
            if self.run.stop_requested:
                raise Preempted(
                    f"stopped by SIGTERM during the test; {self.folder.file(LAST)} holds the trained run: rerun "
                    "with --resume to test it"
                )

        with self.run.sigterm_stops():
            metrics, index, nll = test_metrics(
                self.model, self.strategy.posterior, self.splits.test, self.config, self.world, self.device,
                self.progress, self.bar_position, stop,
            )  # fmt: skip
        st = self.state
        results = final_results(
            metrics, self.config, st.history, st.train_seconds, st.best_epoch, self.run.provenance()
        )
        if self.main:
            self.folder.write_final(results, index, nll)
        return results
