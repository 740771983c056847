"""compare's statistics and row model: the seed-level t interval, the verdicts, what may be paired, one row
model rendered three ways, and the reference methods (all in-process, on hand-made cells)."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pytest
from scipy import stats as scipy_stats

from lagvae.config import ConfigError
from lagvae.experiments import compare
from lagvae.experiments.compare import Grid, choose_reference, run_grid
from lagvae.experiments.html_report import _summary_html
from lagvae.experiments.rows import ExampleNLL, build_summary, refusal, time_reference, to_csv, to_markdown
from lagvae.stats import BETTER, ONE_SEED, TIE, WORSE, paired, seed_interval, t975, verdict

N = 50  # test examples per cell


@pytest.mark.parametrize("df", [1, 2, 3, 4, 9, 29, 30, 31, 45, 100, 10_000])
def test_the_t_quantile_matches_scipy(df):
    assert t975(df) == pytest.approx(scipy_stats.t.ppf(0.975, df), abs=1e-6)


def test_the_seed_interval_is_scipys_t_interval_and_none_for_one_seed():
    per_seed = [0.03, 0.10, 0.39]  # PTB's lm - aggressive-anneal, per seed
    mean, low, high = seed_interval(per_seed)
    sem = scipy_stats.sem(per_seed)
    expected = scipy_stats.t.interval(0.95, len(per_seed) - 1, loc=np.mean(per_seed), scale=sem)
    assert mean == pytest.approx(np.mean(per_seed)) and (low, high) == pytest.approx(expected, abs=1e-6)
    assert low < 0 < high  # three seeds all above 0, and still a tie: t975(2) = 4.30
    assert seed_interval([0.5]) == (0.5, None, None)


def _diffs(means: list[float], noise: float = 1.0, seed: int = 0) -> list[np.ndarray]:
    """One array of per-example differences per seed, with exactly the given per-seed means."""
    rng = np.random.default_rng(seed)
    out = []
    for m in means:
        d = rng.normal(0, noise, N)
        out.append(d - d.mean() + m)
    return out


def test_verdicts_follow_the_interval():
    assert paired(_diffs([-1.0, -1.1, -0.9])).verdict == BETTER  # the interval lies below 0
    assert paired(_diffs([1.0, 1.1, 0.9])).verdict == WORSE
    assert paired(_diffs([0.03, 0.10, 0.39])).verdict == TIE  # every seed above 0, the interval holds 0
    assert paired(_diffs([-0.5, 0.5])).verdict == TIE
    one = paired(_diffs([5.0]))
    assert one.verdict == ONE_SEED and one.low is None and one.seeds == 1
    assert verdict(-2.0, -0.1) == BETTER and verdict(0.1, 2.0) == WORSE and verdict(-0.1, 0.1) == TIE
    assert verdict(None, None) == ONE_SEED
    # the within-seed SE is the test set's noise, averaged over seeds: not the spread of the seeds
    diffs = _diffs([1.0, 3.0], noise=2.0)
    p = paired(diffs)
    assert p.within_se == pytest.approx(np.mean([scipy_stats.sem(d) for d in diffs]), rel=1e-12)
    assert p.within_se == pytest.approx(2.0 / math.sqrt(N), rel=0.3) and p.high - p.low > 10


# ---- pairing, through the grid's own reading of its cells ----


def _write_cell(folder: Path, nll: np.ndarray, index=None, test_hash="h-test", k=500, **final) -> None:
    folder.mkdir(parents=True)
    index = np.arange(len(nll)) if index is None else index
    lines = ["index,nll", *(f"{i},{v:.6f}" for i, v in zip(index, nll, strict=True))]
    (folder / "test_nll.csv").write_text("\n".join(lines) + "\n")
    (folder / "provenance.json").write_text(json.dumps({"data": {"train": "t", "val": "v", "test": test_hash}}))
    record = {"nll": float(nll.mean()), "kl": 1.0, "mi": 0.5, "mi_full": 0.6, "au": 3, "ppl": 100.0}
    record |= {"train_seconds": 100.0, "epochs": 10, "best_epoch": 9, "iw_samples": k, **final}
    (folder / "final.json").write_text(json.dumps(record))
    epoch0 = {"step": 10, "epoch": 0, "lr": 1.0, "train_seconds": 100.0, "aggressive": False}  # every record's keys
    (folder / "metrics.jsonl").write_text(json.dumps(epoch0) + "\n")


def test_pairing_refuses_other_examples_another_split_or_another_k(tmp_path, inline_workers, monkeypatch):
    monkeypatch.setattr(compare, "_plot_curves", lambda *a: None)
    rng = np.random.default_rng(0)
    ref = rng.normal(100, 5, N)
    grid = Grid("synthetic", ("aggressive", "vae", "lm", "cyclical"), (0, 1), tmp_path, reference="aggressive")
    for seed in (0, 1):
        _write_cell(grid.folder("aggressive", seed), ref + seed)
        _write_cell(grid.folder("cyclical", seed), ref + seed + 1.0)  # comparable on both seeds
    _write_cell(grid.folder("vae", 0), ref + 1.0, index=np.arange(N) + 1)  # other test examples
    _write_cell(grid.folder("vae", 1), ref + 2.0, test_hash="h-other")  # another test split
    _write_cell(grid.folder("lm", 0), ref + 0.5, k=100)  # another K
    _write_cell(grid.folder("lm", 1), ref + 1.5)  # comparable
    # a handler of our own on the lagvae logger: whatever an earlier test's CLI did to its propagation
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append  # type: ignore[method-assign]
    logger = logging.getLogger("lagvae")
    logger.addHandler(handler)
    try:
        run_grid(grid, report_only=True)
    finally:
        logger.removeHandler(handler)
    md = (tmp_path / "compare.md").read_text()
    expected = {
        "vae seed 0 not paired with aggressive: the test examples differ": "index column of test_nll.csv",
        "vae seed 1 not paired with aggressive: the test split's hash differs": "(h-other vs h-test)",
        "lm seed 0 not paired with aggressive: K differs": "(iw_samples 100 vs 500)",
    }
    for start, detail in expected.items():
        (line,) = [line for line in md.splitlines() if start in line]  # one line each, in compare.md
        assert detail in line
        assert sum(start in r.getMessage() and "\n" not in r.getMessage() for r in records) == 1
    assert "cyclical seed" not in md and len(records) == 3
    rows = {
        line.split("|")[1].strip(): line
        for line in md.split("Paired against")[1].split("Each run")[0].splitlines()
        if "|" in line
    }
    assert rows["vae"].endswith("| - | - | - | 0 | not paired |")
    assert "| 1 | one seed, no verdict |" in rows["lm"] and "+0.500" in rows["lm"]  # seed 1 alone
    assert "| 2 | worse |" in rows["cyclical"]


def test_refusal_names_what_differs_and_allows_a_match():
    cell = ExampleNLL(np.arange(4), np.zeros(4), "a", 500)
    assert refusal(cell, ExampleNLL(np.arange(4), np.ones(4), "a", 500)) is None
    assert "first difference at row 3" in (
        refusal(cell, ExampleNLL(np.array([0, 1, 3, 2]), np.ones(4), "a", 500)) or ""
    )
    assert "hash is unknown" in (refusal(cell, ExampleNLL(np.arange(4), np.ones(4), None, 500)) or "")
    both = refusal(cell, ExampleNLL(np.arange(4), np.ones(4), "b", 8)) or ""
    assert "hash differs (a vs b)" in both and "K differs (iw_samples 500 vs 8)" in both and "\n" not in both


# ---- one row model, three renderings ----


COST = {"aggressive": 3, "vae-anneal": 2}  # training time relative to the other methods


def _summary(methods=("vae", "aggressive", "lm", "savae"), reference="aggressive", unfinished=()):
    """A grid's summary from in-memory cells: 3 seeds each, savae one, none for the `unfinished` methods."""
    rng = np.random.default_rng(1)
    base = rng.normal(100, 5, N)
    results, cells = {}, {}
    for m, shift in zip(methods, (1.0, 0.0, 0.2, 20.0), strict=False):
        for seed in () if m in unfinished else (0,) if m == "savae" else (0, 1, 2):
            nll = base + shift + rng.normal(0, 0.3, N)
            extra = {"ppl": 100 + shift + seed} if m != "savae" else {}
            results[(m, seed)] = {"ok": True, "nll": float(nll.mean()), "kl": 1.0 + seed, "mi": 0.1 * seed}
            seconds = 60.0 * (1 + seed) * COST.get(m, 1)
            results[(m, seed)] |= {"mi_full": 0.2 * seed, "au": seed, "epochs": 10, "train_seconds": seconds}
            results[(m, seed)] |= {"best_epoch": 8, "aggressive_epochs": 2 * (m == "aggressive"), **extra}
            cells[(m, seed)] = ExampleNLL(np.arange(N), nll, "h", 500)
    return build_summary(results, methods, (0, 1, 2), reference, cells)


