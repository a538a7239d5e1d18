"""Keyword-argument configs: ``merge_kwargs`` and the dataclass configs of training."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class KwargsConfig:
    """Base of the dataclass configs: extra keywords live in ``extra_kwargs``."""

    extra_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_kwargs(self) -> dict[str, Any]:
        """Return the config as a flat keyword dict (``extra_kwargs`` merged in).

        Returns
        -------
        dict
            The keyword arguments this config stands for.
        """
        kwargs = asdict(self)
        extra = kwargs.pop("extra_kwargs")
        kwargs.update(extra)
        return kwargs


@dataclass
class TrainingPlanConfig(KwargsConfig):
    """Keyword arguments of :class:`~scvi_rs.train.TrainingPlan`."""

    optimizer: str = "Adam"
    lr: float = 1e-3
    weight_decay: float = 1e-6
    eps: float = 0.01
    n_steps_kl_warmup: int | None = None
    n_epochs_kl_warmup: int | None = 400
    reduce_lr_on_plateau: bool = False
    max_kl_weight: float = 1.0
    min_kl_weight: float = 0.0


@dataclass
class TrainerConfig(KwargsConfig):
    """Keyword arguments of :class:`~scvi_rs.train.Trainer`."""

    check_val_every_n_epoch: int | None = None
    early_stopping: bool = False
    early_stopping_monitor: str = "elbo_validation"
    early_stopping_patience: int = 45
    early_stopping_min_delta: float = 0.0
    enable_progress_bar: bool = True


def _as_kwargs(obj: Any, what: str, name: str) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, Mapping):
        return dict(obj)
    to_kwargs = getattr(obj, "to_kwargs", None)
    if callable(to_kwargs):
        result = to_kwargs()
        if not isinstance(result, Mapping):
            raise TypeError(f"{name} {what}.to_kwargs() must return a mapping.")
        return dict(result)
    raise TypeError(
        f"{name} {what} must be None, a mapping, or an object with `to_kwargs()`; "
        f"got {type(obj).__name__}."
    )


def merge_kwargs(config: Any, overrides: Any, *, name: str) -> dict[str, Any]:
    """Merge a config and explicit keyword overrides into one dict.

    Parameters
    ----------
    config
        None, a mapping, or an object with ``to_kwargs()``.
    overrides
        Same kinds as ``config``; its keys win.
    name
        What is being merged (used in error messages), e.g. ``"plan"``.

    Returns
    -------
    dict
        ``config`` keywords updated by ``overrides`` keywords.
    """
    merged = _as_kwargs(config, "config", name)
    merged.update(_as_kwargs(overrides, "kwargs", name))
    return merged
