"""Where a run's numbers come from: lagvae and torch versions, commit, device, threads, and a hash of each split."""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
from functools import cache
from importlib import metadata
from pathlib import Path
from typing import Any

import torch

from lagvae.data import Splits
from lagvae.errors import ConfigError


def fingerprint(split: Any) -> str:
    """sha256 over the shapes, dtypes and bytes of every tensor a split holds (tokens and lengths, or images)."""
    digest = hashlib.sha256()
    for f in dataclasses.fields(split):
        value = getattr(split, f.name)
        if isinstance(value, torch.Tensor):
            digest.update(f"{f.name}:{tuple(value.shape)}:{value.dtype};".encode())
            digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def data_fingerprints(splits: Splits) -> dict[str, str]:
    return {name: fingerprint(getattr(splits, name)) for name in ("train", "val", "test")}


@cache
def _commit() -> str | None:
    """The git commit of the lagvae source when it runs from a checkout (an editable install), else None."""
    source = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def environment(device: torch.device, world_size: int = 1) -> dict[str, Any]:
    """What ran the run: versions, commit, device, threads per process and the number of processes."""
    try:
        version = metadata.version("lagvae")
    except metadata.PackageNotFoundError:
        version = None
    return {
        "lagvae": version,
        "commit": _commit(),
        "torch": torch.__version__,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "world_size": world_size,
    }


def run_provenance(device: torch.device, fingerprints: dict[str, str], world_size: int = 1) -> dict[str, Any]:
    """provenance.json (and final.json's `provenance`): what ran the run, and a hash of each split it used."""
    return {**environment(device, world_size), "data": fingerprints}


def check_same_data(provenance: dict[str, Any] | None, current: dict[str, str], where: Path) -> None:
    """Refuse to resume or evaluate a run on data that differ from the data it was trained on, as its
    provenance.json hashed them (runs from before provenance.json are not checked)."""
    saved = (provenance or {}).get("data", {})
    changed = [name for name, digest in saved.items() if current.get(name) != digest]
    if changed:
        raise ConfigError(
            f"the {', '.join(changed)} data differ from what the run in {where} was trained on "
            "(its provenance.json hashes); was the corpus edited, or are other limits or paths set?"
        )
