"""The training loop: build data, model and strategy from a config, train, select on validation, test."""

from __future__ import annotations

import logging
import signal
import threading
import time
import zipfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lagvae.atomic import atomic_write, save_json_atomic
from lagvae.config import ConfigError, LagvaeError, RunConfig, apply_override, load_json, to_dict
from lagvae.data import Dataset, Splits, build_data, describe
from lagvae.data.batches import ShardedBatches
from lagvae.data.text import Vocab
from lagvae.metrics import evaluate
from lagvae.models import VAE, build_model
from lagvae.objectives import free_bits_kl
from lagvae.plots import plot_posterior_means
from lagvae.posterior import PosteriorTracker, latent_grid
from lagvae.training import checkpoint
from lagvae.training.alarm import alarm_message, collapse_alarm
from lagvae.training.lr_rule import PlateauHalving
from lagvae.training.provenance import check_same_data, data_fingerprints, environment
from lagvae.training.run_folder import (
    BEST,
    CONFIG,
    DATA_STATS,
    LAST,
    METRICS,
    POSTERIOR_NPZ,
    POSTERIOR_PNG,
    PROVENANCE,
    VOCAB,
    RunFolder,
)
from lagvae.training.runtime import resolve_device, setup_runtime
from lagvae.training.schedules import CYCLE_SHAPES, SCHEDULES, kl_weight
from lagvae.training.strategies import STRATEGIES, AggressiveStrategy, Batch, JointStrategy, plain_kl, sharded_free_bits
from lagvae.training.tensorboard_log import TensorBoardLog
from lagvae.training.world import SINGLE, World, check_shards, join, prepare_model

log = logging.getLogger("lagvae")
KL_TERMS = ("plain", "free-bits")
# Settings a resumed run may change; anything else must match the run folder's config.json.
RESUMABLE = (
    "train.epochs", "train.checkpoint_minutes", "threads", "progress", "device",
    "eval.alarm", "log.tensorboard", "log.every_steps",
)  # fmt: skip
TEST_SEED_OFFSET = 1  # the test's random stream: train.seed + this
IW_RANK_STRIDE = 1_000_003  # rank r's IW stream under several processes: the test's seed + this * (r + 1)
LARGE_VOCAB = 20_000  # above this many words a run warns (the paper's Yahoo/Yelp cap)
REFRESH_SECONDS = 2.0  # the progress bar refreshes (and syncs with the device) at most this often


class NonFiniteLossError(LagvaeError):
    """Training produced NaN/inf; the last good checkpoint is kept on disk."""


class Preempted(LagvaeError):
    """SIGTERM arrived: a checkpoint was written at the next step boundary, and the run stopped."""


def validate(config: RunConfig) -> None:
    """Reject settings no run can use, with one-line messages."""
    t, d, e = config.train, config.data, config.eval
    positive = {
        "log.every_steps": config.log.every_steps,
        "train.epochs": t.epochs,
        "train.batch_size": t.batch_size,
        "train.lr": t.lr,
        "train.agg_window": t.agg_window,
        "train.agg_max_inner": t.agg_max_inner,
        "train.n_cycles": t.n_cycles,
        "eval.max_memory_mb": e.max_memory_mb,
        "eval.posterior_grid": e.posterior_grid,
        "eval.posterior_range": e.posterior_range,
    }
    if d.name == "synthetic":
        positive.update({"data.n_train": d.n_train, "data.n_val": d.n_val, "data.n_test": d.n_test})
        positive.update({"data.seq_len": d.seq_len, "data.vocab_size": d.vocab_size})
    for key, value in positive.items():
        if not value > 0:
            raise ConfigError(f"{key} must be positive, got {value}")
    non_negative = {"model.latent_dim": config.model.latent_dim, "eval.iw_samples": e.iw_samples}
    non_negative |= {"train.agg_mi_patience": t.agg_mi_patience, "train.checkpoint_minutes": t.checkpoint_minutes}
    non_negative |= {"eval.batch_size": e.batch_size, "train.clip_grad": t.clip_grad, "train.momentum": t.momentum}
    non_negative |= {"eval.mi_full_max": e.mi_full_max, "eval.alarm_epochs": e.alarm_epochs}
    for key, value in non_negative.items():
        if not value >= 0:
            raise ConfigError(f"{key} must be >= 0, got {value}")
    choices = {
        "train.optimizer": (t.optimizer, ("sgd", "adam")),
        "train.strategy": (t.strategy, tuple(STRATEGIES)),
        "train.schedule": (t.schedule, SCHEDULES),
        "train.kl_term": (t.kl_term, KL_TERMS),
        "train.cycle_shape": (t.cycle_shape, CYCLE_SHAPES),
        "train.agg_switch_on": (t.agg_switch_on, ("mi", "mi_full")),
        "train.svi_clip": (t.svi_clip, ("batch", "example")),
    }
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"unknown {key} {value!r}; choose from {', '.join(allowed)}")
    if t.agg_switch_on == "mi_full" and e.mi_full_max == 0:
        raise ConfigError("train.agg_switch_on=mi_full needs eval.mi_full_max > 0 (it computes mi_full)")
    if not 0 < t.cycle_ratio <= 1:
        raise ConfigError(f"train.cycle_ratio must be in (0, 1], got {t.cycle_ratio}")


