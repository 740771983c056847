"""`lagvae compare`: a methods x seeds grid on one preset, resumable, summarised like the paper's tables."""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import shlex
import signal
import statistics
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from lagvae.atomic import atomic_write
from lagvae.config import ConfigError, RunConfig, apply_override
from lagvae.experiments.presets import make_config
from lagvae.experiments.report import markdown_table
from lagvae.training.methods import METHODS, apply_method
from lagvae.training.run_folder import ERROR, FINAL, FolderInUseError, RunFolder

# A method spec may carry its parameter: beta=0.8 sets train.beta, free-bits=0.5 sets train.free_bits.
PARAMETER = {"beta": "train.beta", "free-bits": "train.free_bits", "savae": "train.svi_steps"}
METRICS = ("nll", "kl", "mi", "mi_full", "au")
SLOW_FIRST = {"savae": 0, "aggressive": 1}


@dataclass
class RunSpec:
    preset: str
    label: str  # e.g. "beta=0.8"
    method: str
    seed: int
    out: Path
    epochs: int | None
    train_limit: int | None
    size: str | None
    overrides: tuple[str, ...]  # the method's own parameter first, then the grid's --set overrides
    bar_position: int | None = None  # None: no progress bar (the grid's own bar counts cells)


def parse_method(spec: str) -> tuple[str, list[str]]:
    """'beta=0.8' -> ('beta', ['train.beta=0.8']); 'vae' -> ('vae', []). A parameter no run can use
    ('beta=x', 'free-bits=-1') fails here, before any cell runs."""
    name, _, value = spec.partition("=")
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    if not value:
        return name, []
    if name not in PARAMETER:
        raise ConfigError(f"method {name!r} takes no parameter (only {', '.join(PARAMETER)} do)")
    from lagvae.training.build import validate

    override = f"{PARAMETER[name]}={value}"
    config = RunConfig()
    try:
        apply_method(config, name)
        apply_override(config, override)
        validate(config)
    except ConfigError as err:
        raise ConfigError(f"method {spec!r}: {err}") from None
    return name, [override]


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """Processes for runs (spawn, not fork: a forked child cannot use CUDA once the parent has touched it)
    that stop when the process that started them dies, instead of training on as orphans."""
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_stop_with_parent, initargs=(os.getpid(),))


_parent: int | None = None  # in a worker: the process that started it


def _stop_with_parent(parent: int, poll_seconds: float = 1.0) -> None:
    """A daemon thread: once `parent` is gone, SIGTERM this worker, so a run checkpoints at its next step
    (the Trainer's SIGTERM handler) and stops; the grid then resumes it. `_attempt` then ends the worker,
    which would otherwise wait for tasks from no one."""
    global _parent
    _parent = parent

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True).start()


def _run_one(spec: RunSpec) -> dict[str, Any]:
    from lagvae.training.run import train_and_evaluate

    config = make_config(
        spec.preset,
        spec.method,
        size=spec.size,
        epochs=spec.epochs,
        seed=spec.seed,
        train_limit=spec.train_limit,
        overrides=spec.overrides,
    )
    config.threads = 1  # grid runs share the machine; one thread each
    config.progress = spec.bar_position is not None
    # a half-trained cell continues
    return train_and_evaluate(config, spec.out, resume="auto", bar_position=spec.bar_position or 0)


def _attempt(spec: RunSpec) -> dict[str, Any]:
    """Run one cell; a failure becomes a record instead of stopping the grid."""
    try:
        result = _run_one(spec)
    except Exception as err:  # noqa: BLE001 - every failure is reported per run
        if not isinstance(err, FolderInUseError):  # that folder is another live process's to write
            atomic_write(spec.out / ERROR, lambda f: f.write(traceback.format_exc().encode()))
        return {"ok": False, "error": f"{type(err).__name__}: {err}"}
    finally:
        if _parent is not None and os.getppid() != _parent:  # orphaned: nobody reads the result
            os._exit(1)
    (spec.out / ERROR).unlink(missing_ok=True)  # an earlier attempt's failure no longer describes this cell
    return {"ok": True, **result}


@dataclass(frozen=True)
class Grid:
    """A methods x seeds grid on one preset; cell (method, seed) lives in out/<method>/seed<seed>."""

    preset: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    out: Path
    epochs: int | None = None
    train_limit: int | None = None
    size: str | None = None
    overrides: tuple[str, ...] = ()
    reference: str | None = None  # the method the others' test NLLs are paired against, example by example
    run_bars: bool = False  # a progress bar per run (for grids no larger than the worker pool, as `demo`)

    def folder(self, label: str, seed: int) -> Path:
        return self.out / label / f"seed{seed}"

    def specs(self) -> list[RunSpec]:
        """One RunSpec per cell; a method typo fails here, before anything runs."""
        parsed = {label: parse_method(label) for label in self.methods}
        cells = [(m, name, extra, s) for m, (name, extra) in parsed.items() for s in self.seeds]
        return [
            RunSpec(
                self.preset,
                m,
                name,
                s,
                self.folder(m, s),
                self.epochs,
                self.train_limit,
                self.size,
                (*extra, *self.overrides),
                i + 1 if self.run_bars else None,  # below the grid's bar
            )
            for i, (m, name, extra, s) in enumerate(cells)
        ]


