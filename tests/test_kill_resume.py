"""Kill a real training process anywhere (SIGKILL, or SIGTERM as a scheduler does) and resume: same run, exactly."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow  # SIGKILL and SIGTERM of real processes: `make test-all`

# A kill test waits at most this long for any process: a hung run fails the test instead of holding CI.
WAIT = 120
# 10 outer steps an epoch, aggressive mode on, last.pt written after every step (checkpoint_minutes tiny)
ARGS = [
    "--method", "aggressive", "--epochs", "3", "--train-limit", "160", "--no-progress", "--threads", "1",
    "--set", "data.n_train=160", "--set", "data.n_val=32", "--set", "data.n_test=16", "--set", "eval.iw_samples=8",
    "--set", "eval.posterior_points=0", "--set", "train.checkpoint_minutes=1e-6", "--set", "train.agg_max_inner=30",
    "--set", "train.agg_mi_patience=5",  # keeps aggressive mode on into epoch 1 whatever I_q does on tiny data
]  # fmt: skip
TIMES = ("train_seconds", "test_seconds", "seconds")


def _command(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "lagvae.cli", "train", "synthetic", "--out", str(out), *ARGS, *extra]


def _outcome(out: Path) -> tuple[list[dict], dict]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = json.loads((out / "final.json").read_text())
    strip = lambda d: {k: v for k, v in d.items() if k not in TIMES and k != "provenance"}  # noqa: E731
    return [strip(r) for r in records], strip(final)


def _finish(command: list[str]) -> subprocess.CompletedProcess:
    """Run `command` to its end (at most WAIT seconds) and fail the test on a non-zero exit."""
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return done


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict]:
    """The uninterrupted run both kill tests must reproduce, trained once."""
    out = tmp_path_factory.mktemp("kill") / "uninterrupted"
    _finish(_command(out))
    return _outcome(out)


def _wait_for_checkpoint(proc: subprocess.Popen, out: Path, epoch: int, position: int) -> None:
    """Poll last.pt until it was written inside `epoch` at step `position` or later of that epoch."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run finished before the kill point"
        try:
            ckpt = torch.load(out / "last.pt", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError):
            ckpt = None
        partial = ckpt and ckpt["partial_epoch"]
        if partial and ckpt["state"]["epoch"] == epoch and partial["count"] >= position:
            return
        time.sleep(0.005)
    raise AssertionError("no checkpoint at the kill point")


def test_sigkill_anywhere_then_resume_gives_the_uninterrupted_run(tmp_path, reference):
    expected = reference
    assert expected[0][0]["aggressive"] and expected[0][1]["aggressive"]  # the kills land in aggressive mode
    for epoch, position in ((0, 2), (1, 4)):  # inside epoch 0, and mid-epoch in a later epoch
        out = tmp_path / f"killed-{epoch}"
        proc = subprocess.Popen(_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_for_checkpoint(proc, out, epoch, position)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=WAIT)
        _finish(_command(out, "--resume"))
        assert _outcome(out) == expected


def test_sigterm_checkpoints_at_the_next_step_and_stops_with_one_line(tmp_path, reference):
    out = tmp_path / "preempted"
    proc = subprocess.Popen(_command(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _wait_for_checkpoint(proc, out, 1, 1)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT)
    errors = [line for line in err.splitlines() if "error" in line]  # the corpus summary precedes it
    assert proc.returncode == 2 and len(errors) == 1 and "stopped by SIGTERM" in errors[0], err
    assert "Traceback" not in err
    assert torch.load(out / "last.pt", weights_only=True)["partial_epoch"] is not None
    _finish(_command(out, "--resume", "auto"))
    assert _outcome(out) == reference


def test_sigterm_during_the_test_is_one_line_and_resume_tests_the_trained_run(tmp_path, reference):
    """Once training has ended the handler still stands: SIGTERM in a long IW test (K = 6000 here) stops it at
    its next chunk with one line and exit 2, not the default death (exit 143); --resume auto then tests the run
    without training it again."""
    out = tmp_path / "in-test"
    long_test = ["--set", "eval.iw_samples=6000", "--set", "eval.max_memory_mb=1"]
    proc = subprocess.Popen(_command(out, *long_test), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + WAIT
    while True:  # training has ended: last.pt holds epoch 3 of 3, whole
        assert time.monotonic() < deadline and proc.poll() is None, "no end of training seen before the test ended"
        try:
            ckpt = torch.load(out / "last.pt", weights_only=True)
        except (FileNotFoundError, RuntimeError, EOFError):
            ckpt = None
        if ckpt and ckpt["state"]["epoch"] == 3 and ckpt["partial_epoch"] is None:
            break
        time.sleep(0.01)
    time.sleep(1.0)  # into the test
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT)
    errors = [line for line in err.splitlines() if "error" in line]
    assert proc.returncode == 2 and len(errors) == 1 and "during the test" in errors[0], (proc.returncode, err)
    assert not (out / "final.json").exists()
    _finish(_command(out, *long_test, "--resume", "auto"))
    records, final = _outcome(out)
    assert records == reference[0] and final["iw_samples"] == 6000 and final["epochs"] == 3