def make_optimizer(params: Any, config: RunConfig, lr: float) -> torch.optim.Optimizer:
    t = config.train
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr)
    return torch.optim.SGD(params, lr=lr, momentum=t.momentum)


def set_lr(strategy: JointStrategy, lr: float) -> None:
    for opt in strategy.optimizers():
        for group in opt.param_groups:
            group["lr"] = lr


def build_strategy(
    config: RunConfig, model: VAE, sample_batch: Callable[[], Batch], world: World = SINGLE
) -> JointStrategy:
    t = config.train
    enc = make_optimizer(model.encoder.parameters(), config, t.lr)
    dec = make_optimizer(model.decoder.parameters(), config, t.lr)
    kl_term = plain_kl
    if t.kl_term == "free-bits":
        kl_term = (
            sharded_free_bits(world, t.free_bits) if world.distributed else partial(free_bits_kl, target=t.free_bits)
        )
    return STRATEGIES[t.strategy].from_config(t, model, enc, dec, kl_term, sample_batch, world)


@dataclass
class TrainState:
    """Counters that, with the model, optimisers, strategy, LR rule and RNGs, make a run resumable."""

    step: int = 0
    epoch: int = 0  # next epoch to run
    train_seconds: float = 0.0
    best_epoch: int = -1
    stopped: bool = False  # the LR rule ended training early
    cycle_epochs: int = 0  # train.epochs when the run started: fixes the cyclical schedule's period
    history: list[dict[str, Any]] = field(default_factory=list)


def _eval_batches(data: Dataset, config: RunConfig, world: World) -> ShardedBatches:
    source = data.batches(config.eval.batch_size or config.train.batch_size, shuffle=False)
    return ShardedBatches(source, world.rank, world.size)  # type: ignore[arg-type]


def _on(device: torch.device, batch: Batch) -> Batch:
    return batch[0].to(device, non_blocking=True), batch[1]


