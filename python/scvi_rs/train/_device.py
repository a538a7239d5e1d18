"""Resolve ``accelerator``/``devices`` arguments (Lightning's vocabulary) to one torch device."""

from __future__ import annotations

from typing import Literal

import torch

_GPU_NAMES = ("gpu", "cuda")


def _cuda_indices(devices: int | str | list[int] | None) -> list[int]:
    n_available = torch.cuda.device_count()
    if devices in (None, "auto"):
        return [0]
    if isinstance(devices, str):
        text = devices.strip()
        if text == "-1":
            return list(range(n_available))
        if "," in text:
            return [int(d) for d in text.split(",") if d.strip()]
        if text.lstrip("-").isdigit():
            return _cuda_indices(int(text))
        raise ValueError(f"Invalid `devices` argument: {devices!r}.")
    if isinstance(devices, int):
        if devices == -1:
            return list(range(n_available))
        if devices < 1:
            raise ValueError(
                f"`devices` must be a positive int, -1, a list or 'auto'; got {devices}."
            )
        return list(range(devices))
    if isinstance(devices, (list, tuple)):
        return [int(d) for d in devices]
    raise ValueError(f"Invalid `devices` argument: {devices!r}.")


def parse_device_args(
    accelerator: str = "auto",
    devices: int | list[int] | str = "auto",
    return_device: Literal["torch"] | None = None,
    validate_single_device: bool = False,
) -> tuple:
    """Parse Lightning-style device arguments.

    Parameters
    ----------
    accelerator
        ``"auto"`` (CUDA when available, else CPU), ``"cpu"``, ``"gpu"`` or ``"cuda"``.
    devices
        ``"auto"``, an int count, ``-1`` (all), a list of indices, or a string of them.
    return_device
        ``"torch"`` to also return the resolved :class:`torch.device`.
    validate_single_device
        Raise when more than one device is named.

    Returns
    -------
    tuple
        ``(accelerator, device_indices)``, plus the torch device when ``return_device="torch"``.
    """
    if not isinstance(accelerator, str):
        raise TypeError(f"`accelerator` must be a string, got {type(accelerator).__name__}.")
    accelerator = accelerator.lower()
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    if accelerator == "mps":
        raise ValueError("The MPS accelerator is not supported by scvi-rs.")
    if accelerator not in ("cpu", *_GPU_NAMES):
        raise ValueError(
            f"Unknown accelerator {accelerator!r}; use 'auto', 'cpu', 'gpu' or 'cuda'."
        )
    if accelerator in _GPU_NAMES:
        if not torch.cuda.is_available():
            raise RuntimeError(
                f"accelerator={accelerator!r} was requested but CUDA is not available on this "
                "machine; use accelerator='cpu' or 'auto'."
            )
        indices = _cuda_indices(devices)
        n_available = torch.cuda.device_count()
        bad = [i for i in indices if i < 0 or i >= n_available]
        if bad or not indices:
            raise ValueError(
                f"Requested CUDA devices {indices} but only {n_available} are available."
            )
        accelerator = "gpu"
    else:
        indices = [0] if devices in ("auto", None, 1, "1") else _cpu_count(devices)
    if validate_single_device and len(indices) > 1:
        raise ValueError("Only a single device can be specified for `device`.")
    if return_device != "torch":
        return accelerator, indices
    device = torch.device(f"cuda:{indices[0]}") if accelerator == "gpu" else torch.device("cpu")
    return accelerator, indices, device


def _cpu_count(devices: int | str | list[int]) -> list[int]:
    if isinstance(devices, int) and devices >= 1:
        return list(range(devices))
    if isinstance(devices, str) and devices.isdigit() and int(devices) >= 1:
        return list(range(int(devices)))
    if isinstance(devices, (list, tuple)) and devices:
        return list(range(len(devices)))
    raise ValueError(f"Invalid `devices` argument for the CPU: {devices!r}.")
