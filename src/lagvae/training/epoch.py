"""One training epoch: the outer steps over the shuffled batches, the progress bar, mid-epoch checkpoints."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import Tensor
from tqdm.auto import tqdm

from lagvae.config import LagvaeError
from lagvae.training.run_folder import LAST
from lagvae.training.schedules import kl_weight
from lagvae.training.strategies import on_device

if TYPE_CHECKING:
    from lagvae.training.loop import Trainer

REFRESH_SECONDS = 2.0  # the progress bar refreshes (and syncs with the device) at most this often


class NonFiniteLossError(LagvaeError):
    """Training produced NaN/inf; the last good checkpoint is kept on disk."""


class Preempted(LagvaeError):
    """SIGTERM arrived: a checkpoint was written at the next step boundary, and the run stopped."""


def train_epoch(trainer: Trainer, epoch: int) -> dict[str, float]:
    """Train one epoch (or its rest, after a mid-epoch resume) behind a progress bar; returns its training numbers."""
    cfg, st = trainer.config, trainer.state
    iters = len(trainer.train_batches)
    snap_every = iters // cfg.eval.snapshots_epoch0 if cfg.eval.snapshots_epoch0 > 0 else 0
    bar = tqdm(
        total=iters,
        desc=f"{cfg.train.method} epoch {epoch}",
        disable=not trainer.progress,
        position=trainer.bar_position,
        leave=False,
        dynamic_ncols=True,
    )
    loss_sum: Tensor | float = torch.zeros((), device=trainer.device)
    inner_sum, count, beta, seconds = 0, 0, 1.0, 0.0
    partial, trainer._partial_epoch = trainer._partial_epoch, None
    if partial is not None:  # resuming inside this epoch, from a mid-epoch last.pt
        count, inner_sum, beta, seconds = (
            partial["count"],
            partial["inner_sum"],
            partial["beta"],
            partial["seconds"],
        )
        loss_sum += partial["loss_sum"]
        batches = trainer.train_batches.resume_epoch(partial["order"], count)
    else:
        batches = iter(trainer.train_batches)
    last_shown = last_saved = trainer.clock()
    save_every = 60.0 * cfg.train.checkpoint_minutes

    def show(inner_now: int | None = None) -> None:
        """Refresh the bar (one host sync), at most every REFRESH_SECONDS and at the epoch's end."""
        nonlocal last_shown
        last_shown = trainer.clock()
        mean_loss = float(loss_sum) / max(count, 1)
        if count and not np.isfinite(mean_loss):
            raise NonFiniteLossError(
                f"non-finite training loss at step {st.step}; checkpoints already saved in "
                f"{trainer.folder.path} are intact (try a lower train.lr or train.clip_grad)"
            )
        postfix = {"loss": f"{mean_loss:.2f}", "kl_w": f"{beta:.2f}"}
        postfix["agg"] = "on" if trainer.strategy.aggressive else "off"
        postfix["inner"] = f"{inner_sum / max(count, 1):.1f}" if inner_now is None else f"{inner_now} now"
        bar.set_postfix(postfix, refresh=False)
        bar.update(count - bar.n)
        bar.refresh()

    def on_inner_step(inner_now: int) -> None:
        if trainer.clock() - last_shown >= REFRESH_SECONDS:
            show(inner_now)

    trainer.strategy.on_inner_step = on_inner_step if trainer.progress else None
    start = time.perf_counter()
    bar.update(count)
    for x, rows in (on_device(trainer.device, b) for b in batches):
        beta = kl_weight(st.step, cfg.train, iters, st.cycle_epochs)
        stats = trainer.strategy.step(x, beta, rows)
        st.step += 1
        inner_sum += stats.inner_steps
        count += 1
        due = save_every > 0 and trainer.clock() - last_saved >= save_every
        step_loss: Tensor | float = stats.loss
        if trainer.world.distributed:
            # One small all-reduce a step: the global loss, and a checkpoint or stop if any rank asks
            stop, due_any, step_loss = trainer.world.agree([trainer._stop_requested, due, float(stats.loss)])
            trainer._stop_requested, due = stop > 0, due_any > 0
            if not np.isfinite(step_loss):
                show()  # raises NonFiniteLossError on every rank at the same step
        loss_sum += step_loss
        if trainer.tensorboard is not None and st.step % cfg.log.every_steps == 0:
            trainer.tensorboard.step_loss(st.step, float(step_loss))
        if count == iters or trainer.clock() - last_shown >= REFRESH_SECONDS:
            show()
        if epoch == 0 and snap_every and st.step % snap_every == 0 and st.step < iters:
            seconds += time.perf_counter() - start
            trainer._snapshot(epoch)
            start = time.perf_counter()
        if count < iters and (due or trainer._stop_requested):
            here = {"order": trainer.train_batches.epoch_order(), "count": count, "inner_sum": inner_sum}
            here |= {"beta": beta, "loss_sum": float(loss_sum)}
            here["seconds"] = seconds + time.perf_counter() - start
            trainer._save_last(here)
            last_saved = trainer.clock()
            if trainer._stop_requested:
                bar.close()
                raise Preempted(
                    f"stopped by SIGTERM after step {st.step} (epoch {epoch}); {trainer.folder.file(LAST)} holds it: "
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
