"""Fitting a run onto its processes: refusing process counts its batches cannot share, and placing its model.

The process group itself (World, join, leave) lives in lagvae.distributed and is re-exported here, where it
was defined before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from lagvae.config import RunConfig
from lagvae.distributed import (  # noqa: F401 - re-exported for the imports that predate lagvae.distributed
    FAILED_KEY,
    SINGLE,
    World,
    current,
    join,
    launched_size,
    leave,
)
from lagvae.errors import ConfigError, GroupFailed  # noqa: F401 - GroupFailed: re-exported

if TYPE_CHECKING:
    from lagvae.data import Splits


def check_shards(world_size: int, config: RunConfig, splits: Splits) -> None:
    """Refuse, before training, a process count the batches cannot be shared by (one-line errors)."""
    if world_size == 1:
        return
    batch = config.train.batch_size
    if batch % world_size:
        raise ConfigError(
            f"train.batch_size {batch} is the global batch and must divide by the {world_size} processes "
            f"(each takes an equal shard); use --nproc_per_node that divides {batch}"
        )
    eval_batch = config.eval.batch_size or batch
    for name, size in (("train", batch), ("validation", eval_batch), ("test", eval_batch)):
        n = len(getattr(splits, "val" if name == "validation" else name))
        last = n % size if n >= size else n
        if 0 < last < world_size:
            raise ConfigError(
                f"the {name} split ({n} examples, batches of {size}) ends in a batch of {last}, fewer than the "
                f"{world_size} processes: use fewer processes, or a --train-limit / eval.batch_size that avoids it"
            )


def prepare_model(model: nn.Module, world: World, device: torch.device) -> Any:
    """`model` on this rank's device with rank 0's weights; BatchNorm becomes SyncBatchNorm across processes."""
    has_batchnorm = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    if world.size > 1 and has_batchnorm:
        if device.type != "cuda":
            raise ConfigError(
                "this model's BatchNorm must see the global batch (SyncBatchNorm), which PyTorch runs on GPUs only: "
                "train it in one process on the CPU, or with torchrun on GPUs"
            )
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model = model.to(device)
    world.broadcast_(model)
    return model
