"""Method decorators of modules."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import wraps
from typing import Any

import torch
from torch import nn


def _module_device(module: nn.Module) -> torch.device | None:
    devices = {p.device for p in module.parameters()}
    if len(devices) > 1:
        raise RuntimeError("Module tensors on multiple devices.")
    return next(iter(devices)) if devices else None


def _move_data_to_device(data: Any, device: torch.device) -> Any:
    """Move every tensor inside (nested) mappings, namedtuples, lists and tuples."""
    if isinstance(data, torch.Tensor):
        return data.to(device, non_blocking=True)
    if isinstance(data, Mapping):
        moved = {key: _move_data_to_device(value, device) for key, value in data.items()}
        try:
            return type(data)(moved)
        except TypeError:
            return moved
    if isinstance(data, tuple) and hasattr(data, "_fields"):  # namedtuple
        return type(data)(*(_move_data_to_device(value, device) for value in data))
    if isinstance(data, (list, tuple)):
        return type(data)(_move_data_to_device(value, device) for value in data)
    return data


def auto_move_data(fn: Callable) -> Callable:
    """Move the tensors of a method's arguments to the module's device.

    Only in evaluation mode (``module.training`` is False): during training the loop is
    responsible for placing the minibatch, and this decorator costs nothing. Tensors
    nested in mappings, namedtuples, lists and tuples are moved with
    ``non_blocking=True``; other objects pass unchanged. Parameters on several devices
    raise ``RuntimeError("Module tensors on multiple devices.")``.
    """

    @wraps(fn)
    def auto_transfer_args(self, *args, **kwargs):
        if not isinstance(self, nn.Module) or self.training:
            return fn(self, *args, **kwargs)
        device = _module_device(self)
        if device is None:
            return fn(self, *args, **kwargs)
        args = _move_data_to_device(args, device)
        kwargs = _move_data_to_device(kwargs, device)
        return fn(self, *args, **kwargs)

    return auto_transfer_args


def _unsupported_if_adata_minified(fn: Callable) -> Callable:
    """Raise ``ValueError`` when the module works on minified data."""

    @wraps(fn)
    def wrapper(self, *args, **kwargs):
        # data minified with their counts still serve every query
        if getattr(self, "minified_data_type", None) == "latent_posterior_parameters":
            raise ValueError(
                f"The {fn.__qualname__} function currently does not support minified data."
            )
        return fn(self, *args, **kwargs)

    return wrapper
