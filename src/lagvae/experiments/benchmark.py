"""`lagvae report GRID GRID ...` (or a folder of grids): one benchmark page over compare grids, and its Markdown.

Each grid's numbers are compare's row model (lagvae.experiments.rows.build_summary over the grid's cells,
`html_report.grid_summary`), with training times relative to vae-anneal so that every dataset shares one time
axis (vae-anneal is in every committed grid; vae is not in Yelp's). Nothing here computes a statistic: it lays
the rows out as a datasets x methods table, one table per dataset with the paired differences, and per dataset
a figure of the NLL difference against the training-time ratio (what each method buys and what it costs).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib
import matplotlib.ticker
from matplotlib.figure import Figure

from lagvae.config import ConfigError
from lagvae.experiments.doc_blocks import START, fill_blocks
from lagvae.experiments.html_report import (
    grid_runs,
    grid_summary,
    img,
    page_html,
    sections_html,
    target_paths,
    write_text,
)
from lagvae.experiments.rows import (
    NOT_PAIRED,
    Row,
    Section,
    Summary,
    paired_cells,
    runs_section,
    sections_markdown,
)
from lagvae.plots import png_bytes
from lagvae.stats import BETTER, TIE, WORSE
from lagvae.training.run_folder import FINAL

TIME_BASE = "vae-anneal"
PAGE = "benchmark"  # benchmark.html and benchmark.md
REFERENCE = "reference"  # the reference's own cell in the difference columns
VERDICT_CLASS = {BETTER: "better", WORSE: "worse", TIE: "tie"}


@dataclass
class GridResult:
    """One grid as the benchmark shows it: its dataset name (the folder's), preset, seeds and rows."""

    name: str
    preset: str
    seeds: tuple[int, ...]
    summary: Summary
    failed: dict[str, int] = field(default_factory=dict)  # method -> cells whose last attempt failed

    def test_settings(self) -> str:
        """K and the number of test examples of the finished runs, e.g. 'K = 500, 1,000 test examples'."""
        if not self.summary.runs:
            return "no cell finished yet"
        ks = sorted({r["iw_samples"] for _, _, r in self.summary.runs if "iw_samples" in r})
        ns = sorted({r["n"] for _, _, r in self.summary.runs if "n" in r})
        k = "K = " + " or ".join(str(x) for x in ks) if ks else "K unknown"
        return f"{k}, {' or '.join(f'{n:,}' for n in ns) or '?'} test examples"


def find_grids(paths: Sequence[Path]) -> list[Path]:
    """The compare folders among `paths`: each path that is one, else the subfolders of it that are and have a
    finished cell (a grid whose first cells still train joins the page when one finishes, so the page of a
    working copy equals that of the committed cells)."""
    grids = []
    for path in paths:
        if grid_runs(path):
            grids.append(path)
            continue
        subfolders = sorted(p for p in path.iterdir() if p.is_dir()) if path.is_dir() else []
        found = [p for p in subfolders if grid_runs(p) and any(p.glob(f"*/seed*/{FINAL}"))]
        if not found:
            raise ConfigError(f"{path} is neither a run folder, a compare folder nor a folder of compare folders")
        grids += found
    return grids


def load_grid(folder: Path, name: str | None = None, reference: str | None = None) -> GridResult:
    """A grid's rows (every method folder found; compare.json's seeds and any others on disk), times relative
    to vae-anneal, paired against `reference` (default: the grid's own)."""
    grid, summary = grid_summary(folder, time_references=(TIME_BASE,), every_method=True, reference=reference)
    failed: dict[str, int] = {}
    for line in summary.failures:  # "method seed S: error", as build_summary words them
        method = line.split(" seed ", 1)[0]
        failed[method] = failed.get(method, 0) + 1
    return GridResult(name or folder.name, grid.preset, grid.seeds, summary, failed)


def method_order(grids: Sequence[GridResult]) -> list[str]:
    """Every method of every grid, each in the order of the first grid that has it."""
    order: list[str] = []
    for g in grids:
        order += [row.method for row in g.summary.rows if row.method not in order]
    return order


# ---- the tables: rows.Section, so Markdown and HTML render the same cells ----


def overview_section(grids: Sequence[GridResult]) -> Section:
    """Methods x datasets (a row a method: there are more methods than datasets): each method's test NLL, the
    mean ± sd over its finished seeds, and how many."""
    by_grid = [{row.method: row for row in g.summary.rows} for g in grids]
    table = [[m, *(_nll_cell(rows[m]) if m in rows else "" for rows in by_grid)] for m in method_order(grids)]
    intro = (
        "Test NLL in nats (lower is better): mean ± sd over each method's finished seeds, '-' for the sd with "
        "one seed, the number of seeds in brackets; an empty cell: the method is not in that dataset's grid."
    )
    return Section(intro, ["method", *(g.name for g in grids)], table)


def _nll_cell(row: Row) -> str:
    return f"{row.stats['nll'].text(2)} ({row.runs})" if "nll" in row.stats else "none finished"


DATASET_HEAD = ["method", "NLL", "seeds", "KL", "I_q (mi_full)", "AU", f"time vs {TIME_BASE}", "cells finished"]


def dataset_section(g: GridResult) -> Section:
    """One dataset: each method's metrics and its paired difference against the grid's reference."""
    s = g.summary
    ref = s.reference
    head = [*DATASET_HEAD, f"NLL - {ref}" if ref else "NLL difference", "95% interval (t, over seeds)", "verdict"]
    table = []
    for row in s.rows:
        cells = [row.method, *_metric_cells(row)]
        failed = f" ({g.failed[row.method]} failed)" if row.method in g.failed else ""
        cells.append(f"{row.runs}/{len(g.seeds)}{failed}")
        if row.method == ref:
            cells += [REFERENCE, "", ""]
        elif ref is None:
            cells += ["-", "-", "no reference"]
        elif not row.runs:
            cells += ["-", "-", "none finished"]
        else:
            diff, interval, _, _, verdict = paired_cells(row.paired)
            cells += [diff, interval, verdict]
        table.append(cells)
    seeds = ", ".join(str(x) for x in g.seeds)
    paired = (
        f"paired against {ref} example by example, seed by seed (95% t interval over seeds; better or worse when it "
        "excludes 0, tie when it holds 0)"
        if ref
        else "no reference method (compare.json names none): no paired differences"
    )
    intro = f"{g.name} (preset {g.preset}; seeds {seeds}; {g.test_settings()}): {paired}."
    return Section(intro, head, table, [*s.unpaired, *s.failures])


def _metric_cells(row: Row) -> list[str]:
    if not row.runs:
        return ["-", "0", "-", "-", "-", "-"]
    text = [row.stats[k].text(d) if k in row.stats else "-" for k, d in (("nll", 2), ("kl", 2), ("mi_full", 2))]
    au = row.stats["au"].text(1) if "au" in row.stats else "-"
    time = "-" if row.total_time_rel is None else f"{row.total_time_rel:.2f}x"
    return [text[0], str(row.runs), text[1], text[2], au, time]


# ---- the figure ----


def tradeoff_png(g: GridResult, colours: dict[str, tuple[float, ...]]) -> bytes | None:
    """NLL difference against the reference (y, with its 95% interval) against training time relative to
    vae-anneal (x, log scale), one point per method (hollow: one seed); None without vae-anneal runs."""
    s = g.summary
    if s.time_reference is None or s.reference is None:
        return None
    fig = Figure(figsize=(8.5, 4.4))
    ax = fig.subplots()
    ax.axhline(0, color="0.6", lw=0.8)
    spread: list[float] = []
    xs: list[float] = []
    for row in s.rows:
        if row.total_time_rel is None:
            continue
        x, colour = row.total_time_rel, colours[row.method]
        if row.method == s.reference:
            ax.scatter([x], [0.0], marker="*", s=180, color=colour, zorder=3, label=f"{row.method} (reference)")
            xs.append(x)
            continue
        p = row.paired
        if p is None:
            continue
        if p.low is not None and p.high is not None:
            ax.errorbar([x], [p.mean], yerr=[[p.mean - p.low], [p.high - p.mean]], color=colour, capsize=3, lw=1.2)
            spread += [p.low, p.high]
        label = row.method + (" (1 seed)" if p.low is None else "")
        face = "white" if p.low is None else colour
        ax.scatter([x], [p.mean], s=50, facecolors=face, edgecolors=colour, zorder=3, label=label)
        spread.append(p.mean)
        xs.append(x)
    if not xs:  # the reference has no finished seed yet: nothing to pair
        return None
    ax.set_xscale("log")
    ax.set_xlim(min(xs) / 1.25, max(xs) * 1.25)
    ax.xaxis.set_major_locator(matplotlib.ticker.FixedLocator([0.25, 0.5, 1, 2, 4, 8, 16, 32, 64]))
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%gx"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(y=0.12)
    scale = ""
    if spread and max(abs(v) for v in spread) > 10:  # one far method (SA-VAE's +28) would flatten the rest
        ax.set_yscale("symlog", linthresh=2.0)
        ax.yaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%+g"))
        scale = ", log scale beyond ±2"
    ax.set_xlabel(f"training time relative to {s.time_reference} (log scale)")
    ax.set_ylabel(f"test NLL - {s.reference} (nats{scale})")
    ax.set_title(f"{g.name}: below 0 is lower NLL than {s.reference}; bars: 95% interval over seeds", fontsize=9)
    ax.grid(True, which="both", color="0.93")
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    fig.tight_layout()
    return png_bytes(fig, dpi=100)


def method_colours(methods: Sequence[str]) -> dict[str, tuple[float, ...]]:
    """One colour per method, the same on every dataset's figure."""
    palette = matplotlib.colormaps["tab20"].colors  # pairs (strong, light): the 10 strong ones first
    order = [*range(0, 20, 2), *range(1, 20, 2)]
    return {m: tuple(palette[order[i % 20]]) for i, m in enumerate(methods)}


# ---- the page and its twin ----


INTRO = (
    "One row model for every grid (compare's: lagvae.experiments.rows). NLL: the test importance-weighted "
    "bound; KL and I_q (mi_full) on the whole test split; AU: active units; time: total training seconds "
    f"relative to {TIME_BASE}'s on the same dataset (the runs shared the machine differently, so take ratios "
    "below 1.5x as equal); cells finished: seeds with a final.json of the seeds compare.json names or found "
    "on disk. Differences are paired per test example and per seed against each grid's reference; the "
    "verdict needs at least 2 seeds (docs/DESIGN.md, Verdicts)."
)


def write_benchmark(paths: Sequence[Path], out: Path | str | None = None, docs: Path | None = None) -> list[Path]:
    """benchmark.html (self-contained) and benchmark.md with one PNG per dataset beside it, and with `docs` the
    generated blocks of that Markdown file refilled (doc_blocks: 'overview' and one per dataset); returns them."""
    folders = find_grids(paths)
    names = [p.name for p in folders]
    if len(set(names)) < len(names):  # two grids of one name: tell them apart by their paths
        names = [str(p) for p in folders]
    grids = [load_grid(folder, name) for folder, name in zip(folders, names, strict=True)]
    default = Path(paths[0]) if len(paths) == 1 else Path.cwd()
    page, twin = target_paths(out, default, PAGE)
    colours = method_colours(method_order(grids))
    figures = {g.name: tradeoff_png(g, colours) for g in grids}
    title = "lagvae benchmark: " + ", ".join(g.name for g in grids)
    written = [page, twin]
    overview = overview_section(grids)
    blocks = {"overview": sections_markdown([overview])}  # the tables, by name, for `docs`
    md = [f"# {title}\n", INTRO + "\n", "## Test NLL, every dataset\n", blocks["overview"]]
    body = [f"<p>{html.escape(INTRO)}</p>", "<h2>Test NLL, every dataset</h2>", sections_html([overview])]
    for g in grids:
        section = dataset_section(g)
        blocks[g.name] = sections_markdown([section])
        md += [f"## {g.name}\n", blocks[g.name]]
        body += [f"<h2>{html.escape(g.name)}</h2>", sections_html([section], _verdict_class)]
        png = figures[g.name]
        if png is None:
            note = f"No figure: the grid has no {TIME_BASE} runs to relate times to, or no reference."
            md.append(note + "\n")
            body.append(f'<p class="muted">{html.escape(note)}</p>')
            continue
        figure = page.with_name(f"{page.stem}_{_slug(g.name)}.png")
        write_text(figure, png)
        written.append(figure)
        md.append(f"![{g.name}: NLL difference against training time]({figure.name})\n")
        body.append(img(png, f"{g.name}: NLL difference against training time"))
    write_text(page, page_html(title, '<div class="nowrap">\n' + "\n".join(body) + "\n</div>"))
    write_text(twin, "\n".join(md))
    if docs is not None:
        text = docs.read_text()
        blocks |= docs_blocks(text, dict(zip(names, folders, strict=True)))
        write_text(docs, fill_blocks(text, blocks, str(docs)))
        written.append(docs)
    return written


def docs_blocks(text: str, folders: dict[str, Path]) -> dict[str, str]:
    """The docs-only blocks that `text` names: GRID@METHOD, grid GRID's table paired against METHOD rather than
    its own reference (a second pairing, e.g. when the grid's reference collapsed); GRID/runs, each finished
    cell of GRID with its epochs and its training and test times (what a grid's plan is checked against)."""
    blocks = {}
    for name in {m["name"] for m in START.finditer(text)}:
        grid, sep, method = name.partition("@")
        if sep and grid in folders:
            blocks[name] = sections_markdown([dataset_section(load_grid(folders[grid], grid, method))])
        grid, sep, part = name.partition("/")
        if sep and part == "runs" and grid in folders:
            blocks[name] = sections_markdown([runs_section(load_grid(folders[grid], grid).summary)])
    return blocks


def _verdict_class(text: str) -> str | None:
    return VERDICT_CLASS.get(text) or ("muted" if text in (NOT_PAIRED, REFERENCE) else None)


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
