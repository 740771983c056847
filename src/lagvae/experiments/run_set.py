"""`lagvae report RUN_A RUN_B ...`: separately trained run folders compared as a grid, keeping their real seeds.

The runs become cells of compare's row model (lagvae.experiments.rows): the label is the compare folder's
method name when a run sits in METHOD/seedN, else its config's train.method; the seed is its config's
train.seed. Each method is paired with the reference seed by seed when both have the same seeds, else in
order of seed (the smallest with the smallest): any pairing of independent seeds is a valid paired design,
and the test examples themselves must still match (rows.refusal says what differs when they do not).
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lagvae.config import ConfigError
from lagvae.experiments.compare import DEFAULT_REFERENCES, read_cell
from lagvae.experiments.html_report import img, page_html, sections_html, target_paths, write_text
from lagvae.experiments.rows import Summary, build_summary, read_test_cell, sections, sections_markdown
from lagvae.training.run_folder import CONFIG, RunFolder

Key = tuple[str, int]


def label_runs(folders: Sequence[Path]) -> dict[Key, Path]:
    """(label, seed) of each run folder; two runs of one label and seed are told apart by their folder names."""
    keyed: list[tuple[str, int, Path]] = []
    for folder in folders:
        config = RunFolder(folder).read_json(CONFIG) or {}
        train = config.get("train", {})
        seed = int(train.get("seed", 0))
        label = folder.parent.name if folder.name == f"seed{seed}" else str(train.get("method", folder.name))
        keyed.append((label, seed, folder))
    counts: dict[Key, int] = {}
    for label, seed, _ in keyed:
        counts[(label, seed)] = counts.get((label, seed), 0) + 1
    out: dict[Key, Path] = {}
    for label, seed, folder in keyed:
        key = (folder.name if counts[(label, seed)] > 1 else label, seed)
        if key in out:
            raise ConfigError(f"{out[key]} and {folder} are both {label} seed {seed}; rename one folder")
        out[key] = folder
    return out


def partner_seeds(methods: Sequence[str], keys: Sequence[Key], reference: str) -> dict[str, list[tuple[int, int]]]:
    """Per method, its (seed, reference seed) pairs: the same seeds when both have them, else in seed order."""
    seeds = {m: sorted(s for label, s in keys if label == m) for m in methods}
    ref = seeds[reference]
    pairs = {}
    for m in methods:
        pairs[m] = [(s, s) for s in seeds[m]] if set(seeds[m]) == set(ref) else list(zip(seeds[m], ref, strict=False))
    return pairs


def runs_summary(folders: Sequence[Path], reference: str | None = None) -> tuple[Summary, dict[Key, Path], list[str]]:
    """The row model of separately trained runs, the run of each (label, seed), and notes (unfinished runs,
    seeds paired in order)."""
    runs = label_runs(folders)
    methods = list(dict.fromkeys(label for label, _ in runs))
    if reference is not None and reference not in methods:
        raise ConfigError(f"--reference {reference} is none of these runs' methods ({', '.join(methods)})")
    ref = reference or next((m for m in DEFAULT_REFERENCES if m in methods), methods[0])
    notes: list[str] = []
    results: dict[Key, dict[str, Any]] = {}
    for key, folder in runs.items():
        cell = read_cell(folder)
        if cell is None:
            notes.append(f"{key[0]} seed {key[1]} ({folder}): not finished (no final.json), only its curves are shown")
            continue
        results[key] = cell
        if cell["ok"]:  # how long aggressive mode lasted, as compare counts it
            cell["aggressive_epochs"] = sum(bool(r.get("aggressive")) for r in RunFolder(folder).read_metrics())
    tests = {key: read_test_cell(runs[key], r) for key, r in results.items() if r["ok"]}
    finished = [key for key, r in results.items() if r["ok"]]
    partners = partner_seeds(methods, finished, ref)
    for m, pairs in partners.items():
        if m != ref and any(s != t for s, t in pairs):
            notes.append(f"{m} paired with {ref} in seed order: " + ", ".join(f"seed {s} with {t}" for s, t in pairs))
    seeds = sorted({s for _, s in runs})
    summary = build_summary(results, methods, seeds, ref, tests, partners=partners)
    return summary, runs, notes


def write_runs_page(folders: Sequence[Path], out: Path | str | None = None, reference: str | None = None) -> list[Path]:
    """report.html (self-contained) and report.md with the curves' PNG beside it; returns them."""
    from lagvae.plots import metric_curves_png

    summary, runs, notes = runs_summary(folders, reference)
    page, twin = target_paths(out, Path.cwd(), "report")
    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for (label, _), folder in runs.items():
        curves.setdefault(label, []).append(RunFolder(folder).read_metrics())
    png = metric_curves_png(curves)
    figure = page.with_name(f"{page.stem}_curves.png")
    title = "lagvae report: " + ", ".join(dict.fromkeys(label for label, _ in runs))
    where = [f"{label} seed {seed}: {folder}" for (label, seed), folder in runs.items()]
    body = [sections_html(sections(summary)), "<h2>Validation curves (mean over seeds)</h2>"]
    body.append(img(png, "validation curves per method"))
    body.append("<h2>Run folders</h2><ul>" + "".join(f"<li>{html.escape(x)}</li>" for x in where + notes) + "</ul>")
    md = [f"# {title}\n", sections_markdown(sections(summary)), f"![validation curves per method]({figure.name})\n"]
    md.append("Run folders:\n\n" + "".join(f"- {x}\n" for x in where + notes))
    write_text(page, page_html(title, "\n".join(body)))
    write_text(twin, "\n".join(md))
    write_text(figure, png)
    return [page, twin, figure]
