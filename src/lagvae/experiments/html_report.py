"""`lagvae report PATH...`: one self-contained HTML page for a run folder, a compare folder, several run
folders (lagvae.experiments.run_set) or several compare grids (lagvae.experiments.benchmark).

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
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lagvae.atomic import atomic_write
from lagvae.config import ConfigError
from lagvae.experiments.rows import TIME_REFERENCES, Section, Summary, sections
from lagvae.training.run_folder import CONFIG, METRICS, POSTERIOR_PNG, RunFolder

if TYPE_CHECKING:
    from lagvae.experiments.compare import Grid

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
.nowrap td { white-space: nowrap; }
td.better { background: #e3f4e1; } td.worse { background: #fbe3e1; } td.tie { background: #f4f4f4; }
"""
CHECK = """
window.addEventListener("load", () => {
  const broken = [...document.images].filter((img) => !(img.complete && img.naturalWidth > 0));
  document.body.dataset.rendered = broken.length ? "broken:" + broken.length : "ok";
  if (broken.length) console.error(broken.length + " figure(s) did not decode");
});
"""


def write_pages(
    paths: Sequence[Path | str],
    out: Path | str | None = None,
    reference: str | None = None,
    docs: Path | None = None,
) -> list[Path]:
    """`lagvae report PATH...`: one run or compare folder gives its page (`write_report`); several run folders
    the paired comparison of separately trained runs; compare folders, or a folder of them, the benchmark
    page. `out`: the page (a name ending .html; its Markdown twin beside it) or a folder to write into;
    `docs`: a Markdown file whose generated blocks the benchmark refills. Returns the files written."""
    folders = [Path(p) for p in paths]
    if docs is not None and not docs.is_file():
        raise ConfigError(f"--docs {docs}: no such file")
    runs = [(p / CONFIG).exists() for p in folders]
    single = len(folders) == 1 and (runs[0] or grid_runs(folders[0]))
    if docs is not None and (single or all(runs)):
        raise ConfigError("--docs applies to the benchmark page (several compare folders or a folder of them)")
    if single:
        if reference is not None:
            raise ConfigError("--reference applies to several run folders; a grid's reference is its compare.json's")
        page = target_paths(out, folders[0], "report")[0]
        return [write_report(folders[0], page)]
    if all(runs):
        from lagvae.experiments.run_set import write_runs_page

        return write_runs_page(folders, out, reference)
    if any(runs):
        named = ", ".join(str(p) for p, run in zip(folders, runs, strict=True) if run)
        raise ConfigError(f"give run folders or compare folders, not both (run folders: {named})")
    if reference is not None:
        raise ConfigError("--reference applies to several run folders; a grid's reference is its compare.json's")
    from lagvae.experiments.benchmark import write_benchmark

    return write_benchmark(folders, out, docs)


def target_paths(out: Path | str | None, folder: Path, stem: str) -> tuple[Path, Path]:
    """The page and its Markdown twin: `out` when it names an .html file, else `stem`.html and `stem`.md in
    the folder `out` (default `folder`)."""
    if out is not None and Path(out).suffix == ".html":
        return Path(out), Path(out).with_suffix(".md")
    where = Path(out) if out is not None else folder
    return where / f"{stem}.html", where / f"{stem}.md"


def write_report(folder: Path | str, out: Path | str | None = None) -> Path:
    """Write the page for `folder` (a run folder or a compare folder) to `out` (default: folder/report.html)."""
    folder = Path(folder)
    if (folder / CONFIG).exists():
        title, body = _run_page(folder)
    elif grid_runs(folder):
        title, body = _compare_page(folder)
    else:
        raise ConfigError(f"{folder} is neither a run folder (config.json) nor a compare folder (method/seedN runs)")
    target = Path(out) if out is not None else folder / REPORT
    write_text(target, page_html(title, body))
    return target


def page_html(title: str, body: str) -> str:
    """A whole self-contained page: the style, the body and the script that marks it rendered."""
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n{body}\n"
        f"<script>{CHECK}</script>\n</body></html>\n"
    )


def write_text(target: Path, text: str | bytes) -> None:
    """Write `target` atomically (atomic_write creates its folder)."""
    data = text.encode() if isinstance(text, str) else text
    atomic_write(target, lambda f: f.write(data))


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
        parts.append(img(run_curves_png(records), "per-epoch validation curves"))
        parts += _alarms(records)
    else:
        parts.append(f'<p class="muted">No {METRICS} yet.</p>')
    posterior = folder / POSTERIOR_PNG
    if posterior.exists():
        parts.append("<h2>Posterior-mean space</h2>")
        parts.append("<p>x: the true posterior mean E<sub>p(z|x)</sub>[z] on a grid; y: the encoder's mean.</p>")
        parts.append(img(posterior.read_bytes(), "encoder mean against true posterior mean"))
    parts.append("<h2>Config</h2>")
    config_text = html.escape(json.dumps(config, indent=2))
    parts.append(f"<details><summary>config.json (every setting)</summary><pre>{config_text}</pre></details>")
    return title, "\n".join(parts)


