"""The compare grid's row model: each method's row built once from its cells, rendered to Markdown, CSV and HTML."""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lagvae.experiments.report import markdown_table
from lagvae.stats import Paired, paired
from lagvae.training.run_folder import PROVENANCE, TEST_NLL, RunFolder

Key = tuple[str, int]  # (method label, seed)

# The main table's columns: final.json key, title, decimals. `mi_full` (over the whole test split) is the
# headline I_q; the paper's per-minibatch estimate stays beside it, labelled.
COLUMNS = (
    ("nll", "NLL", 2),
    ("kl", "KL", 2),
    ("mi_full", "I_q (mi_full)", 2),
    ("mi", "I_q (minibatch, paper's)", 2),
    ("au", "AU", 1),
    ("ppl", "PPL", 2),
)
STATS = (*(key for key, _, _ in COLUMNS), "train_seconds", "aggressive_epochs")
TIME_REFERENCES = ("vae", "vae-anneal")  # the first with finished runs is what training times are relative to
NOT_PAIRED = "not paired"


@dataclass(frozen=True)
class Stat:
    """A metric over a method's finished seeds: the mean and the sd (None with one seed)."""

    mean: float
    sd: float | None

    @classmethod
    def of(cls, values: Sequence[float]) -> Stat:
        return cls(statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None)

    def text(self, decimals: int) -> str:
        """'130.77 ± 0.14'; with one seed '157.71 ± -' (no spread to show, not a spread of 0)."""
        sd = "-" if self.sd is None else f"{self.sd:.{decimals}f}"
        return f"{self.mean:.{decimals}f} ± {sd}"


@dataclass
class Row:
    """One method of the grid: its metrics over seeds, its time relative to the grid's time reference, and
    its test NLL paired against the grid's reference (None for the reference itself or without one)."""

    method: str
    runs: int
    stats: dict[str, Stat] = field(default_factory=dict)
    seconds_per_epoch: float | None = None
    time_rel: float | None = None  # seconds per epoch over the time reference's
    total_time_rel: float | None = None  # training seconds over the time reference's
    paired: Paired | None = None


@dataclass
class Summary:
    """Everything compare.md, compare.csv and the report page show, built once (`build_summary`)."""

    reference: str | None  # the method the others' test NLLs are paired against
    time_reference: str | None  # the method training times are relative to
    rows: list[Row]
    runs: list[tuple[str, int, dict[str, Any]]]  # each finished run's final.json, in grid order
    unpaired: list[str]  # one line per seed that could not be paired, saying what differs
    failures: list[str]

    @property
    def has_ppl(self) -> bool:
        return any("ppl" in row.stats for row in self.rows)


@dataclass(frozen=True)
class ExampleNLL:
    """What pairing needs of a finished cell: test_nll.csv's columns, the test split's hash, K."""

    index: np.ndarray
    nll: np.ndarray
    test_hash: str | None  # provenance.json "data"."test" (else final.json's provenance)
    iw_samples: int | None  # final.json "iw_samples"


def read_test_cell(folder: Path, final: Mapping[str, Any]) -> ExampleNLL | None:
    """The cell's per-example test NLLs with what identifies them; None for a run from before test_nll.csv."""
    table = RunFolder(folder).read_test_table()  # a damaged file is one line naming it
    if table is None:
        return None
    provenance = RunFolder(folder).read_json(PROVENANCE) or final.get("provenance") or {}
    test_hash = provenance.get("data", {}).get("test")
    return ExampleNLL(table[:, 0].astype(np.int64), table[:, 1], test_hash, final.get("iw_samples"))


def refusal(cell: ExampleNLL, ref: ExampleNLL) -> str | None:
    """Why two cells' test NLLs cannot be paired example by example (what differs), None when they can:
    the same test examples (index column), the same test split (its hash), the same K."""
    reasons = []
    if not np.array_equal(cell.index, ref.index):
        rows = f"{len(cell.index)} vs {len(ref.index)} rows"
        if len(cell.index) == len(ref.index):
            rows += f", first difference at row {int(np.argmax(cell.index != ref.index)) + 1}"
        reasons.append(f"the test examples differ (index column of {TEST_NLL}: {rows})")
    if cell.test_hash is None or ref.test_hash is None:
        reasons.append(f"the test split's hash is unknown (no {PROVENANCE})")
    elif cell.test_hash != ref.test_hash:
        reasons.append(f"the test split's hash differs ({cell.test_hash} vs {ref.test_hash})")
    if cell.iw_samples != ref.iw_samples:
        reasons.append(f"K differs (iw_samples {cell.iw_samples} vs {ref.iw_samples})")
    return "; ".join(reasons) or None


def time_reference(rows: Sequence[Row], references: Sequence[str] = TIME_REFERENCES) -> str | None:
    """The first of `references` with finished runs (`vae`, else `vae-anneal`), else None."""
    finished = {row.method for row in rows if row.runs}
    return next((m for m in references if m in finished), None)


