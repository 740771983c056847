"""The posterior-mean space of several methods side by side (the paper's Figure 1 picture, one grid, one seed).

Run: .venv/bin/python scripts/posterior_panel.py GRID OUT.png METHOD [METHOD ...] [--seed S] [--snapshot I]
Each column is one method's cell GRID/METHOD/seed<S>: x = the true posterior mean, y = the encoder's mean, one
row per latent dimension, at snapshot I of its posterior_mean.npz (default the last, iteration 10,000 of the
synthetic preset). A method whose encoder lags shows a flat line; one that tracks the posterior, the diagonal.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from lagvae.atomic import atomic_write
from lagvae.plots import posterior_panel
from lagvae.training.run_folder import POSTERIOR_NPZ


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("grid", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("methods", nargs="+")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--snapshot", type=int, default=-1)
    args = parser.parse_args()
    data = {m: np.load(args.grid / m / f"seed{args.seed}" / POSTERIOR_NPZ) for m in args.methods}
    dims = next(iter(data.values()))["true_mean"].shape[-1]
    fig = Figure(figsize=(2.2 * len(data), 2.3 * dims))
    axes = fig.subplots(dims, len(data), squeeze=False)
    lim, i = 2.2, args.snapshot
    for col, (method, d) in enumerate(data.items()):
        for k in range(dims):
            ax = axes[k, col]
            posterior_panel(ax, d["true_mean"][i, :, k], d["encoder_mean"][i, :, k], lim)
            ax.tick_params(labelsize=7)
            if k == 0:
                ax.set_title(f"{method}\niter {int(d['step'][i])}", fontsize=9)
            if col == 0:
                ax.set_ylabel(f"encoder mean, z{k + 1}", fontsize=8)
            ax.set_xlabel(f"true posterior mean, z{k + 1}", fontsize=7)
    fig.suptitle(f"{args.grid.name}, seed {args.seed}: encoder mean against the true posterior mean", fontsize=10)
    fig.tight_layout()
    atomic_write(args.out, lambda f: fig.savefig(f, format="png", dpi=100))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
