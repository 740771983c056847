"""`lagvae report DIR`: one self-contained HTML page for a run folder or a compare folder.

Everything comes from the folder's files (config.json, metrics.jsonl, final.json, test_nll.csv,
posterior_mean.png, compare.json). A compare folder's tables are built from its cells by the row model that
writes compare.md (lagvae.experiments.rows), never read back from compare.md. Figures are inlined as data URIs
and nothing is fetched, so the page can be mailed or archived. A small inline script marks the page
`data-rendered="ok"` once every figure has decoded, which the headless-browser check (scripts/check_report.py)
reads.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

from lagvae.atomic import atomic_write
from lagvae.config import ConfigError
from lagvae.experiments.rows import Summary, sections
from lagvae.training.run_folder import CONFIG, METRICS, POSTERIOR_PNG, RunFolder

REPORT = "report.html"
FINAL_KEYS = ("nll", "ppl", "elbo", "rec", "kl", "mi", "mi_full", "mi_full_n", "au", "epochs", "best_epoch")
FINAL_KEYS += ("train_seconds", "iw_samples")

STYLE = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.15em; margin-top: 1.6em; border-bottom: 1px solid #ddd; }
table { border-collapse: collapse; } td, th { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #f3f3f3; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; } pre { background: #f7f7f7; padding: 1em; overflow: auto; font-size: 12px; }
.alarm { color: #a00; } .muted { color: #777; }
"""
CHECK = """
window.addEventListener("load", () => {
  const broken = [...document.images].filter((img) => !(img.complete && img.naturalWidth > 0));
  document.body.dataset.rendered = broken.length ? "broken:" + broken.length : "ok";
  if (broken.length) console.error(broken.length + " figure(s) did not decode");
});
"""


def write_report(folder: Path | str, out: Path | str | None = None) -> Path:
    """Write the page for `folder` (a run folder or a compare folder) to `out` (default: folder/report.html)."""
    folder = Path(folder)
    if (folder / CONFIG).exists():
        title, body = _run_page(folder)
    elif _grid_runs(folder):
        title, body = _compare_page(folder)
    else:
        raise ConfigError(f"{folder} is neither a run folder (config.json) nor a compare folder (method/seedN runs)")
    page = (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n"
        f"<script>{CHECK}</script>\n</body></html>\n"
    )
    target = Path(out) if out is not None else folder / REPORT
    atomic_write(target, lambda f: f.write(page.encode()))
    return target


def _run_page(folder: Path) -> tuple[str, str]:
    from lagvae.plots import run_curves_png

    run = RunFolder(folder)
    config = run.read_json(CONFIG) or {}
    records = run.read_metrics()
    final = run.read_json("final.json")
    method = config.get("train", {}).get("method", "?")
    title = f"{config.get('preset', '?')} · {method} · {folder.name}"
    parts = ["<h2>Result on the test split</h2>"]
    if final is None:
        parts.append('<p class="muted">No final.json yet: the run has not finished.</p>')
    else:
        keys = [k for k in FINAL_KEYS if k in final]
        parts.append(_table(keys, [[_fmt(final[k]) for k in keys]]))
    parts.append("<h2>Validation, epoch by epoch</h2>")
    if records:
        parts.append(_img(run_curves_png(records), "per-epoch validation curves"))
        parts += _alarms(records)
    else:
        parts.append(f'<p class="muted">No {METRICS} yet.</p>')
    posterior = folder / POSTERIOR_PNG
    if posterior.exists():
        parts.append("<h2>Posterior-mean space</h2>")
        parts.append("<p>x: the true posterior mean E<sub>p(z|x)</sub>[z] on a grid; y: the encoder's mean.</p>")
        parts.append(_img(posterior.read_bytes(), "encoder mean against true posterior mean"))
    parts.append("<h2>Config</h2>")
    config_text = html.escape(json.dumps(config, indent=2))
    parts.append(f"<details><summary>config.json (every setting)</summary><pre>{config_text}</pre></details>")
    return title, "\n".join(parts)


def _alarms(records: list[dict[str, Any]]) -> list[str]:
    raised = [(r["epoch"], r["alarm"]) for r in records if r.get("alarm")]
    if not raised:
        return []
    items = "".join(f"<li>after epoch {epoch}: {html.escape(kind)}</li>" for epoch, kind in raised)
    return [f'<p class="alarm">Collapse alarm raised:</p><ul class="alarm">{items}</ul>']


def _grid_runs(folder: Path) -> dict[str, list[Path]]:
    """The compare folder's runs, method -> seed folders holding metrics.jsonl."""
    runs: dict[str, list[Path]] = {}
    if not folder.is_dir():
        return runs
    for method_dir in sorted(p for p in folder.iterdir() if p.is_dir()):
        seeds = sorted(p for p in method_dir.glob("seed*") if (p / METRICS).exists())
        if seeds:
            runs[method_dir.name] = seeds
    return runs


def _compare_page(folder: Path) -> tuple[str, str]:
    from lagvae.plots import metric_curves_png

    runs = _grid_runs(folder)
    parts = ["<h2>Comparison</h2>", _summary_html(_grid_summary(folder, runs))]
    curves = {m: [RunFolder(p).read_metrics() for p in seeds] for m, seeds in runs.items()}
    parts.append("<h2>Validation curves (mean over seeds)</h2>")
    parts.append(_img(metric_curves_png(curves), "validation curves per method"))
    parts.append("<h2>Runs</h2><ul>")
    for method, seeds in runs.items():
        for seed in seeds:
            records = curves[method][seeds.index(seed)]
            alarms = sum(1 for r in records if r.get("alarm"))
            note = f' <span class="alarm">({alarms} alarm epochs)</span>' if alarms else ""
            parts.append(f"<li>{html.escape(method)} / {html.escape(seed.name)}: {len(records)} epochs{note}</li>")
    parts.append("</ul>")
    return f"compare · {folder.name}", "\n".join(parts)


def _grid_summary(folder: Path, runs: dict[str, list[Path]]) -> Summary:
    """The grid's row model, rebuilt from its cells: the grid compare.json names (its methods, seeds and
    reference), else the method folders found here."""
    from lagvae.experiments.compare import read_cell, read_histories, saved_grid, summarise

    names = {p.name.removeprefix("seed") for paths in runs.values() for p in paths}
    seeds = sorted(int(name) for name in names if name.isdigit())
    grid = saved_grid(folder, list(runs), seeds)
    cells = {(m, s): read_cell(grid.folder(m, s)) for m in grid.methods for s in grid.seeds}
    results = {key: cell for key, cell in cells.items() if cell is not None}
    read_histories(grid, results)
    return summarise(grid, results)


def _summary_html(summary: Summary) -> str:
    """The sections of compare.md (lagvae.experiments.rows.sections) as HTML: the same cells."""
    out = []
    for section in sections(summary):
        out.append(f"<p>{html.escape(section.intro)}</p>")
        if section.head:
            out.append(_table(section.head, section.rows))
        if section.notes:
            out.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in section.notes) + "</ul>")
    return "\n".join(out)


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