def build_summary(
    results: Mapping[Key, dict[str, Any]],
    methods: Sequence[str],
    seeds: Sequence[int],
    reference: str | None,
    test_cells: Mapping[Key, ExampleNLL | None],
    *,
    time_references: Sequence[str] = TIME_REFERENCES,
    partners: Mapping[str, Sequence[tuple[int, int]]] | None = None,
) -> Summary:
    """The rows of a grid. `results`: each cell's final.json ({"ok": True, ...}) or failure ({"ok": False,
    "error": ...}); `test_cells`: each finished cell's `read_test_cell`; `time_references`: the methods that
    training times may be relative to, the first finished one chosen; `partners`: per method, its (seed,
    reference seed) pairs (default: each seed with the same seed, as a grid trains them)."""
    rows = [_row(label, [r for (m, _), r in results.items() if m == label and r["ok"]]) for label in methods]
    base = next((row for row in rows if row.method == time_reference(rows, time_references)), None)
    for row in rows:
        if base is not None and row.runs:
            row.time_rel = row.seconds_per_epoch / base.seconds_per_epoch  # type: ignore[operator]
            row.total_time_rel = row.stats["train_seconds"].mean / base.stats["train_seconds"].mean
    unpaired: list[str] = []
    if reference is not None:
        for row in rows:
            if row.method != reference:
                pairs = partners[row.method] if partners is not None else [(s, s) for s in seeds]
                row.paired = _pair(row.method, reference, pairs, test_cells, unpaired)
    runs = [(m, s, results[(m, s)]) for m in methods for s in seeds if results.get((m, s), {}).get("ok")]
    failures = [f"{m} seed {s}: {r['error']}" for (m, s), r in results.items() if not r["ok"]]
    return Summary(reference, base.method if base else None, rows, runs, unpaired, failures)


def _row(label: str, runs: list[dict[str, Any]]) -> Row:
    row = Row(label, len(runs))
    if runs:
        for key in STATS:
            if all(key in r for r in runs):
                row.stats[key] = Stat.of([float(r[key]) for r in runs])
        row.seconds_per_epoch = statistics.fmean(r["train_seconds"] / max(r["epochs"], 1) for r in runs)
    return row


def _pair(
    label: str,
    reference: str,
    pairs: Sequence[tuple[int, int]],
    cells: Mapping[Key, ExampleNLL | None],
    unpaired: list[str],
) -> Paired | None:
    """`label` against `reference`, one (seed, reference seed) pair at a time; each pair both finished but
    that cannot be paired adds one line to `unpaired`."""
    differences = []
    for seed, ref_seed in pairs:
        if (label, seed) not in cells or (reference, ref_seed) not in cells:
            continue  # not finished on both
        cell, ref = cells[(label, seed)], cells[(reference, ref_seed)]
        why = f"no {TEST_NLL} (a run from before it)" if cell is None or ref is None else refusal(cell, ref)
        if why is not None:
            other = "" if ref_seed == seed else f" seed {ref_seed}"
            unpaired.append(f"{label} seed {seed} not paired with {reference}{other}: {why}")
            continue
        differences.append(cell.nll - ref.nll)  # type: ignore[union-attr]
    return paired(differences) if differences else None


# ---- rendering: every format reads the same rows ----


@dataclass(frozen=True)
class Section:
    """One part of the summary: a line of text, a table (header and rows of cells) and notes below it."""

    intro: str
    head: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)


def sections(summary: Summary) -> list[Section]:
    """The summary as text cells, in order: the methods, the paired differences, each run, the failures."""
    out = [_methods_section(summary)]
    if summary.reference is not None:
        out.append(_paired_section(summary))
    if summary.runs:
        out.append(runs_section(summary))
    if summary.failures:
        out.append(Section("Failed runs (see error.txt in each run folder):", [], [], summary.failures))
    return out


def _methods_section(summary: Summary) -> Section:
    columns = [c for c in COLUMNS if c[0] != "ppl" or summary.has_ppl]
    ref = summary.time_reference
    head = ["method", *(title for _, title, _ in columns), "aggressive epochs"]
    head += [f"time vs {ref}", f"time/epoch vs {ref}"] if ref else []
    head += ["s/epoch", "runs"]
    table = []
    for row in summary.rows:
        if not row.runs:
            table.append([row.method, *["-"] * (len(head) - 2), "0"])
            continue
        cells = [row.method, *(row.stats[key].text(d) if key in row.stats else "-" for key, _, d in columns)]
        agg = row.stats.get("aggressive_epochs")
        cells.append(f"{agg.mean:.1f}" if agg else "-")
        if ref:
            cells += [f"{row.total_time_rel:.2f}x", f"{row.time_rel:.2f}x"]
        table.append([*cells, f"{row.seconds_per_epoch:.1f}", str(row.runs)])
    time = f"time relative to {ref}'s" if ref else "no vae or vae-anneal runs to relate times to"
    intro = (
        "Mean ± sd over each method's finished seeds (sd '-' with one seed); I_q (mi_full) is estimated on "
        f"the whole test split, I_q (minibatch, paper's) per test batch as in the paper; {time}."
    )
    return Section(intro, head, table)


