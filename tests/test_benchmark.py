"""`lagvae report` over several grids (the benchmark page) and over separately trained runs (paired, real seeds)."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from lagvae.cli import main
from lagvae.config import ConfigError
from lagvae.experiments.compare import Grid, run_grid
from lagvae.experiments.html_report import write_pages
from tests.test_stats import _md_tables

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from check_report import browser, check  # noqa: E402

N = 40  # test examples per cell
# method -> (per-seed shift of the test NLL against the reference, training seconds)
PTB = {
    "aggressive-anneal": ((0.0, 0.0, 0.0), 400.0),
    "vae-anneal": ((1.0, 1.2, 1.4), 100.0),  # +1.2, sd 0.2: [+0.703, +1.697] by hand, worse
    "lm": ((-0.5, 0.5, 0.1), 80.0),  # +0.033, an interval across 0: tie
    "savae-anneal": ((5.0,), 1500.0),  # one seed: no sd, no verdict
    "vae": ((0.9, 1.0, 1.1), 200.0),  # in the grid, yet times stay relative to vae-anneal (compare's use vae)
}
YELP = {"aggressive-anneal": ((0.0, 0.0), 300.0), "vae-anneal": ((-0.3, -0.5), 100.0)}  # [-1.671, +0.871]: tie


def _cell(folder: Path, method: str, seed: int, shift: float, seconds: float) -> None:
    """A finished run folder as `lagvae train` leaves it, with test NLLs `base + shift` per example."""
    folder.mkdir(parents=True)
    base = 100.0 + np.linspace(-5, 5, N)
    nll = base + shift
    np.savetxt(folder / "test_nll.csv", np.c_[np.arange(N), nll], fmt=["%d", "%.6f"], delimiter=",", header="index,nll")
    (folder / "test_nll.csv").write_text((folder / "test_nll.csv").read_text().replace("# index", "index"))
    (folder / "provenance.json").write_text(json.dumps({"data": {"test": "h"}}))
    (folder / "config.json").write_text(json.dumps({"preset": "ptb", "train": {"method": method, "seed": seed}}))
    final = {"nll": float(nll.mean()), "kl": 1.0 + seed, "mi": 0.5, "mi_full": 0.25 * seed, "au": 2 * seed}
    final |= {"epochs": 10, "best_epoch": 9, "train_seconds": seconds, "iw_samples": 500, "n": N, "method": method}
    (folder / "final.json").write_text(json.dumps(final))
    records = [{"epoch": e, "step": 5 * e, "train_seconds": seconds * e / 2, "elbo": -110.0 + e} for e in (0, 1)]
    records = [r | {"kl": 1.0, "mi": 0.5, "mi_full": 0.5, "au": 2, "lr": 1.0} for r in records]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


def _grid(root: Path, name: str, preset: str, cells: dict, seeds: tuple[int, ...]) -> Path:
    folder = root / name
    for method, (shifts, seconds) in cells.items():
        for seed, shift in zip(seeds, shifts, strict=False):
            _cell(folder / method / f"seed{seed}", method, seed, shift, seconds)
    spec = {"preset": preset, "methods": list(cells), "seeds": list(seeds), "reference": "aggressive-anneal"}
    (folder / "compare.json").write_text(json.dumps(spec))
    return folder


@pytest.fixture
def grids(tmp_path: Path) -> Path:
    root = tmp_path / "grids"
    _grid(root, "ptb", "ptb", PTB, (0, 1, 2))
    _grid(root, "yelp", "yelp", YELP, (0, 1))
    return root


def _by_method(table: list[list[str]]) -> dict[str, dict[str, str]]:
    head = table[0]
    return {row[0]: dict(zip(head, row, strict=True)) for row in table[1:]}


def test_the_benchmark_tables_hold_the_row_models_numbers(grids, tmp_path, inline_workers, capsys):
    out = tmp_path / "page"
    assert main(["report", str(grids), "--out", str(out)]) == 0
    assert "benchmark.html" in capsys.readouterr().out
    md = (out / "benchmark.md").read_text()
    overview, ptb, yelp = _md_tables(md)
    # datasets x methods: NLL mean ± sd (n); a one-seed sd is '-', a method outside a grid an empty cell
    assert overview[0] == ["method", "ptb", "yelp"]
    assert [row[0] for row in overview[1:]] == ["aggressive-anneal", "vae-anneal", "lm", "savae-anneal", "vae"]
    assert overview[3] == ["lm", "100.03 ± 0.50 (3)", ""] and overview[4] == ["savae-anneal", "105.00 ± - (1)", ""]
    rows = _by_method(ptb)
    assert rows["vae-anneal"]["NLL - aggressive-anneal"] == "+1.200"  # seeds' mean differences 1.0, 1.2, 1.4
    assert rows["vae-anneal"]["95% interval (t, over seeds)"] == "[+0.703, +1.697]"  # 1.2 ± 4.3027 x 0.2 / √3
    assert rows["vae-anneal"]["verdict"] == "worse" and rows["lm"]["verdict"] == "tie"
    assert rows["savae-anneal"]["verdict"] == "one seed, no verdict" and rows["savae-anneal"]["NLL"].endswith("± -")
    assert rows["savae-anneal"]["seeds"] == "1" and rows["savae-anneal"]["cells finished"] == "1/3"
    assert rows["aggressive-anneal"]["time vs vae-anneal"] == "4.00x" and rows["lm"]["time vs vae-anneal"] == "0.80x"
    assert rows["vae"]["time vs vae-anneal"] == "2.00x"
    assert rows["aggressive-anneal"]["NLL - aggressive-anneal"] == "reference"
    assert rows["lm"]["KL"] == "2.00 ± 1.00" and rows["lm"]["I_q (mi_full)"] == "0.25 ± 0.25"
    assert _by_method(yelp)["vae-anneal"]["95% interval (t, over seeds)"] == "[-1.671, +0.871]"
    # the same cells as compare's own tables (compare --report-only over the same folder: one row model)
    for name, methods in (("ptb", PTB), ("yelp", YELP)):
        copy = shutil.copytree(grids / name, tmp_path / "copy" / name)
        seeds = json.loads((copy / "compare.json").read_text())["seeds"]
        grid = Grid(name, tuple(methods), tuple(seeds), copy, reference="aggressive-anneal")
        run_grid(grid, report_only=True)
        methods_table, paired, _ = _md_tables((copy / "compare.md").read_text())
        ours = _by_method(ptb if name == "ptb" else yelp)
        for method, row in _by_method(methods_table).items():
            assert ours[method]["NLL"] == row["NLL"] and ours[method]["KL"] == row["KL"], method
            assert ours[method]["AU"] == row["AU"] and ours[method]["seeds"] == row["runs"]
        for method, row in _by_method(paired).items():
            assert ours[method]["verdict"] == row["verdict"], method
            assert ours[method]["95% interval (t, over seeds)"] == row["95% interval (t, over seeds)"]
    # one self-contained page with one figure per dataset, the twin's PNGs beside it
    page = (out / "benchmark.html").read_text()
    assert page.count("data:image/png;base64,") == 2 and not re.search(r"""src=["']?(https?:|//|file:)""", page)
    assert '<td class="worse">worse</td>' in page and (out / "benchmark_ptb.png").stat().st_size > 5_000
    assert "![ptb: NLL difference against training time](benchmark_ptb.png)" in md


