"""Run folders cannot be lost or mixed: refusal, --overwrite, --resume auto, damaged files, orphan temporaries."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from lagvae.cli import main
from lagvae.experiments.compare import Grid, run_grid
from tests.test_cli import TINY


def _train(out, *extra: str, method: str = "vae") -> int:
    return main(["train", "synthetic", "--method", method, "--out", str(out), *TINY, *extra])


def _errors(err: str) -> list[str]:
    """The error lines of stderr (the corpus summary may precede them)."""
    return [line for line in err.splitlines() if line.startswith("lagvae: error")]


def _snapshot(out) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir())}


def test_a_finished_run_is_never_overwritten_without_a_word(run, capsys):
    out = run
    before = _snapshot(out)
    capsys.readouterr()
    assert _train(out) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--resume" in err and "--overwrite" in err and len(_errors(err)) == 1
    assert _snapshot(out) == before


def test_a_different_run_is_refused_before_any_file_changes(run, capsys):
    out = run
    before = _snapshot(out)
    capsys.readouterr()
    for how in (["--resume"], ["--resume", "auto"]):
        assert _train(out, "--seed", "4", *how) == 2
        assert "train.seed" in capsys.readouterr().err
        assert _snapshot(out) == before


def test_overwrite_replaces_the_old_run(run):
    out = run
    (out / ".best.pt.abc123.tmp").write_bytes(b"orphan")
    assert _train(out, "--seed", "4", "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["train"]["seed"] == 4
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]
    assert not list(out.glob(".*.tmp"))


def test_resume_auto_starts_a_new_run_and_continues_an_old_one(tmp_path):
    out = tmp_path / "run"
    assert _train(out, "--resume", "auto") == 0  # nothing there: starts
    first = (out / "metrics.jsonl").read_text()
    assert _train(out, "--resume", "auto", "--epochs", "3") == 0  # continues from last.pt
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [0, 1, 2]
    assert (out / "metrics.jsonl").read_text().startswith(first)
    # a run killed before its first checkpoint left only config.json: the same run starts afresh
    (out / "last.pt").unlink()
    (out / "best.pt").unlink()
    assert _train(out, "--resume", "auto") == 0
    assert [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [0, 1]


@pytest.mark.parametrize("name", ["best.pt", "last.pt", "config.json"])
def test_damaged_run_files_are_one_line_errors_naming_the_file(run, capsys, name):
    out = run
    path = out / name
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    capsys.readouterr()
    if name == "last.pt":
        code = _train(out, "--resume", "--epochs", "3")
    else:
        code = main(["eval", str(out), "--iw-samples", "2"])
    err = capsys.readouterr().err
    assert code == 2 and len(_errors(err)) == 1 and name in _errors(err)[0] and "Traceback" not in err


def test_a_checkpoint_refused_by_weights_only_is_a_one_line_error(run, capsys):
    import torch

    out = run
    torch.save({"model": {}, "epoch": 0, "evil": object()}, out / "best.pt")
    capsys.readouterr()
    assert main(["eval", str(out), "--iw-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert len(_errors(err)) == 1 and "best.pt" in _errors(err)[0]


def test_a_run_that_fails_on_its_data_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "never"
    args = ["train", "text", "--out", str(out), "--set", f"data.path={tmp_path / 'missing'}", "--no-progress"]
    assert main(args) == 2
    assert not out.exists()


def test_compare_resumes_a_half_trained_cell(tmp_path, inline_workers):
    grid = tmp_path / "grid"
    cell = grid / "vae" / "seed0"
    overrides = [value for flag, value in zip(TINY, TINY[1:], strict=False) if flag == "--set"]
    # a cell stopped after epoch 0 of 2: last.pt and one metrics record, no final.json
    assert _train(cell, "--seed", "0", "--epochs", "1") == 0
    (cell / "final.json").unlink()
    epoch0 = (cell / "metrics.jsonl").read_text()
    results = run_grid(Grid("synthetic", ("vae",), (0,), grid, epochs=2, train_limit=48, overrides=tuple(overrides)))
    assert results[("vae", 0)]["ok"], results
    text = (cell / "metrics.jsonl").read_text()
    assert text.startswith(epoch0)  # epoch 0 was kept, not retrained
    assert [json.loads(line)["epoch"] for line in text.splitlines()] == [0, 1]


def test_resume_and_eval_refuse_changed_data(run, capsys):
    out = run
    provenance = json.loads((out / "provenance.json").read_text())
    assert set(provenance["data"]) == {"train", "val", "test"} and provenance["world_size"] == 1
    provenance["data"]["test"] = "0" * 16  # as if the test file had been edited since
    (out / "provenance.json").write_text(json.dumps(provenance))
    capsys.readouterr()
    assert main(["eval", str(out)]) == 2
    assert "test data differ" in capsys.readouterr().err
    assert _train(out, "--resume", "--epochs", "3") == 2


def test_config_schema_is_saved_and_old_files_load_translated(run):
    from lagvae.config import SCHEMA_VERSION, load_json

    out = run
    saved = json.loads((out / "config.json").read_text())
    assert saved["schema"] == SCHEMA_VERSION
    del saved["schema"]
    (out / "config.json").write_text(json.dumps(saved))
    assert load_json(out / "config.json").schema == SCHEMA_VERSION  # version 0, translated on load
    assert _train(out, "--resume", "--epochs", "3") == 0  # an old run still resumes
    saved["schema"] = SCHEMA_VERSION + 1
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(Exception, match="newer"):
        load_json(out / "config.json")


def test_compare_plan_writes_one_resumable_train_line_per_unfinished_cell(tmp_path, capsys):
    import shlex

    grid = tmp_path / "grid"
    overrides = [value for flag, value in zip(TINY, TINY[1:], strict=False) if flag == "--set"]
    sets = [arg for value in overrides for arg in ("--set", value)]
    plan = tmp_path / "plan.txt"
    args = ["compare", "synthetic", "--methods", "vae,beta=0.5", "--seeds", "2", "--epochs", "1"]
    args += ["--train-limit", "48", "--out", str(grid), *sets]
    # one cell already finished: the plan leaves it out
    assert _train(grid / "vae" / "seed0", "--seed", "0", "--epochs", "1") == 0
    assert main([*args, "--plan", str(plan)]) == 0
    lines = plan.read_text().splitlines()
    assert len(lines) == 3 and "wrote 3 commands" in capsys.readouterr().out
    assert not (grid / "beta=0.5").exists()  # planning trains nothing
    for line in lines:  # each line is the run compare would make there, and finishes it
        argv = shlex.split(line)
        assert argv[:2] == ["lagvae", "train"] and argv[-2:] == ["--resume", "auto"]
        assert main(argv[1:]) == 0
    assert "train.beta=0.5" in plan.read_text()
    capsys.readouterr()
    assert main([*args, "--report-only"]) == 0
    report = (grid / "compare.md").read_text()
    assert "| vae |" in report and "| beta=0.5 |" in report and report.count(" 2 |") >= 2  # 2 runs each


@pytest.mark.slow
def test_a_killed_compare_stops_its_workers_at_a_checkpoint(tmp_path):
    """SIGKILL the `compare` process: its worker must not train on as an orphan, but checkpoint and stop."""
    import signal
    import subprocess
    import sys

    grid = ["compare", "synthetic", "--methods", "aggressive", "--seeds", "1", "--epochs", "20", "--jobs", "1"]
    grid += ["--train-limit", "640", "--out", str(tmp_path), "--set", "eval.posterior_points=0"]
    parent = subprocess.Popen(
        [sys.executable, "-m", "lagvae", *grid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    cell = tmp_path / "aggressive" / "seed0"
    deadline = time.monotonic() + 120
    while not (cell / "config.json").exists():  # the worker is training
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.1)
    children = _children(parent.pid)  # the worker and multiprocessing's resource tracker
    assert children
    parent.send_signal(signal.SIGKILL)
    parent.wait(timeout=60)
    deadline = time.monotonic() + 60
    while not (cell / "error.txt").exists():
        assert time.monotonic() < deadline, "the orphaned worker kept training"
        time.sleep(0.2)
    assert "stopped by SIGTERM" in (cell / "error.txt").read_text()
    assert (cell / "last.pt").exists()  # resumable
    _wait_exited(children, "the orphaned worker stayed alive, idle, after its checkpoint")


@pytest.mark.slow
def test_the_log_of_a_parallel_grid_names_each_line_s_cell(tmp_path):
    """Two worker processes share the grid's stderr: each epoch line and test estimate says whose it is."""
    import subprocess
    import sys

    grid = ["compare", "synthetic", "--methods", "vae,aggressive", "--seeds", "1", "--epochs", "2", "--jobs", "2"]
    grid += ["--out", str(tmp_path / "grid"), "--set", "eval.posterior_points=0", "--set", "eval.iw_samples=4"]
    grid += ["--set", "data.n_train=64", "--set", "data.n_val=32", "--set", "data.n_test=16"]
    done = subprocess.run([sys.executable, "-m", "lagvae", *grid], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stderr.splitlines()
    for label in ("vae", "aggressive"):
        mine = [line for line in lines if line.startswith(f"lagvae: {label} seed 0: ")]
        assert [line for line in mine if ": epoch 1: validation ELBO" in line], done.stderr[-2000:]
        assert [line for line in mine if "test: K = 4 on 16 examples" in line], done.stderr[-2000:]
    # no worker line goes out unlabelled (Python's last-resort handler prints bare messages)
    assert not [line for line in lines if line.startswith(("epoch ", "test: K", "posterior collapse"))]


def test_a_worker_s_log_lines_carry_its_cell_and_the_grid_s_level(capsys):
    """A bar-less cell logs its progress at the grid's level; beside a bar only warnings show."""
    import logging

    from lagvae.experiments.compare import RunSpec, cell_logging

    logger = logging.getLogger("lagvae")
    saved = (logger.handlers[:], logger.level, logger.propagate)
    spec = RunSpec("synthetic", "beta=0.8", "beta", 2, Path("unused"), None, None, None, ())
    try:
        cell_logging(spec, logging.INFO)
        logger.info("epoch 3: validation ELBO -1.00")
        cell_logging(spec, logging.WARNING)  # `--quiet`
        logger.info("hidden")
        spec.bar_position = 1
        cell_logging(spec, logging.INFO)
        logger.info("hidden too")
        logger.warning("posterior collapse 50% of the time")
    finally:
        logger.handlers[:], logger.level, logger.propagate = saved
    assert capsys.readouterr().err.splitlines() == [
        "lagvae: beta=0.8 seed 2: epoch 3: validation ELBO -1.00",
        "lagvae: beta=0.8 seed 2: posterior collapse 50% of the time",
    ]


def _wait_exited(pids: list[int], failure: str, seconds: float = 30) -> None:
    """Poll until every pid has exited (a zombie counts: it holds no files or locks), else fail with `failure`."""
    deadline = time.monotonic() + seconds
    while any(Path(f"/proc/{pid}").exists() and not _zombie(pid) for pid in pids):
        assert time.monotonic() < deadline, failure
        time.sleep(0.05)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return False


def test_a_cell_that_finishes_on_a_rerun_drops_its_old_error(tmp_path, monkeypatch):
    """error.txt beside a final.json would say a finished cell failed."""
    from lagvae.experiments import compare

    spec = compare.RunSpec("synthetic", "vae", "vae", 0, tmp_path, None, None, None, ())

    def fail(spec: compare.RunSpec) -> dict:
        raise RuntimeError("stopped by SIGTERM")

    monkeypatch.setattr(compare, "_run_one", fail)
    assert compare._attempt(spec) == {"ok": False, "error": "RuntimeError: stopped by SIGTERM"}
    assert "stopped by SIGTERM" in (tmp_path / "error.txt").read_text()
    monkeypatch.setattr(compare, "_run_one", lambda spec: {"nll": 1.0})
    assert compare._attempt(spec) == {"ok": True, "nll": 1.0}
    assert not (tmp_path / "error.txt").exists()


def test_raising_a_grids_epoch_cap_continues_the_cells_the_old_cap_ended(tmp_path, inline_workers, capsys):
    from lagvae.experiments import compare

    grid = tmp_path / "grid"
    overrides = [value for flag, value in zip(TINY, TINY[1:], strict=False) if flag == "--set"]
    args = ["compare", "synthetic", "--methods", "vae", "--seeds", "1", "--train-limit", "48", "--out", str(grid)]
    args += [arg for value in overrides for arg in ("--set", value)]
    cell = grid / "vae" / "seed0"
    assert main([*args, "--epochs", "1"]) == 0
    assert json.loads((cell / "final.json").read_text())["epochs"] == 1
    assert main([*args, "--epochs", "1"]) == 0  # the same cap: nothing to train
    assert len((cell / "metrics.jsonl").read_text().splitlines()) == 1
    plan = tmp_path / "plan.txt"
    assert main([*args, "--epochs", "3", "--plan", str(plan)]) == 0
    assert len(plan.read_text().splitlines()) == 1  # the plan lists the cell the higher cap continues
    assert main([*args, "--epochs", "3"]) == 0
    final = json.loads((cell / "final.json").read_text())
    assert final["epochs"] == 3 and len((cell / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((cell / "config.json").read_text())["train"]["epochs"] == 3
    spec = compare.RunSpec("synthetic", "vae", "vae", 0, cell, 5, None, None, ())
    assert compare.ended_below_cap(spec, {"epochs": 3})
    assert not compare.ended_below_cap(spec, {"epochs": 2})  # the LR rule ended it before its cap
    (cell / "last.pt").unlink()
    assert not compare.ended_below_cap(spec, {"epochs": 3})  # nothing to continue from
    capsys.readouterr()


def test_a_preempted_cell_reads_as_stopped_mid_run_not_failed(tmp_path, monkeypatch):
    """A SIGTERM (a session's end) leaves a resumable cell: its tables must not call it failed."""
    from lagvae.errors import Preempted
    from lagvae.experiments import compare

    spec = compare.RunSpec("synthetic", "vae", "vae", 0, tmp_path, None, None, None, ())
    for err, record in (
        (Preempted("stopped by SIGTERM after step 27 (epoch 0)"), None),
        (RuntimeError("loss is NaN"), {"ok": False, "error": "RuntimeError: loss is NaN"}),
    ):

        def fail(spec: compare.RunSpec, err: Exception = err) -> dict:
            raise err

        monkeypatch.setattr(compare, "_run_one", fail)
        assert not compare._attempt(spec)["ok"]
        assert compare.read_cell(tmp_path) == record


def test_a_folder_in_use_is_refused_by_train_eval_and_compare(run, tmp_path, capsys, inline_workers):
    """Two live processes in one folder would mix two runs' files: the second one is refused at once."""
    import os

    from lagvae.training.run_folder import RunFolder

    out = run
    before = _snapshot(out)
    with RunFolder(out).lock():  # a separate open file description: flock conflicts as with another process
        capsys.readouterr()
        for argv in (["train", "synthetic", "--out", str(out), *TINY, "--resume", "auto"], ["eval", str(out)]):
            assert main(argv) == 2
            (error,) = _errors(capsys.readouterr().err)
            assert f"is in use by another lagvae process (pid {os.getpid()})" in error
        cell = tmp_path / "grid" / "vae" / "seed0"
        cell.mkdir(parents=True)
        with RunFolder(cell).lock():
            grid = Grid("synthetic", ("vae",), (0,), tmp_path / "grid", epochs=1, train_limit=48)
            (result,) = run_grid(grid, jobs=1).values()
        assert not result["ok"] and "in use" in result["error"] and list(cell.iterdir()) == [cell / ".lock"]
    assert _snapshot(out) == before
    assert _train(out, "--resume", "auto") == 0  # released with the process (here, the context) that held it


def test_a_grid_in_progress_has_its_compare_json_and_tables(tmp_path, monkeypatch):
    """A report of a grid whose cells still train must know its preset, methods, seeds and reference, and its
    tables follow the cells as they end."""
    from concurrent.futures import ThreadPoolExecutor

    from lagvae.experiments import compare

    folder = tmp_path / "g"
    seen: list[dict] = []

    def cell(spec: compare.RunSpec) -> dict:
        seen.append(json.loads((folder / "compare.json").read_text()))
        if spec.method == "vae":  # the second cell: the first one's failure reaches compare.md meanwhile
            deadline = time.monotonic() + 30
            while "aggressive-anneal seed 0: RuntimeError" not in (folder / "compare.md").read_text():
                assert time.monotonic() < deadline, "compare.md never listed the finished cell"
                time.sleep(0.05)
        spec.out.mkdir(parents=True, exist_ok=True)
        raise RuntimeError("stopped")  # a failed cell: the grid goes on and its tables list it

    monkeypatch.setattr(compare, "_run_one", cell)
    monkeypatch.setattr(compare, "worker_pool", lambda workers: ThreadPoolExecutor(1))  # cells in turn, in order
    grid = Grid("synthetic", ("vae", "aggressive-anneal"), (0,), folder, epochs=1, reference="aggressive-anneal")
    results = run_grid(grid, jobs=1)
    spec = {"preset": "synthetic", "methods": ["vae", "aggressive-anneal"], "seeds": [0]}
    assert seen == [spec | {"reference": "aggressive-anneal"}] * 2
    assert [r["ok"] for r in results.values()] == [False, False]
