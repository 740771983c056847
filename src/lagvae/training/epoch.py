"""An epoch's running sums (what a mid-epoch last.pt keeps) and its progress bar; the Trainer runs the epoch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

# Defined in lagvae.errors; re-exported here, where they were defined before.
from lagvae.errors import NonFiniteLossError as NonFiniteLossError
from lagvae.errors import Preempted as Preempted
from lagvae.training.resume import AUTOENCODER

REFRESH_SECONDS = 2.0  # the progress bar refreshes (and syncs with the device) at most this often


class EpochSums:
    """The epoch so far: outer steps (`count`), inner steps, the summed loss (kept on the device, read only when
    shown), the last KL weight and the training seconds. A mid-epoch last.pt keeps them as `partial_epoch`,
    with the epoch's batch order, and a resume starts from them."""

    def __init__(self, device: torch.device, saved: dict[str, Any] | None = None) -> None:
        self.loss_sum: Tensor = torch.zeros((), device=device)
        self.count, self.inner_sum, self.beta, self.seconds = 0, 0, 1.0, 0.0
        if saved is not None:
            self.count, self.inner_sum = saved["count"], saved["inner_sum"]
            self.beta, self.seconds = saved["beta"], saved["seconds"]
            self.loss_sum += saved["loss_sum"]

    def add(self, loss: Tensor | float, inner_steps: int) -> None:
        """One outer step's loss (a device tensor, or the all-reduced float) and its inner steps."""
        self.loss_sum += loss
        self.inner_sum += inner_steps
        self.count += 1

    def mean_loss(self) -> float:
        """The epoch's mean training loss so far: one host sync."""
        return float(self.loss_sum) / max(self.count, 1)

    def mean_inner(self) -> float:
        return self.inner_sum / max(self.count, 1)

    def partial_epoch(self, order: list[Tensor], seconds: float) -> dict[str, Any]:
        """last.pt's `partial_epoch`: the batch order, the position and the running sums, `seconds` so far."""
        return {
            "order": order,
            "count": self.count,
            "inner_sum": self.inner_sum,
            "beta": self.beta,
            "loss_sum": float(self.loss_sum),
            "seconds": seconds,
        }


class EpochBar:
    """An epoch's progress bar: loss, KL weight, aggressive on/off and inner steps (the running mean, or the
    current outer step's count as they happen). `due` says whether REFRESH_SECONDS of `clock` have passed since
    it was last shown; the Trainer shows it then, and at the epoch's end."""

    def __init__(
        self, total: int, desc: str, enabled: bool, position: int, clock: Callable[[], float], shown_at: float
    ) -> None:
        self.clock = clock
        self.shown_at = shown_at
        self._bar = tqdm(
            total=total, desc=desc, disable=not enabled, position=position, leave=False, dynamic_ncols=True
        )

    def due(self) -> bool:
        return self.clock() - self.shown_at >= REFRESH_SECONDS

    def advance(self, count: int) -> None:
        """Move the bar to `count` steps done without a refresh (a resumed epoch's steps before the kill)."""
        self._bar.update(count - self._bar.n)

    def show(self, sums: EpochSums, mean_loss: float, aggressive: bool, inner_now: int | None = None) -> None:
        self.shown_at = self.clock()
        postfix = {"loss": f"{mean_loss:.2f}", "kl_w": f"{sums.beta:.2f}"}
        postfix["agg"] = "on" if aggressive else "off"
        postfix["inner"] = f"{sums.mean_inner():.1f}" if inner_now is None else f"{inner_now} now"
        self._bar.set_postfix(postfix, refresh=False)
        self.advance(sums.count)
        self._bar.refresh()

    def close(self) -> None:
        self._bar.close()


def epoch_line(
    record: dict[str, Any], *, best: bool, aggressive_method: bool, seconds: float, latent: bool = True
) -> str:
    """The line printed under the bar when an epoch's validation is in: ELBO, KL, I_q over the whole split,
    active units, aggressive on/off (for the aggressive methods), the epoch's training time. A model without a
    latent (lm, pixelcnn) shows its exact log-likelihood alone: a KL, I_q and AU of 0 would read as collapse."""
    head = f"epoch {record['epoch']}" + (" (autoencoder)" if record.get("phase") == AUTOENCODER else "")
    best_mark = " (best)" if best else ""
    if not latent:
        return f"{head}: validation log-likelihood {record['elbo']:.2f}{best_mark}; {seconds:.0f} s"
    parts = [f"validation ELBO {record['elbo']:.2f}{best_mark}"]
    parts.append(f"KL {record['kl']:.2f}")
    if "mi_full" in record:
        parts.append(f"mi_full {record['mi_full']:.2f}")
    parts.append(f"AU {record['au']}")
    if aggressive_method:
        parts.append(f"aggressive {'on' if record['aggressive'] else 'off'}")
    return f"{head}: {', '.join(parts)}; {seconds:.0f} s"