def test_several_compare_folders_and_an_html_name(grids, tmp_path):
    # a cell that another compare process added to the folder (not in its compare.json) is shown too, and when
    # that process rewrote compare.json with its own methods and no reference, the default reference still pairs
    _cell(grids / "yelp" / "bn-vae" / "seed1", "bn-vae", 1, 0.1, 120.0)
    spec = {"preset": "yelp", "methods": ["bn-vae"], "seeds": [1], "reference": None}
    (grids / "yelp" / "compare.json").write_text(json.dumps(spec))
    written = write_pages([grids / "yelp", grids / "ptb"], tmp_path / "b.html")
    assert written[:2] == [tmp_path / "b.html", tmp_path / "b.md"]
    md = (tmp_path / "b.md").read_text()
    assert md.startswith("# lagvae benchmark: yelp, ptb")
    row = _by_method(_md_tables(md)[1])["bn-vae"]
    assert (row["cells finished"], row["time vs vae-anneal"]) == ("1/2", "1.20x")
    assert row["verdict"] == "one seed, no verdict" and row["NLL - aggressive-anneal"] == "+0.100"


def test_runs_trained_apart_are_paired_and_keep_their_seeds(grids, tmp_path, capsys):
    # two runs of different seeds outside any grid: labelled by their method, paired in seed order
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(grids / "ptb" / "vae-anneal" / "seed2", a)
    shutil.copytree(grids / "ptb" / "aggressive-anneal" / "seed0", b)
    out = tmp_path / "runs"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    methods, paired, each = _md_tables(md)
    assert _by_method(paired)["vae-anneal"]["NLL difference"] == "+1.400"  # seed 2's shift
    assert _by_method(paired)["vae-anneal"]["verdict"] == "one seed, no verdict"
    assert [row[:2] for row in each[1:]] == [["vae-anneal", "2"], ["aggressive-anneal", "0"]]  # the real seeds
    assert "vae-anneal paired with aggressive-anneal in seed order: seed 2 with 0" in md
    assert (out / "report_curves.png").stat().st_size > 5_000 and "report.html" in capsys.readouterr().out
    # seed folders of a grid keep the grid's labels; --reference picks the other side
    runs = [grids / "ptb" / m / f"seed{s}" for m in ("vae-anneal", "lm") for s in (0, 1, 2)]
    write_pages(runs, tmp_path / "r.html", reference="lm")
    (_, paired, _) = _md_tables((tmp_path / "r.md").read_text())
    assert paired[0][0] == "method - lm" and _by_method(paired)["vae-anneal"]["seeds"] == "3"


