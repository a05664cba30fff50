"""Process groups for multi-process training under ``torchrun``.

``torchrun --nproc_per_node=N -m crossmodal train ...`` sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` for every process;
:func:`init_distributed` joins the group they describe (NCCL on CUDA, gloo on CPU). A plain
``crossmodal train`` has no ``WORLD_SIZE`` and runs as a single process: every helper here
is then a no-op.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from ..device import uses_cuda
from ..errors import CrossmodalError

__all__ = ["all_reduce_max", "barrier", "broadcast_buffers", "cleanup", "comm_device",
           "init_distributed", "local_rank", "rank", "world_size"]

_ENV = ("RANK", "MASTER_ADDR", "MASTER_PORT")


def init_distributed(device: str = "auto") -> tuple[int, int, int]:
    """Join the process group described by torchrun's environment.

    Args:
        device: ``train.device``; NCCL when it means CUDA (and each process then uses
            GPU ``LOCAL_RANK``), gloo otherwise.

    Returns:
        ``(rank, world_size, local_rank)``; ``(0, 1, 0)`` without ``WORLD_SIZE`` or with
        ``WORLD_SIZE=1``, when nothing is initialised.

    Raises:
        CrossmodalError: ``WORLD_SIZE`` > 1 without the rest of torchrun's variables.
    """
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        return 0, 1, 0
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size(), local_rank()
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise CrossmodalError(f"WORLD_SIZE={world} but {', '.join(missing)} not set; launch "
                              f"multi-process training with `torchrun --nproc_per_node=N -m "
                              f"crossmodal train ...`")
    if uses_cuda(device):
        torch.cuda.set_device(local_rank())
        backend = "nccl"
    else:
        backend = "gloo"
    dist.init_process_group(backend, rank=int(os.environ["RANK"]), world_size=world)
    return dist.get_rank(), world, local_rank()


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """Processes in the group (1 when not distributed)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def local_rank() -> int:
    """This process's index on its machine (torchrun's ``LOCAL_RANK``; 0 by default)."""
    return int(os.environ.get("LOCAL_RANK", "0") or 0)


def comm_device(device: torch.device) -> torch.device:
    """Where a collective's tensors live: the training device under NCCL, else the CPU."""
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def all_reduce_max(value: int, device: torch.device) -> int:
    """The largest ``value`` over all processes (``value`` itself when not distributed)."""
    if world_size() == 1:
        return value
    flag = torch.tensor([value], dtype=torch.int64, device=comm_device(device))
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    return int(flag.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Give every process rank 0's buffers of ``module`` (no-op when not distributed)."""
    if world_size() > 1:
        for buffer in module.buffers():
            dist.broadcast(buffer, src=0)


def barrier() -> None:
    """Wait for every process of the group (no-op when not distributed)."""
    if world_size() > 1:
        if dist.get_backend() == "nccl":
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def cleanup() -> None:
    """Leave the process group, if one was joined."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