def plan_commands(grid: Grid) -> list[str]:
    """One `lagvae train ... --resume auto` shell line per unfinished cell: the run `compare` would make there,
    for any scheduler (a Slurm array, GNU parallel) to run; `compare --report-only` then tabulates them."""
    lines = []
    for spec in grid.specs():
        if (spec.out / FINAL).exists():
            continue
        args = ["lagvae", "train", spec.preset, "--method", spec.method, "--seed", str(spec.seed)]
        args += ["--out", str(spec.out)]
        args += ["--size", spec.size] if spec.size else []
        args += ["--epochs", str(spec.epochs)] if spec.epochs else []
        args += ["--train-limit", str(spec.train_limit)] if spec.train_limit else []
        for override in spec.overrides:
            args += ["--set", override]
        lines.append(shlex.join([*args, "--threads", "1", "--no-progress", "--resume", "auto"]))
    return lines


def run_grid(grid: Grid, *, jobs: int = 1, report_only: bool = False) -> dict[tuple[str, int], dict[str, Any]]:
    """Train every cell of `grid` not already finished, then summarise.

    A cell with a last.pt but no final.json (stopped mid-run) resumes from its last checkpoint.
    With `report_only`, nothing is trained: the summary covers the runs already finished.
    """
    specs = grid.specs()
    results: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for spec in specs:
        final = RunFolder(spec.out).read_json(FINAL)
        if final is not None:
            results[(spec.label, spec.seed)] = {"ok": True, **final}
        elif not report_only:
            todo.append(spec)
    # Slow strategies first, so parallel workers finish together instead of one running alone at the end.
    todo.sort(key=lambda spec: SLOW_FIRST.get(METHODS[spec.method].get("train.strategy", "joint"), 2))
    workers = max(1, jobs)
    with (
        worker_pool(workers) as pool,
        tqdm(total=len(specs), initial=len(specs) - len(todo), desc="grid cells", disable=not todo) as bar,
    ):
        futures = {pool.submit(_attempt, spec): spec for spec in todo}
        bar.set_postfix(running=min(workers, len(todo)), left=len(todo))
        for future in as_completed(futures):
            spec, result = futures[future], future.result()
            results[(spec.label, spec.seed)] = result
            status = "done" if result["ok"] else f"FAILED ({result['error']})"
            bar.write(f"{spec.label} seed {spec.seed}: {status}")
            bar.update(1)
            left = len(todo) - (bar.n - bar.initial)
            bar.set_postfix(running=min(workers, left), left=left)
    histories = {key: RunFolder(grid.folder(*key)).read_metrics() for key, r in results.items() if r["ok"]}
    for key, history in histories.items():  # the paper reports how long aggressive mode lasted
        results[key]["aggressive_epochs"] = sum(bool(r.get("aggressive")) for r in history)
    write_summary(results, grid, histories)
    return results


