"""Data-parallel training on torch.distributed (gloo on this CPU): 2 processes give the one-process run."""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from lagvae import draws
from lagvae.config import ConfigError
from lagvae.data import build_data
from lagvae.data.batches import shard_bounds
from lagvae.draws import Rows
from lagvae.experiments.presets import make_config
from tests.test_kill_resume import ARGS, WAIT, _outcome, _wait_for_checkpoint
from tests.test_run_folder import _children, _wait_exited

TIMES = ("train_seconds", "test_seconds", "seconds")
# 90 training sentences in batches of 16 end in a batch of 10 (5 + 5 rows); 45 validation sentences in
# batches of 16 end in one of 13, shared 7 + 6: unequal shards are covered. At lr 1 this tiny run is chaotic:
# the two runs' float rounding (about 1e-7) grew to 3e-3 in the parameter norm within two aggressive steps of
# epoch 1, so the comparison trains at lr 0.5, where they agree to every printed digit over 3 epochs.
SETTINGS = [
    "data.n_train=90", "data.n_val=45", "data.n_test=32", "eval.iw_samples=8", "eval.posterior_points=0",
    "train.agg_max_inner=40", "train.lr_decay_min_epoch=50", "train.lr=0.5",
]  # fmt: skip


def test_rand_like_fills_in_memory_order_as_torch_does():
    for x in (torch.empty(5, 7, 3), torch.empty(7, 5, 3).transpose(0, 1), torch.empty(5, 6)[:, :3]):
        torch.manual_seed(0)
        expected = torch.rand_like(x)
        torch.manual_seed(0)
        assert torch.equal(draws.rand_like(x), expected)


def test_process_counts_the_batches_cannot_share_are_refused():
    from lagvae.training.world import check_shards

    config = make_config("synthetic", "vae", overrides=["data.n_train=90", "data.n_val=32", "data.n_test=32"])
    splits = build_data(config.data)
    check_shards(2, config, splits)
    with pytest.raises(ConfigError, match="must divide by the 3 processes"):
        check_shards(3, config, splits)
    with pytest.raises(ConfigError, match="must divide by the 32 processes"):
        check_shards(32, config, splits)  # more processes than the batch
    config.data.n_train = 81  # 81 = 5 x 16 + 1: a last batch of 1 cannot feed 2 processes
    with pytest.raises(ConfigError, match="train split .* ends in a batch of 1"):
        check_shards(2, config, build_data(config.data))


def test_sharded_free_bits_gives_the_one_process_value_and_gradient():
    from lagvae.objectives import free_bits_kl
    from lagvae.training.strategies import sharded_free_bits

    torch.manual_seed(0)
    kl = (torch.rand(10, 4) * torch.tensor([0.01, 0.2, 0.3, 2.0])).requires_grad_()  # dims below and above 0.1
    expected = free_bits_kl(kl, 0.1).mean()
    (expected_grad,) = torch.autograd.grad(expected, kl)
    bounds = shard_bounds(10, 3)
    sums = [kl[a:b].detach().sum(0) for a, b in itertools.pairwise(bounds)]

    class FakeWorld:  # the all-reduce of 3 ranks, with the other ranks' sums known
        def all_reduce_(self, t: torch.Tensor) -> torch.Tensor:
            return t.copy_(sum(sums))

    term = sharded_free_bits(FakeWorld(), 0.1)  # type: ignore[arg-type]
    value, grad = 0.0, torch.zeros_like(kl)
    for r in range(3):
        rows = Rows(bounds[r], bounds[r + 1], 10)
        with draws.sharded(rows):
            share = term(kl[rows.lo : rows.hi]).sum() / rows.total
        value += float(share.detach())
        grad += torch.autograd.grad(share, kl)[0]
    assert value == pytest.approx(float(expected.detach()), rel=1e-6)
    assert torch.allclose(grad, expected_grad, rtol=1e-6, atol=1e-8) and expected_grad.abs().sum() > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_recording(method: str, out: Path) -> None:
    """Train and test one run in this process's world, recording each outer step's inner-step count."""
    from lagvae.training.loop import Trainer
    from lagvae.training.world import current

    # A target inside this run's per-dimension batch-mean KLs (measured 1e-8 to 2e-6): the clamp holds one
    # dimension throughout and the other only in epoch 0, so the global batch mean decides, as in one process.
    extra = ["train.free_bits=1e-7"] if method == "free-bits" else []
    extra += ["train.pretrain.epochs=1", "train.warm_up=1"] if method == "pretrain-fb" else []
    extra += ["train.warm_up=1"] if method == "du-vae" else []  # the floor and the dropout from epoch 1
    config = make_config("synthetic", method, epochs=3, train_limit=90, overrides=[*SETTINGS, *extra])
    config.threads, config.progress = 1, False
    trainer = Trainer(config, out)
    inner: list[int] = []
    step = trainer.strategy.step

    def recording(x, kl_weight, rows=None):  # type: ignore[no-untyped-def]
        stats = step(x, kl_weight, rows)
        inner.append(stats.inner_steps)
        return stats

    trainer.strategy.step = recording  # type: ignore[method-assign]
    trainer.fit()
    trainer.test()
    Path(out, f"inner-{current().rank}.json").write_text(json.dumps(inner))


