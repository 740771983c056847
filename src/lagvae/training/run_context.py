"""A run's surroundings in one object: its folder and the lock on it, its processes, SIGTERM, provenance."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch

from lagvae import distributed
from lagvae.distributed import World
from lagvae.errors import LagvaeError
from lagvae.training.provenance import check_same_data, run_provenance
from lagvae.training.run_folder import PROVENANCE, RunFolder


class RunContext:
    """Where one run lives and what happens around its training, so the Trainer only trains:

    - `folder`, which rank 0 locks while the run lives (`held`);
    - `world`, this process's place in the process group, and `device_name`, the device `join` gave this rank;
      a rank that fails with a LagvaeError leaves its reason in the group's store for the others (`held`);
    - `stop_requested`, set by SIGTERM while `sigterm_stops` is active (a scheduler's preemption);
    - provenance: the device and the hashes of the data the run trains on (`record`), written to
      provenance.json and checked on resume.
    """

    def __init__(self, folder: RunFolder, world: World, device_name: str) -> None:
        self.folder = folder
        self.world = world
        self.device_name = device_name
        self.stop_requested = False
        self.device = torch.device("cpu")  # set by `record`
        self.fingerprints: dict[str, str] = {}

    @classmethod
    def join(cls, out_dir: Path | str, device_name: str) -> RunContext:
        """The context of a run in `out_dir`, having joined the process group torchrun describes (if any)."""
        world, rank_device = distributed.join(device_name)
        return cls(RunFolder(out_dir), world, rank_device)

    @contextmanager
    def held(self) -> Iterator[RunContext]:
        """While the run lives: rank 0 holds the folder's lock (it writes the folder for every rank), and a
        LagvaeError raised inside is left in the process group's store, so the other ranks, whose next
        collective breaks, quote it (lagvae.distributed.GroupFailed)."""
        try:
            with self.folder.lock() if self.world.is_main else nullcontext():
                yield self
        except LagvaeError as err:
            self.world.report_failure(str(err))
            raise

    @contextmanager
    def sigterm_stops(self) -> Iterator[None]:
        """While training, SIGTERM (a scheduler's preemption) sets `stop_requested`: the trainer writes a
        checkpoint at the next step boundary, then stops. Signal handlers are installed from the main thread
        only; elsewhere SIGTERM keeps its handler."""
        if threading.current_thread() is not threading.main_thread():
            yield
            return

        def request_stop(signum: int, frame: Any) -> None:
            self.stop_requested = True

        previous = signal.signal(signal.SIGTERM, request_stop)
        try:
            yield
        finally:
            signal.signal(signal.SIGTERM, previous)

    def record(self, device: torch.device, fingerprints: dict[str, str]) -> None:
        """The device this rank trains on and the hashes of the run's data splits, for provenance."""
        self.device = device
        self.fingerprints = fingerprints

    def provenance(self) -> dict[str, Any]:
        """provenance.json (and final.json's `provenance`): versions, device, processes and the data's hashes."""
        return run_provenance(self.device, self.fingerprints, self.world.size)

    def check_data(self) -> None:
        """Refuse data that differ from those the run in this folder was trained on."""
        check_same_data(self.folder.read_json(PROVENANCE), self.fingerprints, self.folder.path)
