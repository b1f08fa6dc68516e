"""torch.distributed helpers: start/stop a process group under torchrun, rank checks, shared values.

``torchrun --nproc_per_node=K -m visionpeft train RECIPE`` sets ``WORLD_SIZE``/``RANK``/``LOCAL_RANK``;
without them everything here is a single-process no-op.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["is_distributed", "rank", "world_size", "is_main", "init_distributed", "barrier",
           "broadcast_object", "all_reduce_sum", "timestamp"]


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    """Only rank 0 writes files, logs and prints."""
    return rank() == 0


def init_distributed() -> bool:
    """Start the process group when launched by torchrun (nccl on GPU, gloo on CPU); return whether it did."""
    if is_distributed():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend=backend)
    return True


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def broadcast_object(value: Any) -> Any:
    """Rank 0's ``value`` on every rank (e.g. the run-directory name)."""
    if not is_distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (metrics computed on each rank's shard)."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def timestamp() -> str:
    """A run-directory timestamp, identical on every rank."""
    return broadcast_object(time.strftime("%Y%m%d-%H%M%S"))
