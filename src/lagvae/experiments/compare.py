"""`lagvae compare`: a methods x seeds grid on one preset, resumable, summarised like the paper's tables."""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import shlex
import signal
import threading
import time
import traceback
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from lagvae.atomic import atomic_write
from lagvae.config import ConfigError, RunConfig, apply_override, read_json
from lagvae.errors import Preempted
from lagvae.experiments.presets import make_config
from lagvae.experiments.rows import Summary, build_summary, read_test_cell, to_csv, to_markdown
from lagvae.logs import LOGGER, setup_logging
from lagvae.training.methods import METHODS, apply_method, check_method
from lagvae.training.run_folder import CONFIG, ERROR, FINAL, LAST, FolderInUseError, RunFolder

# A method spec may carry its parameter: beta=0.8 sets train.beta, free-bits=0.5 sets train.free_bits.
PARAMETER = {
    "beta": "train.beta",
    "free-bits": "train.free_bits",
    "savae": "train.savae.steps",
    "pretrain-fb": "train.free_bits",
    "bn-vae": "model.bn.gamma",
    "delta-vae": "model.delta.rate",
    "du-vae": "model.du.gamma",
    "mdr": "train.mdr.rate",
}
SLOW_FIRST = {"savae": 0, "aggressive": 1}
# The default reference of the paired comparison: the first of these in the grid.
DEFAULT_REFERENCES = ("aggressive-anneal", "aggressive")
GRID_FILE = "compare.json"  # the grid's preset, methods, seeds and reference, beside compare.md

log = logging.getLogger(LOGGER)


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
    check_method(name)
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
    that stop when the process that started them dies, instead of training on as orphans, and log at the
    level of the process that started them."""
    context = multiprocessing.get_context("spawn")
    level = logging.getLogger(LOGGER).getEffectiveLevel()
    return ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(os.getpid(), level))


_parent: int | None = None  # in a worker: the process that started it
_log_level = logging.INFO  # in a worker: the level of the process that started it


def _init_worker(parent: int, level: int) -> None:
    global _log_level
    _log_level = level
    _stop_with_parent(parent)


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


def cell_logging(spec: RunSpec, level: int) -> None:
    """A worker's log lines name their cell ("lagvae: vae seed 0: epoch 3 ..."): two cells share the grid's
    stderr. Without a bar of its own, a cell's epoch lines and test estimate are its progress, so they show at
    `level`; beside bars (`demo`), which already show it, only warnings do."""
    bars = spec.bar_position is not None
    setup_logging(max(level, logging.WARNING) if bars else level, f"lagvae: {spec.label} seed {spec.seed}: ")


def _run_one(spec: RunSpec) -> dict[str, Any]:
    from lagvae.training.run import train_and_evaluate

    if _parent is not None:  # a worker process, whose logging nobody has set up
        cell_logging(spec, _log_level)

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


def choose_reference(methods: Sequence[str], requested: str | None) -> str | None:
    """The method every other method's test NLLs are paired against: `requested`, else the first of
    DEFAULT_REFERENCES in `methods`, else None (no paired comparison)."""
    reference = requested or next((m for m in DEFAULT_REFERENCES if m in methods), None)
    if reference is not None and reference not in methods:
        raise ConfigError(f"--reference {reference} is not one of --methods ({', '.join(methods)})")
    return reference


def plan_commands(grid: Grid) -> list[str]:
    """One `lagvae train ... --resume auto` shell line per cell `run_grid` would train (unfinished, or ended by
    a lower cap): the run `compare` would make there, for any scheduler (a Slurm array, GNU parallel) to run;
    `compare --report-only` then tabulates them."""
    lines = []
    for spec in grid.specs():
        cell = read_cell(spec.out)
        if cell is not None and cell["ok"] and not ended_below_cap(spec, cell):
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
    """Train every cell of `grid` not already finished, then summarise (also before the first cell and after
    each one, so compare.md and compare.json follow a grid in progress).

    A cell with a last.pt but no final.json (stopped mid-run) resumes from its last checkpoint, and so does a
    finished one that its epoch cap ended, below the grid's `epochs`: raising the cap continues it.
    With `report_only`, nothing is trained: the summary covers the runs already finished.
    """
    specs = grid.specs()
    results: dict[tuple[str, int], dict[str, Any]] = {}
    todo = []
    for spec in specs:
        cell = read_cell(spec.out)
        if cell is not None and cell["ok"] and not report_only and ended_below_cap(spec, cell):
            todo.append(spec)
        elif cell is not None and (cell["ok"] or report_only):  # report-only lists an earlier failure as failed
            results[(spec.label, spec.seed)] = cell
        elif not report_only:
            todo.append(spec)
    # Slow strategies first, so parallel workers finish together instead of one running alone at the end.
    todo.sort(key=lambda spec: SLOW_FIRST.get(METHODS[spec.method].get("train.strategy", "joint"), 2))
    workers = max(1, jobs)
    with (
        worker_pool(workers) as pool,
        tqdm(total=len(specs), initial=len(specs) - len(todo), desc="grid cells", disable=not todo) as bar,
    ):
        if todo:  # the grid and its tables so far, so that a report of a grid in progress knows what it holds
            write_summary(results, grid, read_histories(grid, results))
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
            if left:
                write_summary(results, grid, read_histories(grid, results))
    write_summary(results, grid, read_histories(grid, results))
    return results


def ended_below_cap(spec: RunSpec, final: dict[str, Any]) -> bool:
    """Whether a finished cell stopped at its own epoch cap (not by the LR rule) and that cap is below the
    grid's, with the last.pt that continues it."""
    if spec.epochs is None or not (spec.out / LAST).exists():
        return False
    cap = read_json(spec.out / CONFIG, dict, "a run's config")["train"]["epochs"]
    return cap < spec.epochs and final.get("epochs", 0) >= cap


