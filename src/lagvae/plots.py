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
            posterior_panel(ax, data["true_mean"][i, :, d], data["encoder_mean"][i, :, d], lim)
            if d == 0:
                ax.set_title(f"iter {data['step'][i]} (epoch {data['epoch'][i]})", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"encoder mean, z{d + 1}" if dims > 1 else "encoder mean")
            ax.set_xlabel(f"true posterior mean, z{d + 1}" if dims > 1 else "true posterior mean", fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))


def posterior_panel(ax, true_mean: np.ndarray, encoder_mean: np.ndarray, lim: float) -> None:  # type: ignore[no-untyped-def]
    """One latent dimension's posterior-mean space: x = true posterior mean, y = encoder mean, the diagonal
    (an encoder that keeps up) in grey, both axes from -lim to lim."""
    ax.plot([-lim, lim], [-lim, lim], color="0.7", lw=0.8)
    ax.scatter(true_mean, encoder_mean, s=4, alpha=0.6)
    ax.set(xlim=(-lim, lim), ylim=(-lim, lim), aspect="equal")


CURVE_KEYS = ("elbo", "kl", "mi_full", "au")  # a grid's validation panels: fit, rate, I_q, active units
CURVE_TITLES = {"elbo": "validation ELBO", "kl": "KL", "mi_full": "I_q (mi_full, whole split)", "au": "active units"}
ELBO_SPAN = 3.0  # the ELBO axis reaches this many times the final values' spread (at least 5 nats) below them
LINE_STYLES = ("-", "--", ":", "-.")


