"""Data-parallel training (``strategy="ddp"``) in processes launched by ``torchrun``.

Each process trains a replica on its share of every epoch's minibatches; gradients are
averaged by :class:`torch.nn.parallel.DistributedDataParallel`, and epoch metrics are
summed over processes before they are logged, so every process records the same history
and takes the same early-stopping and learning-rate decisions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

_LAUNCH_VARIABLES = ("WORLD_SIZE", "RANK", "LOCAL_RANK")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in the process group."""

    world_size: int
    rank: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is the process that reports (rank 0)."""
        return self.rank == 0


def is_ddp_strategy(strategy: object) -> bool:
    """Whether ``strategy`` names data-parallel training (``"ddp"``, ``"ddp_find_..."``)."""
    return isinstance(strategy, str) and strategy.startswith("ddp")


def init_distributed(accelerator: str) -> DistributedContext:
    """Join (or reuse) the process group ``torchrun`` set up for this process.

    Parameters
    ----------
    accelerator
        ``"gpu"``/``"cuda"`` (NCCL, one GPU per process: ``cuda:LOCAL_RANK``) or ``"cpu"``
        (gloo).

    Returns
    -------
    DistributedContext
        World size, ranks and the device of this process.

    Raises
    ------
    RuntimeError
        When the process was not launched by ``torchrun`` (or a launcher setting the same
        variables).
    """
    missing = [name for name in _LAUNCH_VARIABLES if name not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(
            "strategy='ddp' trains one process per device and needs the script launched "
            "with torchrun, e.g. `torchrun --standalone --nproc-per-node 2 train.py`; "
            f"{', '.join(missing)} not set."
        )
    use_cuda = accelerator in ("gpu", "cuda")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    local_rank = int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    return DistributedContext(dist.get_world_size(), dist.get_rank(), local_rank, device)


def active_world_size() -> int:
    """Number of processes training together (1 outside a process group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def sum_over_processes(values: torch.Tensor) -> torch.Tensor:
    """``values`` summed over every process of the group (unchanged when there is one)."""
    if active_world_size() == 1:
        return values
    device = values.device
    if dist.get_backend() == "nccl" and device.type != "cuda":
        summed = values.to(torch.device("cuda", torch.cuda.current_device()))
    else:
        summed = values.clone()
    dist.all_reduce(summed, op=dist.ReduceOp.SUM)
    return summed.to(device)


__all__ = [
    "DistributedContext",
    "active_world_size",
    "init_distributed",
    "is_ddp_strategy",
    "sum_over_processes",
]
