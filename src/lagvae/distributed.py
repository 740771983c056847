"""The processes of one run: torch.distributed under torchrun (gloo on CPU, NCCL on CUDA), or one process.

`torchrun --nproc_per_node=N -m lagvae train ...` sets RANK, WORLD_SIZE and LOCAL_RANK; without them a run
is world size 1 and nothing here touches torch.distributed. This module knows nothing of runs, models or
training (lagvae.training.world fits a run onto the world), so metrics and training can both import it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor, nn

from lagvae.draws import Rows
from lagvae.errors import ConfigError, GroupFailed

FAILED_KEY = "lagvae/failed"  # the torchrun store key where a failing rank leaves its one-line reason


@dataclass
class World:
    """This process's place in the run: `rank` of `size`, and `local_rank` of `local_size` on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    joined: bool = False  # in a torch.distributed process group (torchrun), even of one process

    @property
    def is_main(self) -> bool:
        """Rank 0 alone writes the run folder and shows progress."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        """Collectives run: under torchrun, so `--nproc_per_node=1` exercises the same code (NCCL on a GPU)."""
        return self.joined

    def all_reduce_(self, t: Tensor) -> Tensor:
        """Sum `t` over the ranks, in place (every rank gets the same result)."""
        if self.distributed:
            on = _comm_device()
            if t.device == on:
                _collective(dist.all_reduce, t)
            else:  # NCCL reduces CUDA tensors only
                moved = t.to(on)
                _collective(dist.all_reduce, moved)
                t.copy_(moved)
        return t

    def gather_rows(self, t: Tensor, rows: Rows | None) -> Tensor:
        """The global batch's tensor from every rank's rows (each rank's `rows` are its tensor_split shard)."""
        if rows is None or not self.distributed:
            return t
        most = -(-rows.total // self.size)
        padded = t.new_zeros((most, *t.shape[1:]))
        padded[: t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        _collective(dist.all_gather, parts, padded)
        base, extra = divmod(rows.total, self.size)
        return torch.cat([part[: base + (r < extra)] for r, part in enumerate(parts)])

    def barrier(self) -> None:
        if self.distributed:
            _collective(dist.barrier)

    def broadcast_(self, module: nn.Module) -> None:
        """Make every rank's parameters and buffers rank 0's."""
        if self.distributed:
            for t in list(module.parameters()) + list(module.buffers()):
                _collective(dist.broadcast, t.data, 0)

    def agree(self, flags: Sequence[float]) -> list[float]:
        """The ranks' flags summed, so every rank takes the same branch (one small collective)."""
        return self.all_reduce_(torch.tensor(flags, dtype=torch.float64)).tolist()

    def report_failure(self, message: str) -> None:
        """Leave this rank's one-line reason where the others look when their collectives fail."""
        if self.distributed and dist.is_initialized():
            # the store may already be gone; the message still prints locally
            with contextlib.suppress(Exception):
                dist.distributed_c10d._get_default_store().set(FAILED_KEY, f"rank {self.rank}: {message}")


SINGLE = World()


def current() -> World:
    """The world this process joined (SINGLE before `join` or without torchrun)."""
    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    size = dist.get_world_size()
    local = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    return World(dist.get_rank(), size, int(os.environ.get("LOCAL_RANK", "0")), local, joined=True)


def _comm_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def _collective(op: object, *args: object) -> None:
    """Run a collective; a peer that died turns into one GroupFailed line naming it when it said why."""
    try:
        op(*args)  # type: ignore[operator]
    except (RuntimeError, dist.DistError) as err:
        raise GroupFailed(_peer_failure(err)) from None


def _peer_failure(err: Exception) -> str:
    """Why the group broke: the failing rank's own line when it left one, else the transport's error."""
    resume = "the run folder is resumable (--resume auto)"
    try:
        store = dist.distributed_c10d._get_default_store()
        if store.check([FAILED_KEY]):
            return f"stopped because {store.get(FAILED_KEY).decode()}; {resume}"
    except Exception:  # noqa: BLE001 - the store lives in the process that failed, or in torchrun
        pass
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"another process of the run died without a message (torchrun's summary names it: {first[:160]}); {resume}"


def launched_size() -> int:
    """WORLD_SIZE as torchrun set it; 0 when not launched by torchrun (no RANK)."""
    if "RANK" not in os.environ:
        return 0
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise ConfigError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} is not a number") from None


_watching: list[int] = []  # the launcher this process watches (once per process)


def stop_with_launcher(poll_seconds: float = 1.0) -> None:
    """A daemon thread that SIGTERMs this process once its launcher (torchrun) is gone, as `compare` does for its
    workers: a rank whose torchrun was SIGKILLed would otherwise train on, re-parented, holding the folder's lock.
    A rank in training then checkpoints at its next step and stops (the Trainer's SIGTERM stop, agreed by every
    rank); elsewhere SIGTERM ends it."""
    if _watching:
        return
    launcher = os.getppid()
    _watching.append(launcher)

    def watch() -> None:
        while os.getppid() == launcher:
            time.sleep(poll_seconds)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, daemon=True, name="lagvae-launcher-watch").start()


def join(device_name: str, timeout_minutes: float = 30.0) -> tuple[World, str]:
    """Join the process group torchrun described (once per process); returns the world and this rank's device.

    Each rank takes one device: cuda:LOCAL_RANK under NCCL, the CPU under gloo.
    """
    size = launched_size()
    if size == 0:
        return SINGLE, device_name
    stop_with_launcher()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    cuda = device_name.startswith("cuda") or (device_name == "auto" and torch.cuda.is_available())
    if cuda:
        if local_size > torch.cuda.device_count():
            raise ConfigError(
                f"{local_size} processes on this node but {torch.cuda.device_count()} CUDA device(s): "
                "use --nproc_per_node at most the number of GPUs"
            )
        torch.cuda.set_device(local_rank)
        device_name = f"cuda:{local_rank}"
    elif device_name == "auto":
        device_name = "cpu"
    if not dist.is_initialized():
        timeout = timedelta(minutes=timeout_minutes)
        try:
            store, _, _ = next(dist.rendezvous("env://", rank, size, timeout=timeout))
            # torchrun --standalone keeps its store across --max-restarts: without a per-attempt prefix a
            # restarted rank can read a dead peer's address from the failed attempt (seen: connection refused)
            attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
            store = dist.PrefixStore(f"lagvae/attempt-{attempt}", store)
            dist.init_process_group(
                "nccl" if cuda else "gloo", store=store, timeout=timeout, rank=rank, world_size=size
            )
        except (ValueError, RuntimeError, dist.DistError) as err:
            raise ConfigError(
                f"RANK={rank} and WORLD_SIZE={size} are set, but joining that process group failed ({err}); "
                "launch with torchrun, or unset RANK for one process"
            ) from None
    return World(rank, size, local_rank, local_size, joined=True), device_name


def leave() -> None:
    """Leave the process group at the end of a command (no-op in one process)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
