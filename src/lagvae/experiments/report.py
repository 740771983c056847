"""Side-by-side result tables from run folders' final.json files."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

COLUMNS = (
    ("nll", "NLL", "{:.2f}"),
    ("kl", "KL", "{:.2f}"),
    ("mi", "MI", "{:.2f}"),
    ("mi_full", "MI (full)", "{:.2f}"),  # absent from runs made before it existed
    ("au", "AU", "{:d}"),
)


def results_table(results: Mapping[str, Mapping[str, Any]]) -> str:
    """A Markdown table, one row per method: NLL, KL, MI, MI (full), AU, (PPL), train seconds, epochs."""
    has_ppl = all("ppl" in r for r in results.values())
    header = ["method", *(title for _, title, _ in COLUMNS), *(["PPL"] if has_ppl else []), "time (s)", "epochs"]
    rows = []
    for name, r in results.items():
        cells = [name, *(fmt.format(r[key]) if key in r else "-" for key, _, fmt in COLUMNS)]
        if has_ppl:
            cells.append(f"{r['ppl']:.2f}")
        rows.append([*cells, f"{r['train_seconds']:.0f}", str(r["epochs"])])
    return markdown_table(header, rows)


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown pipe table: every table lagvae prints or writes goes through here."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])