def method_styles(n: int) -> list[tuple[tuple[float, ...], str]]:
    """(colour, line style) for n methods: tab10's ten distinct colours with solid lines, then again dashed,
    dotted, dash-dotted (tab20's neighbours are light and dark shades of one hue, too alike to tell apart)."""
    colours = matplotlib.colormaps["tab10"].colors
    return [(tuple(colours[i % 10]), LINE_STYLES[i // 10 % len(LINE_STYLES)]) for i in range(n)]


def _mean_curve(runs: list[list[dict]], key: str) -> tuple[np.ndarray, np.ndarray]:
    """Epochs and the mean of `key` over the runs that reached each epoch (seeds the LR rule stopped sooner
    drop out of the mean, instead of cutting every seed's curve at the shortest)."""
    length = max((len(r) for r in runs), default=0)
    values = np.full((len(runs), length), np.nan)
    for i, r in enumerate(runs):
        values[i, : len(r)] = [rec.get(key, np.nan) for rec in r]
    longest = max(runs, key=len)
    with np.errstate(all="ignore"):
        mean = np.array([np.nanmean(col) if np.isfinite(col).any() else np.nan for col in values.T])
    return np.array([rec["epoch"] for rec in longest], dtype=float), mean


def metric_curves_figure(curves: dict[str, list[list[dict]]], keys: tuple[str, ...] = CURVE_KEYS) -> Figure:
    """One panel per metric key, one line per method (mean over its runs) against the epoch, one colour per
    method and a legend below naming each with its number of runs. The ELBO axis leaves out the first epochs'
    far lower values when they would flatten the rest, and says so in the panel: how many points it clips
    below which value (each marked by a triangle on the axis)."""
    shown = {label: runs for label, runs in curves.items() if any(runs)}
    cols = 2 if len(keys) > 2 else len(keys)  # two panels a row: the figure fits a page at full size
    rows = -(-len(keys) // cols)
    fig = Figure(figsize=(5.5 * cols, 3.6 * rows + 1.2))
    axes = list(fig.subplots(rows, cols, squeeze=False).flat)
    for spare in axes[len(keys) :]:
        spare.set_visible(False)
    styles = dict(zip(shown, method_styles(len(shown)), strict=True))
    for ax, key in zip(axes, keys, strict=True):
        finals: list[float] = []
        lines = {}
        for label, runs in shown.items():
            epochs, values = _mean_curve(runs, key)
            colour, style = styles[label]
            ax.plot(epochs, values, marker=".", ms=4, lw=1.5, color=colour, ls=style, label=f"{label} ({len(runs)})")
            lines[label] = (epochs, values)
            finite = values[np.isfinite(values)]
            finals.extend(finite[-1:])
        if key == "elbo" and finals:
            _clip_elbo_axis(ax, lines, styles, min(finals))
        ax.set_xlabel("epoch")
        ax.set_title(CURVE_TITLES.get(key, key), fontsize=11)
        ax.grid(alpha=0.3)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        ncol = min(len(handles), 5)
        fig.legend(handles, labels, loc="lower center", ncol=ncol, fontsize=10, title="method (runs averaged)",
                   frameon=False)  # fmt: skip
        legend_rows = -(-len(handles) // ncol)
        legend_inches = 0.45 + 0.25 * legend_rows
        fig.tight_layout(rect=(0, min(legend_inches / fig.get_figheight(), 0.5), 1, 1))
    else:
        fig.tight_layout()
    return fig


def _clip_elbo_axis(ax, lines: dict, styles: dict, lowest_final: float) -> None:  # type: ignore[no-untyped-def]
    """Let the ELBO axis reach ELBO_SPAN times the spread of the curves' final values (top to lowest final
    value, at least 5 nats) below the lowest final value, so a first epoch tens of nats lower does not flatten
    the end; when that clips points, mark each at the axis's bottom and write how many, and the lowest."""
    _, high = ax.get_ylim()
    top = max(float(np.nanmax(vals)) for _, vals in lines.values())
    bottom = lowest_final - ELBO_SPAN * max(top - lowest_final, 5.0)
    clipped = [
        (e, v, label) for label, (ep, vals) in lines.items() for e, v in zip(ep, vals, strict=True) if v < bottom
    ]
    if not clipped:
        return
    ax.set_ylim(bottom=bottom, top=high)
    for e, _, label in clipped:
        ax.plot([e], [bottom], marker="v", color=styles[label][0], ms=6, clip_on=False, zorder=3)
    lowest = min(v for _, v, _ in clipped)
    note = f"▼ {len(clipped)} early points below {bottom:.1f} clipped (lowest {lowest:.1f})"
    ax.text(0.98, 0.03, note, transform=ax.transAxes, ha="right", va="bottom", fontsize=8, color="0.3")


def metric_curves_png(curves: dict[str, list[list[dict]]], keys: tuple[str, ...] = CURVE_KEYS) -> bytes:
    """`metric_curves_figure` as PNG bytes."""
    return png_bytes(metric_curves_figure(curves, keys), dpi=110)


def png_bytes(fig: Figure, dpi: int) -> bytes:
    """The figure as PNG bytes (for pages that embed their images)."""
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


def _strip_axes(fig: Figure, n_rows: int, gap_after: set[int]) -> list:  # type: ignore[type-arg]
    """n_rows stacked axes for image strips, a blank band after each row in `gap_after`."""
    ratios: list[float] = []
    index = []
    for row in range(n_rows):
        index.append(len(ratios))
        ratios.append(1.0)
        if row in gap_after and row < n_rows - 1:
            ratios.append(0.35)
    grid = fig.add_gridspec(len(ratios), 1, height_ratios=ratios, hspace=0.08)
    axes = [fig.add_subplot(grid[i, 0]) for i in index]
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
    return axes


def _figure_size(width_px: int, height_px: int, label_px: int, title_px: int) -> tuple[float, float]:
    dpi = 100
    return (width_px + label_px) / dpi, (height_px + title_px) / dpi


def reconstruction_figure(originals: np.ndarray, reconstructions: np.ndarray, cols: int, title: str) -> Figure:
    """Inputs [N, H, W] and their reconstructions: up to `cols` inputs a strip, each strip of inputs with the
    strip of their reconstructions under it, labelled, and a blank band between one pair of strips and the
    next, so no image is mistaken for its neighbour's."""
    n, h, w = originals.shape
    chunks = [slice(i, min(i + cols, n)) for i in range(0, n, cols)]
    strips = []
    for part in chunks:
        strips += [("input", originals[part]), ("reconstruction", reconstructions[part])]
    scale = 4 if max(h, w) <= 32 else 2
    strip_w, strip_h = (cols * (w + 1) + 1) * scale, (h + 2) * scale
    gaps = len(chunks) - 1
    fig = Figure(figsize=_figure_size(strip_w, len(strips) * strip_h + int(gaps * 0.35 * strip_h), 130, 40))
    axes = _strip_axes(fig, len(strips), gap_after={i for i in range(1, len(strips), 2)})
    full = image_grid(originals[:cols], cols).shape
    for ax, (label, images) in zip(axes, strips, strict=True):
        strip = image_grid(images, len(images))  # a short last strip stays at the left, at the same scale
        ax.imshow(strip, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest", aspect="equal")
        ax.set_xlim(-0.5, full[1] - 0.5)
        ax.set_ylim(full[0] - 0.5, -0.5)
        ax.set_ylabel(label, rotation=0, ha="right", va="center", fontsize=10)
    fig.suptitle(title, fontsize=10)
    fig.subplots_adjust(left=130 / (strip_w + 130), right=0.99, top=1 - 40 / fig.bbox.height * 0.9, bottom=0.01)
    return fig


def sample_figure(images: np.ndarray, cols: int, title: str) -> Figure:
    """Samples [N, H, W] tiled `cols` a row under a title that says how they were drawn (z, seed)."""
    n, h, w = images.shape
    grid = image_grid(images, cols)
    scale = 4 if max(h, w) <= 32 else 2
    fig = Figure(figsize=_figure_size(grid.shape[1] * scale, grid.shape[0] * scale, 20, 40))
    ax = fig.add_axes((0.01, 0.01, 0.98, 1 - 40 / (grid.shape[0] * scale + 40) - 0.01))
    ax.imshow(grid, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_axis_off()
    fig.suptitle(title, fontsize=10)
    return fig


def save_figure(fig: Figure, path: Path, dpi: int = 100) -> None:
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, facecolor="white"))


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
    key = "shaded: aggressive epochs   dashed: LR decay   red: an alarm (collapse, or KL without information)"
    fig.text(0.01, 0.005, key, fontsize=8)
    fig.tight_layout(rect=(0, 0.02, 1, 1))
    return png_bytes(fig, dpi=90)