def _mean_sd(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(results: dict[tuple[str, int], dict[str, Any]], methods: Sequence[str]) -> list[dict[str, Any]]:
    """One row per method: mean and sd over its successful seeds; training time (in all and per epoch)
    relative to `vae`'s when the grid has it."""
    rows = []
    for label in methods:
        runs = [r for (m, _), r in results.items() if m == label and r["ok"]]
        row: dict[str, Any] = {"method": label, "runs": len(runs)}
        if runs:
            for key in (*METRICS, "ppl", "train_seconds", "aggressive_epochs"):
                if all(key in r for r in runs):
                    row[key], row[f"{key}_sd"] = _mean_sd([float(r[key]) for r in runs])
            row["seconds_per_epoch"] = statistics.fmean(r["train_seconds"] / max(r["epochs"], 1) for r in runs)
        rows.append(row)
    base = next((r for r in rows if r["method"] == "vae" and r["runs"]), None)
    for row in rows:
        if base and row["runs"]:
            row["time_rel"] = row["seconds_per_epoch"] / base["seconds_per_epoch"]
            row["total_time_rel"] = row["train_seconds"] / base["train_seconds"]
    return rows


def write_summary(
    results: dict[tuple[str, int], dict[str, Any]],
    grid: Grid,
    histories: dict[tuple[str, int], list[dict[str, Any]]],
) -> None:
    """compare.csv, compare.md and compare_curves.png; `histories`: each finished cell's metrics.jsonl."""
    out = grid.out
    rows = summarise(results, grid.methods)
    out.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.DictWriter(
        buffer, fieldnames=sorted({k for row in rows for k in row}, key=lambda k: (k != "method", k))
    )
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(out / "compare.csv", lambda f: f.write(buffer.getvalue().encode()))
    has_ppl = any("ppl" in r for r in rows)
    head = ["method", "NLL", "KL", "MI", "MI (full)", "AU", *(["PPL"] if has_ppl else [])]
    head += ["aggressive epochs", "time vs vae", "time/epoch vs vae", "s/epoch", "runs"]
    table = []
    for row in rows:
        if not row["runs"]:
            table.append([row["method"], *["-"] * (len(head) - 2), "0"])
            continue
        cells = [row["method"]]
        for key in (*METRICS, *(["ppl"] if has_ppl else [])):
            cells.append(f"{row[key]:.2f} ± {row[key + '_sd']:.2f}" if key in row else "-")
        cells.append(f"{row['aggressive_epochs']:.1f}" if "aggressive_epochs" in row else "-")
        cells += [f"{row[key]:.2f}x" if key in row else "-" for key in ("total_time_rel", "time_rel")]
        table.append([*cells, f"{row['seconds_per_epoch']:.1f}", str(row["runs"])])
    failures = [f"- {m} seed {s}: {r['error']}" for (m, s), r in results.items() if not r["ok"]]
    text = markdown_table(head, table) + "\n"
    if grid.reference is not None:
        text += paired_table(results, grid)
    text += runs_table(results, grid, has_ppl)
    if failures:
        text += "\nFailed runs (see error.txt in each run folder):\n" + "\n".join(failures) + "\n"
    atomic_write(out / "compare.md", lambda f: f.write(text.encode()))
    _plot_curves(histories, grid)


def runs_table(results: dict[tuple[str, int], dict[str, Any]], grid: Grid, has_ppl: bool) -> str:
    """The Markdown section with one row per finished run, so a mean's spread can be traced to its seeds."""
    head = ["method", "seed", "NLL", "KL", "MI (full)", "AU", *(["PPL"] if has_ppl else [])]
    head += ["epochs", "best epoch", "aggressive epochs", "train s"]
    rows = []
    for label in grid.methods:
        for seed in grid.seeds:
            r = results.get((label, seed))
            if r is None or not r["ok"]:
                continue
            cells = [label, str(seed), *(f"{r[k]:.2f}" if k in r else "-" for k in ("nll", "kl", "mi_full"))]
            cells += [str(r.get("au", "-")), *([f"{r['ppl']:.1f}" if "ppl" in r else "-"] if has_ppl else [])]
            cells += [str(r.get(k, "-")) for k in ("epochs", "best_epoch", "aggressive_epochs")]
            rows.append([*cells, f"{r['train_seconds']:.0f}"])
    return "\nEach run:\n\n" + markdown_table(head, rows) + "\n" if rows else ""


def paired_differences(test_nll: dict[tuple[str, int], np.ndarray | None], grid: Grid, label: str) -> dict[str, float]:
    """Test NLL of `label` minus the reference's, example by example (`test_nll`: each finished cell's
    test_nll.csv), on each seed both finished:
    d = mean_i (nll_label,i - nll_ref,i) per seed, then its mean and sd over seeds (`diff`, `diff_sd`), and
    the paired standard error sd_i(nll_label,i - nll_ref,i) / sqrt(n), averaged over seeds (`se`)."""
    diffs, errors = [], []
    for seed in grid.seeds:
        a, b = test_nll.get((label, seed)), test_nll.get((grid.reference, seed))  # type: ignore[arg-type]
        if a is None or b is None or a.shape != b.shape:
            continue  # a run from before test_nll.csv, or tested on other examples
        d = a - b
        diffs.append(float(d.mean()))
        errors.append(float(d.std(ddof=1) / len(d) ** 0.5) if len(d) > 1 else 0.0)
    if not diffs:
        return {"pairs": 0}
    mean, sd = _mean_sd(diffs)
    return {"pairs": len(diffs), "diff": mean, "diff_sd": sd, "se": statistics.fmean(errors)}


def paired_table(results: dict[tuple[str, int], dict[str, Any]], grid: Grid) -> str:
    """The Markdown section of paired test-NLL differences against the grid's reference method."""
    test_nll = {key: RunFolder(grid.folder(*key)).read_test_nll() for key, r in results.items() if r["ok"]}
    rows = []
    for label in grid.methods:
        if label == grid.reference:
            continue
        p = paired_differences(test_nll, grid, label)
        if p["pairs"]:
            rows.append([label, f"{p['diff']:+.3f} ± {p['diff_sd']:.3f}", f"{p['se']:.3f}", str(p["pairs"])])
        else:
            rows.append([label, "-", "-", "0"])
    head = [f"method - {grid.reference}", "test NLL difference (mean ± sd over seeds)", "paired SE", "seeds"]
    return (
        f"\nPaired against {grid.reference}, example by example (test_nll.csv; below 0: better than "
        f"{grid.reference}):\n\n" + markdown_table(head, rows) + "\n"
    )


def _plot_curves(histories: dict[tuple[str, int], list[dict[str, Any]]], grid: Grid) -> None:
    from lagvae.plots import metric_curves_png

    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for label in grid.methods:
        for (m, _), history in histories.items():
            if m == label:
                curves.setdefault(label, []).append(history)
    png = metric_curves_png(curves)
    atomic_write(grid.out / "compare_curves.png", lambda f: f.write(png))
