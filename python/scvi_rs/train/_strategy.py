"""Where and how training runs: one object resolved once from ``accelerator``/``devices``/``strategy``.

:class:`Strategy` answers the questions Lightning's ``trainer.strategy`` answers for
callbacks (``broadcast``, ``barrier``, ``reduce_boolean_decision``, ``remove_checkpoint``)
and holds the device the module trains on and, for ``strategy="ddp"``, this process's
place in the process group.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

import torch
import torch.distributed as dist

from ._device import parse_device_args
from ._distributed import DistributedContext, init_distributed, is_ddp_strategy


class Strategy:
    """The accelerator, the torch device and (for data-parallel training) the process group.

    Build it with :meth:`resolve`; :class:`~scvi_rs.train.TrainRunner` does so once and hands
    the same object to the :class:`~scvi_rs.train.Trainer`.

    Parameters
    ----------
    name
        ``"auto"`` (one process, one device) or a ``"ddp*"`` strategy name.
    accelerator
        ``"cpu"`` or ``"gpu"``.
    device_indices
        The device indices named by ``devices``.
    root_device
        The torch device this process trains on.
    distributed
        This process's place in the process group, for data-parallel training.
    """

    def __init__(
        self,
        name: str,
        accelerator: str,
        device_indices: list[int],
        root_device: torch.device,
        distributed: DistributedContext | None = None,
    ) -> None:
        self.name = name
        self.accelerator = accelerator
        self.device_indices = list(device_indices)
        self.root_device = root_device
        self.distributed = distributed

    @classmethod
    def resolve(
        cls,
        accelerator: str | None = "auto",
        devices: int | list[int] | str | None = "auto",
        strategy: str | None = "auto",
    ) -> Strategy:
        """Resolve Lightning-style arguments to one :class:`Strategy`.

        Parameters
        ----------
        accelerator
            ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"``.
        devices
            ``"auto"``, an int, a list of device indices, or ``-1``. One process trains on one
            device; with ``strategy="ddp"`` the device is the process's ``LOCAL_RANK``.
        strategy
            ``"auto"``/``None`` or ``"ddp"``/``"ddp_find_unused_parameters_{true,false}"``
            (one process per device, launched by ``torchrun``).

        Returns
        -------
        Strategy
            The resolved strategy.
        """
        name = "auto" if strategy is None else strategy
        if not isinstance(name, str):
            raise TypeError(f"`strategy` must be a string, got {type(name).__name__}.")
        if name not in ("auto", "single_device") and not is_ddp_strategy(name):
            raise ValueError(
                f"Unknown strategy {name!r}; use 'auto' or 'ddp' "
                "('ddp_find_unused_parameters_true'/'_false')."
            )
        accelerator = accelerator or "auto"
        if is_ddp_strategy(name):
            resolved, indices, _ = parse_device_args(accelerator, "auto", "torch")
            context = init_distributed(resolved)
            return cls(name, resolved, indices, context.device, context)
        devices = "auto" if devices is None else devices
        resolved, indices, device = parse_device_args(accelerator, devices, "torch")
        if len(indices) > 1:
            raise NotImplementedError(
                f"devices={devices!r} asks for {len(indices)} devices in one process; for "
                "several devices launch one process per device with torchrun and pass "
                "strategy='ddp'."
            )
        return cls(name, resolved, indices, device)

    # -- the process group ---------------------------------------------------------------
    @property
    def is_distributed(self) -> bool:
        """Whether several processes train together."""
        return self.distributed is not None

    @property
    def world_size(self) -> int:
        """Number of processes training together."""
        return self.distributed.world_size if self.distributed else 1

    @property
    def global_rank(self) -> int:
        """Rank of this process (0 without a process group)."""
        return self.distributed.rank if self.distributed else 0

    @property
    def local_rank(self) -> int:
        """Rank of this process on its node."""
        return self.distributed.local_rank if self.distributed else 0

    @property
    def is_global_zero(self) -> bool:
        """Whether this process reports and writes files (rank 0)."""
        return self.global_rank == 0

    @property
    def find_unused_parameters(self) -> bool:
        """Whether DDP tolerates parameters a step does not use.

        Modules such as the VAE hold parameters a given setup never uses (the library
        encoder with observed library sizes), which plain DDP reports as an error; only
        ``"ddp_find_unused_parameters_false"`` turns the tolerance off.
        """
        return self.name != "ddp_find_unused_parameters_false"

    def wrap_module(self, module: torch.nn.Module) -> torch.nn.Module:
        """``module`` wrapped for data-parallel training (unchanged with one process).

        Parameters
        ----------
        module
            The module whose forward computes the loss.

        Returns
        -------
        torch.nn.Module
            A :class:`~torch.nn.parallel.DistributedDataParallel` wrapper, or ``module``.
        """
        if not self.is_distributed:
            return module
        device_ids = [self.root_device.index] if self.root_device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=self.find_unused_parameters
        )

    # -- collective helpers (Lightning's names) ------------------------------------------
    def barrier(self, name: str | None = None) -> None:
        """Wait until every process gets here."""
        if self.is_distributed and dist.is_initialized():
            dist.barrier()

    def broadcast(self, obj: Any, src: int = 0) -> Any:
        """Return process ``src``'s ``obj`` on every process."""
        if not (self.is_distributed and dist.is_initialized()):
            return obj
        holder = [obj]
        dist.broadcast_object_list(holder, src=src)
        return holder[0]

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool:
        """Combine a yes/no decision over processes.

        Parameters
        ----------
        decision
            This process's decision.
        all
            ``True``: yes only when every process says yes; ``False``: when any does.

        Returns
        -------
        bool
            The combined decision.
        """
        if not (self.is_distributed and dist.is_initialized()):
            return bool(decision)
        votes = torch.tensor(int(bool(decision)), device=self._collective_device())
        dist.all_reduce(votes, op=dist.ReduceOp.SUM)
        n_yes = int(votes.item())
        return n_yes == self.world_size if all else n_yes > 0

    def remove_checkpoint(self, filepath: str | os.PathLike) -> None:
        """Delete a checkpoint file or directory (on rank 0 only)."""
        if not self.is_global_zero:
            return
        if os.path.isdir(filepath):
            shutil.rmtree(filepath)
        elif os.path.exists(filepath):
            os.remove(filepath)

    def _collective_device(self) -> torch.device:
        if dist.get_backend() == "nccl":
            return torch.device("cuda", torch.cuda.current_device())
        return torch.device("cpu")

    def __repr__(self) -> str:
        return (
            f"Strategy(name={self.name!r}, accelerator={self.accelerator!r}, "
            f"root_device={self.root_device}, world_size={self.world_size})"
        )


__all__ = ["Strategy"]