def _md_tables(text: str) -> list[list[list[str]]]:
    tables, current = [], []
    for line in [*text.splitlines(), ""]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not set("".join(cells)) <= set("-"):
                current.append(cells)
        elif current:
            tables.append(current)
            current = []
    return tables


def _html_tables(page: str) -> list[list[list[str]]]:
    import html

    return [
        [[html.unescape(c) for c in re.findall(r"<t[hd]>(.*?)</t[hd]>", tr)] for tr in re.findall(r"<tr>(.*?)</tr>", t)]
        for t in re.findall(r"<table>(.*?)</table>", page)
    ]


def test_markdown_csv_and_html_carry_the_same_numbers():
    summary = _summary()
    md, page = _md_tables(to_markdown(summary)), _html_tables(_summary_html(summary))
    assert md == page and len(md) == 3  # methods, paired, each run: the same cells in both
    methods, pairs = md[0], md[1]
    by_method = {r[0]: r for r in methods[1:]}
    csv_rows = {r["method"]: r for r in csv.DictReader(io.StringIO(to_csv(summary)))}
    head = methods[0]
    for row in summary.rows:
        cells, record = by_method[row.method], csv_rows[row.method]
        for key, title in (("nll", "NLL"), ("kl", "KL"), ("mi_full", "I_q (mi_full)"), ("ppl", "PPL")):
            if key not in row.stats:
                assert record[key] == "" and cells[head.index(title)] == "-"
                continue
            stat = row.stats[key]
            assert float(record[key]) == stat.mean  # the CSV at full precision
            sd = "-" if stat.sd is None else f"{float(record[f'{key}_sd']):.2f}"
            assert cells[head.index(title)] == f"{float(record[key]):.2f} ± {sd}"
        assert cells[-1] == record["runs"] == str(row.runs)
    paired_rows = {r[0]: r for r in pairs[1:]}
    assert set(paired_rows) == {"vae", "lm", "savae"}  # the reference is not paired with itself
    for method, cells in paired_rows.items():
        record = csv_rows[method]
        assert cells[1] == f"{float(record['diff']):+.3f}" and cells[-1] == record["verdict"]
        if record["diff_low"]:
            assert cells[2] == f"[{float(record['diff_low']):+.3f}, {float(record['diff_high']):+.3f}]"
        assert cells[3] == f"{float(record['within_se']):.3f}" and cells[4] == record["pairs"]
    assert paired_rows["vae"][-1] == WORSE
    assert paired_rows["savae"][2] == "-" and paired_rows["savae"][-2:] == ["1", ONE_SEED]


