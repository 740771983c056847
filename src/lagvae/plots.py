"""Figures: the posterior-mean space over training, metric curves, and image grids (samples, reconstructions).

Drawn with matplotlib's object-oriented API (a `Figure` written by its own `savefig`), never pyplot: importing
lagvae leaves the matplotlib backend of a notebook or script as it was, and figures need no display.
"""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib
import matplotlib.image
import numpy as np
from matplotlib.figure import Figure

from lagvae.atomic import atomic_write

MAX_PANELS = 6


def pick_snapshots(n: int, most: int = MAX_PANELS) -> list[int]:
    """Up to `most` snapshot indices spread evenly from the first to the last."""
    return sorted(set(np.linspace(0, n - 1, min(n, most)).round().astype(int).tolist()))


def plot_posterior_means(data: dict[str, np.ndarray], path: Path, title: str = "") -> None:
    """One column per snapshot, one row per latent dimension: x = true posterior mean, y = encoder mean."""
    chosen = pick_snapshots(len(data["step"]))
    dims = data["true_mean"].shape[-1]
    fig = Figure(figsize=(2.6 * len(chosen), 2.6 * dims))
    axes = fig.subplots(dims, len(chosen), squeeze=False)
    lim = max(1.0, float(np.abs(data["true_mean"]).max()), float(np.abs(data["encoder_mean"]).max())) * 1.05
    for col, i in enumerate(chosen):
        for d in range(dims):
            ax = axes[d, col]
            ax.plot([-lim, lim], [-lim, lim], color="0.7", lw=0.8)
            ax.scatter(data["true_mean"][i, :, d], data["encoder_mean"][i, :, d], s=4, alpha=0.6)
            ax.set_xlim(-lim, lim)
            ax.set_ylim(-lim, lim)
            ax.set_aspect("equal")
            if d == 0:
                ax.set_title(f"iter {data['step'][i]} (epoch {data['epoch'][i]})", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"encoder mean, z{d + 1}" if dims > 1 else "encoder mean")
            ax.set_xlabel(f"true posterior mean, z{d + 1}" if dims > 1 else "true posterior mean", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


CURVE_KEYS = ("elbo", "kl", "mi_full", "au")  # a grid's validation panels: fit, rate, I_q, active units


def metric_curves_png(curves: dict[str, list[list[dict]]], keys: tuple[str, ...] = CURVE_KEYS) -> bytes:
    """One panel per metric key, one line per method (mean over its runs) against the epoch, as PNG bytes."""
    fig = Figure(figsize=(4.5 * len(keys) + 2.0, 3.4))
    axes = fig.subplots(1, len(keys), squeeze=False)
    # 20 distinct colours: grids often exceed the default 10
    colours = matplotlib.colormaps["tab20"](np.linspace(0, 1, 20))
    for ax, key in zip(axes[0], keys, strict=True):
        shown = []
        for i, (label, runs) in enumerate(curves.items()):
            length = min((len(r) for r in runs), default=0)
            if length == 0:
                continue
            values = np.array([[rec.get(key, np.nan) for rec in r[:length]] for r in runs], dtype=float).mean(0)
            epochs = [rec["epoch"] for rec in runs[0][:length]]
            ax.plot(epochs, values, marker=".", label=label, color=colours[i % 20], ls=("-", "--")[i // 20 % 2])
            shown.extend(values[len(values) // 5 :])
        if key == "elbo" and shown:  # the first epochs' ELBO is tens of nats lower and would flatten the end
            ax.set_ylim(bottom=float(np.nanmin(shown)) - 0.5)
        ax.set_xlabel("epoch")
        ax.set_ylabel(f"validation {key.upper()}")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="center right", fontsize=8)
    fig.tight_layout(rect=(0, 0, 1 - 2.0 / (4.5 * len(keys) + 2.0), 1))
    return _png(fig, dpi=110)


def _png(fig: Figure, dpi: int) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def image_grid(images: np.ndarray, cols: int, pad: int = 1) -> np.ndarray:
    """Images [N, H, W] tiled row by row, `cols` per row, with `pad` pixels of 0.5 grey between them."""
    n, h, w = images.shape
    rows = -(-n // cols)
    grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad), 0.5, dtype=np.float32)
    for i, image in enumerate(images):
        r, c = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + c * (w + pad)
        grid[top : top + h, left : left + w] = image
    return grid


def save_image_grid(images: np.ndarray, path: Path, cols: int, scale: int = 4) -> None:
    """Write `image_grid` as a PNG, pixel value 1 white and 0 black, each pixel `scale` x `scale` screen pixels."""
    grid = image_grid(images, cols).repeat(scale, axis=0).repeat(scale, axis=1)
    atomic_write(path, lambda f: matplotlib.image.imsave(f, grid, cmap="gray", vmin=0.0, vmax=1.0, format="png"))


# (key, panel title): one panel each in a run's curves; I_q draws both estimates
RUN_PANELS = (("elbo", "validation ELBO"), ("kl", "KL"), ("mi", "I_q"), ("au", "active units"))
RUN_PANELS += (("inner_steps", "inner steps / outer step"), ("lr", "learning rate"))


def run_curves_png(records: list[dict]) -> bytes:
    """A run's per-epoch curves as PNG bytes: the aggressive epochs shaded, LR decays dashed, alarms in red."""
    epochs = [r["epoch"] for r in records]
    fig = Figure(figsize=(13, 6.2))
    axes = fig.subplots(2, 3, squeeze=False)
    for ax, (key, title) in zip(axes.flat, RUN_PANELS, strict=True):
        if key == "mi":
            ax.plot(epochs, [r["mi"] for r in records], marker=".", label="mi (per minibatch)")
            if any("mi_full" in r for r in records):
                full = [r.get("mi_full", np.nan) for r in records]
                ax.plot(epochs, full, marker=".", label="mi_full (whole split)")
            ax.legend(fontsize=7)
        else:
            ax.plot(epochs, [r.get(key, np.nan) for r in records], marker=".")
        for r in records:
            if r.get("aggressive"):
                ax.axvspan(r["epoch"] - 0.5, r["epoch"] + 0.5, color="tab:orange", alpha=0.15, lw=0)
        for before, after in zip(records, records[1:], strict=False):
            if after["lr"] < before["lr"]:
                ax.axvline(after["epoch"] - 0.5, color="0.4", ls="--", lw=0.8)
        alarms = [r["epoch"] for r in records if r.get("alarm")]
        if alarms:
            ax.scatter(alarms, [ax.get_ylim()[1]] * len(alarms), marker="v", color="tab:red", zorder=3)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
    fig.text(0.01, 0.005, "shaded: aggressive epochs   dashed: LR decay   red: collapse alarm", fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return _png(fig, dpi=90)
