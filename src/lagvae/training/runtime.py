"""Where a run executes: the torch device and the CPU thread count."""

from __future__ import annotations

import os

import torch

from lagvae.config import ConfigError, RunConfig

# Measured on a 2-core machine (docs/BENCHMARKS.md): below this decoder width, per-op thread start-up
# costs more than the parallel matmul saves, and 1 thread is several times faster than 2.
SMALL_MODEL_HIDDEN = 256


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


def choose_threads(config: RunConfig, device: torch.device) -> int:
    """config.threads when set; otherwise 1 for small models or GPU runs, else all cores (at most 8)."""
    if config.threads > 0:
        return config.threads
    if device.type != "cpu" or config.model.dec_hidden < SMALL_MODEL_HIDDEN:
        return 1
    return max(1, min(8, os.cpu_count() or 1))


def setup_runtime(config: RunConfig) -> torch.device:
    device = resolve_device(config.device)
    torch.set_num_threads(choose_threads(config, device))
    return device