def test_one_seed_shows_a_dash_not_a_zero_spread():
    summary = _summary()
    savae = next(r for r in _md_tables(to_markdown(summary))[0] if r[0] == "savae")
    assert savae[1].endswith(" ± -") and savae[-1] == "1" and not any("± 0.00" in c for c in savae)


# ---- the references: paired against, and times relative to ----


def test_times_are_relative_to_vae_else_vae_anneal():
    with_vae = _summary(("vae-anneal", "vae", "aggressive"))
    assert with_vae.time_reference == "vae" and time_reference(with_vae.rows) == "vae"
    rel = {r.method: (r.time_rel, r.total_time_rel) for r in with_vae.rows}
    assert rel == {"vae": (1.0, 1.0), "vae-anneal": (2.0, 2.0), "aggressive": (3.0, 3.0)}
    assert "| time vs vae | time/epoch vs vae |" in to_markdown(with_vae)
    without = _summary(("aggressive", "vae-anneal"))
    assert without.time_reference == "vae-anneal" and "time vs vae-anneal" in to_markdown(without)
    rel = {r.method: (r.time_rel, r.total_time_rel) for r in without.rows}
    assert rel == {"vae-anneal": (1.0, 1.0), "aggressive": (1.5, 1.5)}
    assert "| 1.50x | 1.50x |" in to_markdown(without)
    failed = _summary(("vae", "aggressive", "vae-anneal"), unfinished=("vae",))  # vae in the grid, no run finished
    assert failed.time_reference == "vae-anneal" and "| time vs vae-anneal |" in to_markdown(failed)
    neither = _summary(("aggressive", "lm"))
    assert neither.time_reference is None and "time vs" not in to_markdown(neither)


def test_the_default_reference_is_aggressive_anneal_else_aggressive():
    assert choose_reference(("vae", "aggressive", "aggressive-anneal"), None) == "aggressive-anneal"
    assert choose_reference(("vae", "aggressive"), None) == "aggressive"
    assert choose_reference(("vae", "lm"), None) is None
    assert choose_reference(("vae", "lm"), "lm") == "lm"
    with pytest.raises(ConfigError, match="not one of"):
        choose_reference(("vae",), "lm")