def _worker(rank: int, world: int, port: int, methods: list[str], root: str) -> None:
    """One rank of a 2-process group, joined as torchrun would join it; trains each method in turn in the
    same group (one spawn for them all: starting a process that imports torch costs seconds)."""
    os.environ |= {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(rank)}
    os.environ |= {"LOCAL_WORLD_SIZE": str(world), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)}
    from lagvae.training.world import leave

    for method in methods:
        _train_recording(method, Path(root) / method)
    leave()


def _recorded(out: Path, world: int) -> tuple[list[dict], list[list[int]]]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return records, [json.loads((out / f"inner-{r}.json").read_text()) for r in range(world)]


def _two_processes_match_one(methods: list[str], root: Path) -> None:
    """Train `methods` in this process and in one 2-process gloo group; every number must agree."""
    for method in methods:
        _train_recording(method, root / "one" / method)
    context = mp.start_processes(
        _worker, (2, _free_port(), methods, str(root / "two")), nprocs=2, start_method="spawn", join=False
    )
    deadline = time.monotonic() + 240  # a hung rank fails the test instead of waiting for the group's timeout
    while not context.join(timeout=5):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError("the 2-process group did not finish within 240 s")
    for method in methods:
        _assert_same_run(method, _recorded(root / "one" / method, 1), _recorded(root / "two" / method, 2))
        for run in ("one", "two"):  # each test example's NLL once, gathered from the ranks in split order
            table = np.loadtxt(root / run / method / "test_nll.csv", delimiter=",", skiprows=1)
            assert table[:, 0].tolist() == list(range(32))
            final = json.loads((root / run / method / "final.json").read_text())
            assert table[:, 1].mean() == pytest.approx(final["nll"], abs=1e-4)


def _assert_same_run(method: str, one: tuple[list[dict], list], two: tuple[list[dict], list]) -> None:
    (records_one, (inner_one,)), (records_two, inner_two) = one, two
    assert inner_two[0] == inner_two[1] == inner_one, method  # the same inner steps at every outer step
    assert len(records_one) == len(records_two) == (4 if method == "pretrain-fb" else 3)  # + its autoencoder epoch
    for a, b in zip(records_one, records_two, strict=True):
        assert a.keys() == b.keys()
        for key in a.keys() - set(TIMES):
            if isinstance(a[key], str | None):  # the collapse alarm
                assert a[key] == b[key], (method, a["epoch"], key)
            else:
                assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-4), (method, a["epoch"], key)
    if method == "aggressive":  # the switch-off falls inside the run, at the same epoch
        flags = [r["aggressive"] for r in records_one]
        assert flags == [r["aggressive"] for r in records_two] and flags[0] and not flags[-1]
        assert sum(inner_one) > 2 * len(inner_one)


def test_two_gloo_processes_train_the_one_process_aggressive_run(tmp_path):
    """The fast tier's 2-process check: the paper's method, whose every branch depends on reduced numbers."""
    _two_processes_match_one(["aggressive"], tmp_path)


@pytest.mark.slow
def test_two_gloo_processes_train_the_one_process_run_for_every_strategy(tmp_path):
    # bn-vae and du-vae: BatchNorm statistics of the global batch (an explicit all-reduce); du-vae's variance
    # dropout draws; mdr: the multiplier's step on the global batch's KL; pretrain-fb: the phase boundary
    later = ["pretrain-fb", "bn-vae", "delta-vae", "du-vae", "skip-vae", "mdr"]
    _two_processes_match_one(["vae", "free-bits", "savae", *later], tmp_path)