class Trainer:
    """One run in one folder. `fit()` trains (resuming from last.pt when asked); `test()` writes final.json."""

    def __init__(
        self, config: RunConfig, out_dir: Path | str, *, bar_position: int = 0, vocab: Vocab | None = None
    ) -> None:
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
        self.splits: Splits = build_data(config.data, vocab)
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
            config, self.model, lambda: _on(self.device, self.train_batches.sample()), self.world
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

    # ---- checkpoints -------------------------------------------------------------------------------------
    def _save_last(self, partial_epoch: dict[str, Any] | None = None) -> None:
        """last.pt: everything a resume needs; `partial_epoch` (the epoch's batch order, position and running
        sums) when it is written inside an epoch. Rank 0 writes it: every rank's random streams equal rank 0's,
        because all of them make the same global draws (lagvae.draws)."""
        if not self.main:
            return
        s = self.strategy
        checkpoint.save_atomic(
            {
                "partial_epoch": partial_epoch,
                "model": self.model.state_dict(),
                "optimizers": [opt.state_dict() for opt in s.optimizers()],
                "strategy": s.state_dict(),
                "lr_rule": self.lr_rule.state_dict(),
                "state": vars(self.state),
                "rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "data_rng": self.generator.get_state(),
            },
            self.folder.file(LAST),
        )

    def resume(self) -> None:
        """Restore everything from last.pt, so the run continues where it stopped."""
        path = self.folder.file(LAST)
        if not path.exists():
            raise ConfigError(f"nothing to resume: {path} does not exist")
        self.check_data()
        ckpt = checkpoint.load(path, self.device)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError:
            raise ConfigError(f"{path} does not fit this model; was the run trained with other sizes?") from None
        for opt, opt_state in zip(self.strategy.optimizers(), ckpt["optimizers"], strict=True):
            opt.load_state_dict(opt_state)
        self.strategy.load_state_dict(ckpt["strategy"])
        self.lr_rule.load_state_dict(ckpt["lr_rule"])
        self.state = TrainState(**ckpt["state"])
        torch.set_rng_state(ckpt["rng"].cpu())
        if ckpt["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([state.cpu() for state in ckpt["cuda_rng"]])
        self.generator.set_state(ckpt["data_rng"].cpu())
        self._partial_epoch = ckpt.get("partial_epoch")
        if self.main:
            # A crash after an epoch's records but before last.pt would otherwise leave them twice.
            self.folder.file(METRICS).unlink(missing_ok=True)
            for record in self.state.history:
                self.folder.append_metrics(record)
        npz = self.folder.file(POSTERIOR_NPZ)
        if self.tracker is not None and npz.exists():
            try:
                saved = dict(np.load(npz))
            except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:
                raise ConfigError(
                    f"cannot read {npz}: {err}; delete it to resume without the earlier snapshots"
                ) from None
            keep = saved["step"] <= self.state.step
            self.tracker.steps = saved["step"][keep].tolist()
            self.tracker.epochs = saved["epoch"][keep].tolist()
            self.tracker.true_means = list(saved["true_mean"][keep])
            self.tracker.encoder_means = list(saved["encoder_mean"][keep])

    def _progress(self, batches: ShardedBatches, desc: str) -> Iterable[Batch]:
        """The batches on the device, behind a bar with an ETA (evaluation can take minutes)."""
        return tqdm(
            (_on(self.device, b) for b in batches),
            total=len(batches),
            desc=desc,
            disable=not self.progress,
            position=self.bar_position,
            leave=False,
            dynamic_ncols=True,
        )

    def _provenance(self) -> dict[str, Any]:
        return {**environment(self.device, self.world.size), "data": self.fingerprints}

    def check_data(self) -> None:
        """Refuse data that differ from the run's (runs from before provenance.json are not checked)."""
        saved = self.folder.read_json(PROVENANCE)
        if saved is not None and "data" in saved:
            check_same_data(saved["data"], self.fingerprints, self.folder.path)

    def _load_best(self) -> None:
        self.world.barrier()  # rank 0 has written best.pt
        self.model.load_state_dict(checkpoint.load(self.folder.file(BEST), self.device)["model"])

    # ---- training ----------------------------------------------------------------------------------------
    def _snapshot(self, epoch: int) -> None:
        if self.tracker is None:  # no 1-2-d latent, or not rank 0
            return
        self.tracker.snapshot(self.model, self.state.step, epoch)
        arrays = self.tracker.arrays()
        atomic_write(self.folder.file(POSTERIOR_NPZ), lambda f: np.savez(f, **arrays))
        plot_posterior_means(arrays, self.folder.file(POSTERIOR_PNG), title=self.config.train.method)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        cfg, st = self.config, self.state
        iters = len(self.train_batches)
        snap_every = iters // cfg.eval.snapshots_epoch0 if cfg.eval.snapshots_epoch0 > 0 else 0
        bar = tqdm(
            total=iters,
            desc=f"{cfg.train.method} epoch {epoch}",
            disable=not self.progress,
            position=self.bar_position,
            leave=False,
            dynamic_ncols=True,
        )
        loss_sum: Tensor | float = torch.zeros((), device=self.device)
        inner_sum, count, beta, seconds = 0, 0, 1.0, 0.0
        partial, self._partial_epoch = self._partial_epoch, None
        if partial is not None:  # resuming inside this epoch, from a mid-epoch last.pt
            count, inner_sum, beta, seconds = (
                partial["count"],
                partial["inner_sum"],
                partial["beta"],
                partial["seconds"],
            )
            loss_sum += partial["loss_sum"]
            batches = self.train_batches.resume_epoch(partial["order"], count)
        else:
            batches = iter(self.train_batches)
        last_shown = last_saved = self.clock()
        save_every = 60.0 * cfg.train.checkpoint_minutes

        def show(inner_now: int | None = None) -> None:
            """Refresh the bar (one host sync), at most every REFRESH_SECONDS and at the epoch's end."""
            nonlocal last_shown
            last_shown = self.clock()
            mean_loss = float(loss_sum) / max(count, 1)
            if count and not np.isfinite(mean_loss):
                raise NonFiniteLossError(
                    f"non-finite training loss at step {st.step}; checkpoints already saved in "
                    f"{self.folder.path} are intact (try a lower train.lr or train.clip_grad)"
                )
            postfix = {"loss": f"{mean_loss:.2f}", "kl_w": f"{beta:.2f}"}
            postfix["agg"] = "on" if self.strategy.aggressive else "off"
            postfix["inner"] = f"{inner_sum / max(count, 1):.1f}" if inner_now is None else f"{inner_now} now"
            bar.set_postfix(postfix, refresh=False)
            bar.update(count - bar.n)
            bar.refresh()

        def on_inner_step(inner_now: int) -> None:
            if self.clock() - last_shown >= REFRESH_SECONDS:
                show(inner_now)

        self.strategy.on_inner_step = on_inner_step if self.progress else None
        start = time.perf_counter()
        bar.update(count)
        for x, rows in (_on(self.device, b) for b in batches):
            beta = kl_weight(st.step, cfg.train, iters, st.cycle_epochs)
            stats = self.strategy.step(x, beta, rows)
            st.step += 1
            inner_sum += stats.inner_steps
            count += 1
            due = save_every > 0 and self.clock() - last_saved >= save_every
            step_loss: Tensor | float = stats.loss
            if self.world.distributed:
                # One small all-reduce a step: the global loss, and a checkpoint or stop if any rank asks
                stop, due_any, step_loss = self.world.agree([self._stop_requested, due, float(stats.loss)])
                self._stop_requested, due = stop > 0, due_any > 0
                if not np.isfinite(step_loss):
                    show()  # raises NonFiniteLossError on every rank at the same step
            loss_sum += step_loss
            if self.tensorboard is not None and st.step % cfg.log.every_steps == 0:
                self.tensorboard.step_loss(st.step, float(step_loss))
            if count == iters or self.clock() - last_shown >= REFRESH_SECONDS:
                show()
            if epoch == 0 and snap_every and st.step % snap_every == 0 and st.step < iters:
                seconds += time.perf_counter() - start
                self._snapshot(epoch)
                start = time.perf_counter()
            if count < iters and (due or self._stop_requested):
                here = {"order": self.train_batches.epoch_order(), "count": count, "inner_sum": inner_sum}
                here |= {"beta": beta, "loss_sum": float(loss_sum)}
                here["seconds"] = seconds + time.perf_counter() - start
                self._save_last(here)
                last_saved = self.clock()
                if self._stop_requested:
                    bar.close()
                    raise Preempted(
                        f"stopped by SIGTERM after step {st.step} (epoch {epoch}); {self.folder.file(LAST)} holds it: "
                        "rerun with --resume to continue"
                    )
        seconds += time.perf_counter() - start
        bar.close()
        return {
            "train_loss": float(loss_sum) / max(count, 1),
            "kl_weight": beta,
            "inner_steps": inner_sum / max(count, 1),
            "seconds": seconds,
        }

    def fit(self) -> TrainState:
        """Train to the epoch limit or the LR rule's stop. The folder is new or cleared, or this resumes its run
        (train_and_evaluate checks which before any file is touched), so config.json describes this run."""
        cfg, st = self.config, self.state
        st.cycle_epochs = st.cycle_epochs or cfg.train.epochs
        if self.main:
            self._write_run_files()
            if cfg.log.tensorboard:
                self.tensorboard = TensorBoardLog(self.folder.path, st.step)
        val_batches = _eval_batches(self.splits.val, cfg, self.world)
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
        if not e.alarm:
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
            val = evaluate(self.model, batches, world=self.world, mi_full_max=cfg.eval.mi_full_max)
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
        batches = _eval_batches(self.splits.test, self.config, self.world)
        e = self.config.eval
        # The test draws from its own seeded stream, so `eval` reproduces final.json whatever training drew.
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            seed = self.config.train.seed + TEST_SEED_OFFSET
            torch.manual_seed(seed)
            iw_generator = None  # one process: the IW samples continue the test's stream
            if self.world.size > 1:  # each rank's IW samples: its own stream, reproducible per world size
                iw_generator = torch.Generator(self.device).manual_seed(seed + IW_RANK_STRIDE * (1 + self.world.rank))
            desc = f"test (IW, K = {e.iw_samples})"
            progress = self._progress(batches, desc)
            results = evaluate(
                self.model, progress, e.iw_samples, e.max_memory_mb, self.world, iw_generator, e.mi_full_max
            )
        results.update(
            method=self.config.train.method,
            train_seconds=self.state.train_seconds,
            epochs=len(self.state.history),
            best_epoch=self.state.best_epoch,
            iw_samples=e.iw_samples,
            provenance=self._provenance(),
        )
        if self.main:
            self.folder.write_final(results)
        return results


RESUME_MODES = ("no", "yes", "auto")


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


def train_and_evaluate(
    config: RunConfig,
    out_dir: Path | str,
    *,
    resume: bool | str = False,
    overwrite: bool = False,
    bar_position: int = 0,
) -> dict[str, Any]:
    """Train `config` into `out_dir`, then test the best model; returns final.json's dict.

    A folder that already holds a run (config.json or a checkpoint) is never silently reused:
    - resume=True ("yes") continues it from last.pt; config.json there is the truth, and only the fields in
      RESUMABLE may differ from `config`;
    - resume="auto" continues it when last.pt exists, else starts afresh, provided the folder's config.json
      (a run killed before its first checkpoint) asks for the same run;
    - overwrite=True deletes the old run's files first;
    - otherwise it is a one-line error.
    """
    mode = ("yes" if resume else "no") if isinstance(resume, bool) else resume
    if mode not in RESUME_MODES:
        raise ConfigError(f"unknown resume mode {resume!r}; choose from {', '.join(RESUME_MODES)}")
    world, _ = join(config.device)
    folder = RunFolder(out_dir)
    if overwrite and mode != "no":
        raise ConfigError("--overwrite starts a new run and --resume continues one; choose one")
    if mode == "auto":
        mode = "yes" if folder.file(LAST).exists() else "no"
        if mode == "no" and folder.file(CONFIG).exists():
            _same_run(config, folder)  # refuses a different run; the same one restarts from scratch
            overwrite = True
    if mode == "yes":
        config = _resumed_config(config, folder)
    elif folder.holds_run():
        if not overwrite:
            raise ConfigError(
                f"{folder.path} already holds a run; --resume continues it, --overwrite deletes it and starts "
                "again, --resume auto continues it when it can and starts otherwise"
            )
        world.barrier()  # every rank has read the folder before rank 0 clears it
        if world.is_main:
            folder.clear()
    trainer = Trainer(config, out_dir, bar_position=bar_position)
    if mode == "yes":
        trainer.resume()
    trainer.fit()
    return trainer.test()


def _resumed_config(requested: RunConfig, folder: RunFolder) -> RunConfig:
    """The folder's saved config with the RESUMABLE fields of `requested`; refuses any other difference."""
    if not folder.file(CONFIG).exists():
        raise ConfigError(f"nothing to resume: {folder.file(CONFIG)} does not exist")
    if not folder.file(LAST).exists():
        raise ConfigError(f"nothing to resume: {folder.file(LAST)} does not exist (--resume auto starts instead)")
    return _same_run(requested, folder)


def _same_run(requested: RunConfig, folder: RunFolder) -> RunConfig:
    saved = load_json(folder.file(CONFIG))
    flat_saved, flat_new = _flatten(to_dict(saved)), _flatten(to_dict(requested))
    # `schema` says how the saved file was written, not how the run trains
    changed = [k for k in flat_new if flat_new[k] != flat_saved.get(k) and k not in (*RESUMABLE, "schema")]
    if changed:
        raise ConfigError(
            f"{folder.path} holds a different run; these settings differ: {', '.join(changed)}"
            f" (a resume may change only {', '.join(RESUMABLE)})"
        )
    for key in RESUMABLE:
        apply_override(saved, f"{key}={flat_new[key]}")
    return saved


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {f"{prefix}{key}": value})
    return flat


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