def test_report_errors_are_one_line(grids, tmp_path, capsys):
    run = grids / "ptb" / "lm" / "seed0"
    for args, message in (
        ([str(run), str(grids / "ptb")], "not both"),
        ([str(tmp_path / "nothing-here"), str(grids)], "neither a run folder"),
        ([str(run), str(grids / "ptb" / "lm" / "seed1"), "--reference", "vae"], "none of these runs' methods"),
        ([str(grids), "--reference", "lm"], "--reference applies to several run folders"),
    ):
        assert main(["report", *args]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
    with pytest.raises(ConfigError, match="both lm seed 0"):
        copy = shutil.copytree(run, tmp_path / "x" / "lm" / "seed0")
        write_pages([run, copy], tmp_path / "r.html")


@pytest.mark.slow
@pytest.mark.skipif(browser() is None, reason="no chromium on PATH (apt-get install chromium)")
def test_the_benchmark_page_renders_in_headless_chromium(grids, tmp_path):
    page = write_pages([grids], tmp_path)[0]
    assert check(page, tmp_path / "shot.png", 1280, 1800) is None
    assert (tmp_path / "shot.png").stat().st_size > 20_000
    runs = write_pages([grids / "ptb" / "lm" / "seed0", grids / "ptb" / "vae-anneal" / "seed0"], tmp_path / "r.html")
    assert check(runs[0], None, 1280, 1200) is None


def test_a_grid_whose_reference_has_not_finished_gets_no_figure_instead_of_a_traceback(grids, tmp_path):
    for final in (grids / "ptb" / "aggressive-anneal").glob("seed*/final.json"):
        final.unlink()  # a grid in progress: the reference's cells are still training
    assert main(["report", str(grids), "--out", str(tmp_path / "page")]) == 0
    md = (tmp_path / "page" / "benchmark.md").read_text()
    assert "benchmark_yelp.png" in md and "benchmark_ptb.png" not in md


def test_report_refills_the_generated_blocks_of_a_document_and_keeps_its_prose(grids, tmp_path, capsys):
    doc = tmp_path / "RESULTS.md"
    stale = "| method | NLL |\n|---|---|\n| vae-anneal | 1.00 (typed by hand) |\n"
    doc.write_text(
        f"# Results\n\nprose before\n\n<!-- lagvae report: ptb -->\n{stale}<!-- end lagvae report -->\n\n"
        "prose between\n<!-- lagvae report: overview -->\n<!-- end lagvae report -->\nprose after\n"
    )
    assert main(["report", str(grids), "--out", str(tmp_path / "page"), "--docs", str(doc)]) == 0
    text = doc.read_text()
    assert "typed by hand" not in text and "prose before" in text and text.endswith("prose after\n")
    ptb, overview = _md_tables(text)
    md_tables = _md_tables((tmp_path / "page" / "benchmark.md").read_text())
    assert ptb == md_tables[1] and overview == md_tables[0]  # exactly the page's tables, in the document's order
    assert _by_method(ptb)["vae-anneal"]["verdict"] == "worse"
    assert main(["report", str(grids), "--out", str(tmp_path / "page"), "--docs", str(doc)]) == 0
    assert doc.read_text() == text  # refilling is idempotent
    capsys.readouterr()
    # a block the report lacks, and one without its end, are one-line errors that leave the document alone
    for body, message in (
        ("<!-- lagvae report: yahoo -->\n<!-- end lagvae report -->\n", "'yahoo', which the report does not have"),
        ("<!-- lagvae report: ptb -->\n| x |\n", "has no '<!-- end lagvae report -->' line"),
        ("<!-- lagvae report: ptb -->\n<!-- lagvae report: yelp -->\n<!-- end lagvae report -->\n", "inside"),
    ):
        doc.write_text(body)
        assert main(["report", str(grids), "--out", str(tmp_path / "page"), "--docs", str(doc)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and message in err, err
        assert doc.read_text() == body
    assert main(["report", str(grids / "ptb"), "--docs", str(doc)]) == 2
    assert "--docs applies to the benchmark page" in capsys.readouterr().err


def test_a_grid_at_method_block_pairs_that_grid_against_another_method(grids, tmp_path, capsys):
    doc = tmp_path / "RESULTS.md"
    doc.write_text("<!-- lagvae report: ptb@vae-anneal -->\n<!-- end lagvae report -->\n")
    assert main(["report", str(grids), "--out", str(tmp_path / "page"), "--docs", str(doc)]) == 0
    (table,) = _md_tables(doc.read_text())
    rows = _by_method(table)
    assert rows["vae-anneal"]["NLL - vae-anneal"] == "reference"
    assert rows["aggressive-anneal"]["NLL - vae-anneal"] == "-1.200"  # 0 - (1.0, 1.2, 1.4), example by example
    assert rows["aggressive-anneal"]["verdict"] == "better"
    page = (tmp_path / "page" / "benchmark.md").read_text()
    assert "NLL - vae-anneal" not in page  # the page keeps the grid's own reference
    doc.write_text("<!-- lagvae report: ptb@nope -->\n<!-- end lagvae report -->\n")
    capsys.readouterr()
    assert main(["report", str(grids), "--out", str(tmp_path / "page"), "--docs", str(doc)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "no method 'nope' to pair against" in err, err


def test_a_grid_runs_block_lists_each_finished_cell_with_its_costs(grids, tmp_path):
    final = grids / "yelp" / "vae-anneal" / "seed1" / "final.json"
    final.write_text(json.dumps(json.loads(final.read_text()) | {"test_seconds": 1234.4}))
    doc = tmp_path / "RESULTS.md"
    doc.write_text("<!-- lagvae report: yelp/runs -->\n<!-- end lagvae report -->\n")
    assert main(["report", str(grids), "--out", str(tmp_path / "page"), "--docs", str(doc)]) == 0
    (table,) = _md_tables(doc.read_text())
    cells = {(r[0], r[1]): dict(zip(table[0], r, strict=True)) for r in table[1:]}
    assert sorted(cells) == [(m, s) for m in ("aggressive-anneal", "vae-anneal") for s in ("0", "1")]
    assert cells[("vae-anneal", "1")]["test s"] == "1234"  # the test's own time, apart from training's
    assert cells[("vae-anneal", "0")]["test s"] == "-"  # a final.json written before tests were timed
    assert cells[("aggressive-anneal", "0")]["train s"] == "300"


def test_a_grid_with_no_finished_cell_says_so(grids, tmp_path):
    for final in (grids / "yelp").glob("*/seed*/final.json"):
        final.unlink()  # a grid just started: compare.json is written, no cell has finished
    assert main(["report", str(grids), "--out", str(tmp_path / "all")]) == 0
    assert "yelp" not in (tmp_path / "all" / "benchmark.md").read_text()  # a folder of grids: finished ones only
    assert main(["report", str(grids / "ptb"), str(grids / "yelp"), "--out", str(tmp_path / "page")]) == 0
    md = (tmp_path / "page" / "benchmark.md").read_text()  # named: shown, and says so
    assert "yelp (preset yelp; seeds 0, 1; no cell finished yet)" in md
    assert _by_method(_md_tables(md)[2])["vae-anneal"]["verdict"] == "none finished"


@pytest.mark.slow
def test_the_tables_of_results_md_are_the_committed_grids_report(tmp_path):
    """docs/RESULTS.md's generated blocks hold what `lagvae report` makes of docs/data/grids today: a table typed
    by hand, or one left stale after a cell finished, fails here."""
    root = Path(__file__).resolve().parents[1]
    results, grids = root / "docs" / "RESULTS.md", root / "docs" / "data" / "grids"
    doc = tmp_path / "RESULTS.md"
    shutil.copy(results, doc)
    write_pages([grids], tmp_path / "page", docs=doc)
    assert doc.read_text() == results.read_text(), "stale tables: run `bash scripts/converge_real.sh report`"


def test_a_cell_still_training_outside_compare_json_is_left_out(grids, tmp_path):
    """Another compare process's cell shows once it has finished (or failed), not while it trains: the page of
    a working copy then equals the page of a clean copy of the committed cells."""
    cell = grids / "ptb" / "du-vae" / "seed0"
    _cell(cell, "du-vae", 0, 0.2, 90.0)
    (cell / "final.json").unlink()  # training: metrics.jsonl and checkpoints, no final.json
    _cell(grids / "ptb" / "bn-vae" / "seed4", "bn-vae", 4, 0.1, 90.0)  # finished, under a seed compare.json lacks
    write_pages([grids], tmp_path / "b.html")
    rows = _by_method(_md_tables((tmp_path / "b.md").read_text())[1])
    assert "du-vae" not in rows and rows["bn-vae"]["cells finished"] == "1/4"
    assert "seeds 0, 1, 2, 4" in (tmp_path / "b.md").read_text()