def read_cell(folder: Path) -> dict[str, Any] | None:
    """A cell's record: its final.json once finished, the last line of its error.txt when its last attempt
    failed, else None (not started, or stopped mid-run: a SIGTERM's Preempted, whose last.pt resumes it)."""
    final = RunFolder(folder).read_json(FINAL)
    if final is not None:
        return {"ok": True, **final}
    error = folder / ERROR
    if error.exists():
        lines = [line for line in error.read_text(errors="replace").splitlines() if line.strip()]
        if lines and lines[-1].startswith(f"{Preempted.__module__}.{Preempted.__qualname__}:"):
            return None
        return {"ok": False, "error": lines[-1] if lines else "failed"}
    return None


def read_histories(
    grid: Grid, results: dict[tuple[str, int], dict[str, Any]]
) -> dict[tuple[str, int], list[dict[str, Any]]]:
    """Each finished cell's metrics.jsonl; sets its `aggressive_epochs` (the paper reports how long aggressive
    mode lasted)."""
    histories = {key: RunFolder(grid.folder(*key)).read_metrics() for key, r in results.items() if r["ok"]}
    for key, history in histories.items():
        results[key]["aggressive_epochs"] = sum(bool(r.get("aggressive")) for r in history)
    return histories


def summarise(grid: Grid, results: dict[tuple[str, int], dict[str, Any]]) -> Summary:
    """The grid's row model (lagvae.experiments.rows), from its cells' records and test_nll.csv files."""
    cells = {key: read_test_cell(grid.folder(*key), r) for key, r in results.items() if r["ok"]}
    return build_summary(results, grid.methods, grid.seeds, grid.reference, cells)


def write_summary(
    results: dict[tuple[str, int], dict[str, Any]],
    grid: Grid,
    histories: dict[tuple[str, int], list[dict[str, Any]]],
) -> Summary:
    """compare.md, compare.csv (one row model, two renderings), compare.json (the grid, from which
    `lagvae report` rebuilds the same rows) and compare_curves.png; `histories`: each finished cell's
    metrics.jsonl."""
    out = grid.out
    summary = summarise(grid, results)
    for line in summary.unpaired:
        log.warning(line)
    out.mkdir(parents=True, exist_ok=True)
    spec: dict[str, Any] = {"preset": grid.preset, "methods": list(grid.methods), "seeds": list(grid.seeds)}
    spec["reference"] = grid.reference
    atomic_write(out / GRID_FILE, lambda f: f.write((json.dumps(spec, indent=2) + "\n").encode()))
    atomic_write(out / "compare.csv", lambda f: f.write(to_csv(summary).encode()))
    atomic_write(out / "compare.md", lambda f: f.write(to_markdown(summary).encode()))
    _plot_curves(histories, grid)
    return summary


def saved_grid(folder: Path, methods: Sequence[str], seeds: Sequence[int]) -> Grid:
    """The grid that wrote `folder` (its compare.json); without one, a grid of `methods` x `seeds` (the
    method folders found there) with the default reference."""
    path = folder / GRID_FILE
    if path.exists():
        spec = read_json(path, dict, "a lagvae compare.json")
        methods, seeds = tuple(spec["methods"]), tuple(spec["seeds"])
        return Grid(spec["preset"], methods, seeds, folder, reference=spec.get("reference"))
    return Grid("?", tuple(methods), tuple(seeds), folder, reference=choose_reference(methods, None))


def _plot_curves(histories: dict[tuple[str, int], list[dict[str, Any]]], grid: Grid) -> None:
    from lagvae.plots import metric_curves_png

    curves: dict[str, list[list[dict[str, Any]]]] = {}
    for label in grid.methods:
        for (m, _), history in histories.items():
            if m == label:
                curves.setdefault(label, []).append(history)
    png = metric_curves_png(curves)
    atomic_write(grid.out / "compare_curves.png", lambda f: f.write(png))