def _alarms(records: list[dict[str, Any]]) -> list[str]:
    from lagvae.training.alarm import ALARM_MEANINGS, alarm_epochs, epoch_ranges

    out = []
    for kind, epochs in alarm_epochs(records).items():
        title, meaning = ALARM_MEANINGS.get(kind, (kind, ""))
        after = f"after epoch{'s' if len(epochs) > 1 else ''} {epoch_ranges(epochs)}"
        out.append(f'<p><b class="alarm">{html.escape(title)}</b>, {after}: {html.escape(meaning)}</p>')
    return out


def grid_runs(folder: Path) -> dict[str, list[Path]]:
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

    runs = grid_runs(folder)
    parts = ["<h2>Comparison</h2>", _summary_html(grid_summary(folder)[1])]
    curves = {m: [RunFolder(p).read_metrics() for p in seeds] for m, seeds in runs.items()}
    parts.append("<h2>Validation curves (mean over seeds)</h2>")
    parts.append(img(metric_curves_png(curves), "validation curves per method"))
    parts.append("<h2>Runs</h2><ul>")
    for method, seeds in runs.items():
        for seed in seeds:
            records = curves[method][seeds.index(seed)]
            alarms = sum(1 for r in records if r.get("alarm"))
            note = f' <span class="alarm">({alarms} alarm epochs)</span>' if alarms else ""
            parts.append(f"<li>{html.escape(method)} / {html.escape(seed.name)}: {len(records)} epochs{note}</li>")
    parts.append("</ul>")
    return f"compare · {folder.name}", "\n".join(parts)


def grid_summary(
    folder: Path,
    *,
    time_references: Sequence[str] = TIME_REFERENCES,
    every_method: bool = False,
    reference: str | None = None,
) -> tuple[Grid, Summary]:
    """The grid and its row model, rebuilt from its cells: the grid compare.json names (its methods, seeds and
    reference), else the method folders found here. `every_method`: also the finished or failed cells found
    that compare.json does not name (another compare process added them to the same folder; one still training
    is left out, so the rows are the same on any copy of the committed cells), and the default reference among
    them when compare.json names none (a later grid of other methods rewrote it). `reference`: pair against this
    method instead of the grid's own."""
    from dataclasses import replace

    from lagvae.experiments.compare import choose_reference, read_cell, read_histories, saved_grid
    from lagvae.experiments.rows import build_summary, read_test_cell

    runs = grid_runs(folder)
    seed_names = ((m, p.name.removeprefix("seed")) for m, paths in runs.items() for p in paths)
    on_disk = [(m, int(name)) for m, name in seed_names if name.isdigit()]
    grid = saved_grid(folder, list(runs), sorted({seed for _, seed in on_disk}))
    settled: dict[tuple[str, int], dict[str, Any]] = {}  # cells found on disk that have finished or failed
    if every_method:
        settled = {key: cell for key in on_disk if (cell := read_cell(grid.folder(*key))) is not None}
        extra = [m for m in runs if m not in grid.methods and any(k == m for k, _ in settled)]
        methods = (*grid.methods, *extra)
        seeds = tuple(sorted({*grid.seeds, *(seed for _, seed in settled)}))
        grid = replace(grid, methods=methods, seeds=seeds, reference=grid.reference or choose_reference(methods, None))
    if reference is not None:
        if reference not in grid.methods:
            raise ConfigError(f"{folder} has no method {reference!r} to pair against ({', '.join(grid.methods)})")
        grid = replace(grid, reference=reference)
    cells = {(m, s): settled.get((m, s)) or read_cell(grid.folder(m, s)) for m in grid.methods for s in grid.seeds}
    results = {key: cell for key, cell in cells.items() if cell is not None}
    read_histories(grid, results)
    tests = {key: read_test_cell(grid.folder(*key), r) for key, r in results.items() if r["ok"]}
    summary = build_summary(results, grid.methods, grid.seeds, grid.reference, tests, time_references=time_references)
    return grid, summary


def _summary_html(summary: Summary) -> str:
    """The sections of compare.md (lagvae.experiments.rows.sections) as HTML: the same cells."""
    return sections_html(sections(summary))


def sections_html(blocks: Sequence[Section], cell_class: Callable[[str], str | None] = lambda _: None) -> str:
    """Sections as HTML (the intro, the table, the notes); `cell_class` may give a cell's text a CSS class."""
    out = []
    for section in blocks:
        out.append(f"<p>{html.escape(section.intro)}</p>")
        if section.head:
            out.append(_table(section.head, section.rows, cell_class))
        if section.notes:
            out.append("<ul>" + "".join(f"<li>{html.escape(note)}</li>" for note in section.notes) + "</ul>")
    return "\n".join(out)


def _table(header: list[str], rows: list[list[str]], cell_class: Callable[[str], str | None] = lambda _: None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(_td(c, cell_class(c)) for c in row) + "</tr>" for row in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _td(text: str, css: str | None) -> str:
    return f'<td class="{css}">{html.escape(text)}</td>' if css else f"<td>{html.escape(text)}</td>"


def _fmt(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def img(png: bytes, alt: str) -> str:
    """A PNG inlined as a data URI."""
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'