def _paired_section(summary: Summary) -> Section:
    ref = summary.reference
    head = [f"method - {ref}", "NLL difference", "95% interval (t, over seeds)", "within-seed SE", "seeds", "verdict"]
    table = []
    for row in summary.rows:
        if row.method == ref:
            continue
        table.append([row.method, *paired_cells(row.paired)])
    intro = (
        f"Paired against {ref}, example by example (test_nll.csv) and seed by seed: the mean over seeds of each "
        f"seed's mean NLL difference (below 0: lower than {ref}), its 95% t interval over seeds (n - 1 degrees "
        "of freedom) and the within-seed SE (the test set's noise, not the seeds'). Verdict: better or worse when "
        "the interval excludes 0, tie when it holds 0, no verdict with one seed (docs/DESIGN.md, Verdicts)."
    )
    return Section(intro, head, table, summary.unpaired)


def paired_cells(p: Paired | None) -> list[str]:
    """A paired difference as table cells: difference, 95% interval, within-seed SE, seeds, verdict."""
    if p is None:
        return ["-", "-", "-", "0", NOT_PAIRED]
    interval = "-" if p.low is None else f"[{p.low:+.3f}, {p.high:+.3f}]"
    return [f"{p.mean:+.3f}", interval, f"{p.within_se:.3f}", str(p.seeds), p.verdict]


def decoder_reads_z(rec: float, nll: float) -> float:
    """rec - NLL = E_q(z|x)[log p(x) - log p(x|z)]: 0 when p(x|z) ignores z, > 0 when it reads z where q is not."""
    # With q the exact posterior this is -KL(p(z|x) || p(z)) < 0; with q blind to x, Jensen makes it > 0. The IW
    # NLL is an upper bound on -log p(x) in expectation: a positive value understates the true one, and a negative
    # one may be an IW bound that has not given back a large KL (docs/DESIGN.md).
    return rec - nll


def runs_section(summary: Summary) -> Section:
    has_ppl = summary.has_ppl
    head = ["method", "seed", "NLL", "KL", "I_q (mi_full)", "I_q (minibatch)", "AU", "rec - NLL"]
    head += [*(["PPL"] if has_ppl else []), "epochs", "best epoch", "aggressive epochs", "train s", "test s"]
    table = []
    for label, seed, r in summary.runs:
        cells = [label, str(seed), *(f"{r[k]:.2f}" if k in r else "-" for k in ("nll", "kl", "mi_full", "mi"))]
        reads_z = f"{decoder_reads_z(r['rec'], r['nll']):+.2f}" if "rec" in r and "nll" in r else "-"
        cells += [str(r.get("au", "-")), reads_z, *([f"{r['ppl']:.1f}" if "ppl" in r else "-"] if has_ppl else [])]
        cells += [str(r.get(k, "-")) for k in ("epochs", "best_epoch", "aggressive_epochs")]
        test = f"{r['test_seconds']:.0f}" if "test_seconds" in r else "-"  # final.json before 2026-12-05 lacks it
        table.append([*cells, f"{r['train_seconds']:.0f}", test])
    return Section("Each run:", head, table)


def to_markdown(summary: Summary) -> str:
    """compare.md."""
    return sections_markdown(sections(summary))


def sections_markdown(blocks: Sequence[Section]) -> str:
    """Sections as Markdown: the intro line, the table, the notes as a list."""
    parts = []
    for section in blocks:
        text = section.intro + "\n"
        if section.head:
            text += "\n" + markdown_table(section.head, section.rows) + "\n"
        if section.notes:
            text += "\n" + "".join(f"- {note}\n" for note in section.notes)
        parts.append(text)
    return "\n".join(parts)


def csv_fields(summary: Summary) -> list[str]:
    fields = ["method", "runs"]
    for key in STATS:
        fields += [key, f"{key}_sd"]
    fields += ["seconds_per_epoch", "time_reference", "time_rel", "total_time_rel"]
    return [*fields, "reference", "diff", "diff_low", "diff_high", "within_se", "pairs", "verdict"]


def to_csv(summary: Summary) -> str:
    """compare.csv: the same rows at full precision; an empty field where the table shows '-'."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=csv_fields(summary), lineterminator="\n")
    writer.writeheader()
    for row in summary.rows:
        record: dict[str, Any] = {"method": row.method, "runs": row.runs, "seconds_per_epoch": row.seconds_per_epoch}
        for key, stat in row.stats.items():
            record[key], record[f"{key}_sd"] = stat.mean, stat.sd
        if row.runs and summary.time_reference:
            record |= {"time_reference": summary.time_reference, "time_rel": row.time_rel}
            record["total_time_rel"] = row.total_time_rel
        if summary.reference is not None and row.method != summary.reference:
            p = row.paired
            record["reference"] = summary.reference
            if p is None:
                record |= {"pairs": 0, "verdict": NOT_PAIRED}
            else:
                record |= {"diff": p.mean, "diff_low": p.low, "diff_high": p.high, "within_se": p.within_se}
                record |= {"pairs": p.seeds, "verdict": p.verdict}
        writer.writerow({k: "" if v is None else v for k, v in record.items()})
    return buffer.getvalue()