def _torchrun(out: Path, *extra: str) -> list[str]:
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    return [*launcher, "-m", "lagvae", "train", "synthetic", "--out", str(out), *ARGS, *extra]


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted 2-process run of the kill tests' settings (last.pt after every step)."""
    out = tmp_path_factory.mktemp("ddp") / "uninterrupted"
    done = subprocess.run(_torchrun(out), capture_output=True, text=True, timeout=WAIT)
    assert done.returncode == 0, done.stderr
    return out


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL torchrun and its ranks at once, as a lost node; torchrun starts each rank in its own session,
    so killing torchrun's process group alone would leave the ranks training on (and holding the folder)."""
    ranks = _children(proc.pid)
    assert len(ranks) == 2, ranks
    for pid in (proc.pid, *ranks):
        os.kill(pid, signal.SIGKILL)
    proc.wait(timeout=WAIT)
    _wait_exited(ranks, "the killed ranks did not exit")


@pytest.mark.slow
def test_two_process_group_killed_mid_epoch_resumes_to_the_uninterrupted_run(tmp_path, two_process_run):
    assert json.loads((two_process_run / "provenance.json").read_text())["world_size"] == 2
    out = tmp_path / "killed"
    proc = subprocess.Popen(
        _torchrun(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    _wait_for_checkpoint(proc, out, 1, 4)
    _kill_tree(proc)
    resumed = subprocess.run(_torchrun(out, "--resume"), capture_output=True, text=True, timeout=WAIT)
    assert resumed.returncode == 0, resumed.stderr
    assert _outcome(out) == _outcome(two_process_run)


# Rank 1 fails at its 14th outer step (epoch 1) on torchrun's first attempt only.
FAIL_ONCE = """
import os, sys
from lagvae.config import LagvaeError
from lagvae.training import aggressive
step, calls = aggressive.AggressiveStrategy.step, [0]
def failing(self, x, kl_weight, rows=None):
    calls[0] += 1
    if os.environ["RANK"] == "1" and os.environ["TORCHELASTIC_RESTART_COUNT"] == "0" and calls[0] == 14:
        raise LagvaeError("the disk of node 7 is full")
    return step(self, x, kl_weight, rows)
aggressive.AggressiveStrategy.step = failing
from lagvae.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_failing_rank_is_named_and_torchrun_restarts_continue_from_last_pt(tmp_path, two_process_run):
    script = tmp_path / "fail_once.py"
    script.write_text(FAIL_ONCE)
    command = _torchrun(tmp_path / "run", "--resume", "auto")
    command[command.index("-m", 4) : command.index("train")] = [str(script)]
    command.insert(command.index("--nproc_per_node=2"), "--max-restarts=1")
    done = subprocess.run(command, capture_output=True, text=True, timeout=2 * WAIT)
    assert done.returncode == 0, done.stderr
    ours = [line for line in done.stderr.splitlines() if line.startswith("lagvae: error")]
    assert sorted(ours) == [
        "lagvae: error (rank 0 of 2): stopped because rank 1: the disk of node 7 is full; "
        "the run folder is resumable (--resume auto)",
        "lagvae: error (rank 1 of 2): the disk of node 7 is full",
    ]
    assert _outcome(tmp_path / "run") == _outcome(two_process_run)


@pytest.mark.slow
def test_a_process_count_the_batch_cannot_share_is_one_line_before_training(tmp_path):
    command = _torchrun(tmp_path / "run")
    command[command.index("--nproc_per_node=2")] = "--nproc_per_node=3"
    done = subprocess.run(command, capture_output=True, text=True, timeout=WAIT)
    ours = [line for line in done.stderr.splitlines() if line.startswith("lagvae: error")]
    assert done.returncode != 0 and len(ours) == 3, done.stderr  # each rank says it once
    assert all("must divide by the 3 processes" in line for line in ours)
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
def test_ranks_stop_with_their_launcher_and_resume_to_the_uninterrupted_run(tmp_path, two_process_run):
    """SIGKILL torchrun alone: each rank sees its launcher gone, checkpoints at its next step and exits, instead of
    training on re-parented (holding the folder's lock, writing last.pt); --resume auto then continues exactly."""
    out = tmp_path / "orphaned"
    proc = subprocess.Popen(
        _torchrun(out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    _wait_for_checkpoint(proc, out, 1, 4)
    ranks = _children(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=WAIT)
    _wait_exited(ranks, "a rank trained on after its launcher died", seconds=10)
    assert not (out / "final.json").exists()  # stopped, not trained to the end
    resumed = subprocess.run(_torchrun(out, "--resume", "auto"), capture_output=True, text=True, timeout=WAIT)
    assert resumed.returncode == 0, resumed.stderr
    assert _outcome(out) == _outcome(two_process_run)
