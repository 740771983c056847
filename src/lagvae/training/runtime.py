"""Where a run executes: the torch device and the CPU thread count."""

from __future__ import annotations

import os

import torch

from lagvae.config import RunConfig
from lagvae.errors import ConfigError

MAX_AUTO_THREADS = 8


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {name!r} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"device {name!r} requested but only {torch.cuda.device_count()} CUDA device(s) exist")
    return device


def choose_threads(config: RunConfig, device: torch.device, processes: int = 1) -> int:
    """config.threads when set; 1 on GPU; otherwise this process's share of the cores (at most 8), when
    `processes` of one run share the machine.

    One run alone on the 2-core machine is faster on 2 threads even for the tiny synthetic model
    (docs/BENCHMARKS.md: 1.08x joint steps, 1.46x aggressive inner steps). Several runs at once must not
    each take every core: oversubscribed threads spin against each other, so `demo` and `compare`
    give each of their parallel runs one thread.
    """
    if config.threads > 0:
        return config.threads
    if device.type != "cpu":
        return 1
    return max(1, min(MAX_AUTO_THREADS, (os.cpu_count() or 1) // processes))


def setup_runtime(config: RunConfig, device_name: str | None = None, processes: int = 1) -> torch.device:
    """Resolve the device (`device_name` overrides config.device: a rank's own GPU) and set the thread count."""
    device = resolve_device(device_name or config.device)
    torch.set_num_threads(choose_threads(config, device, processes))
    return device
