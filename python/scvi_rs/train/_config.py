"""Keyword-argument configs: ``merge_kwargs`` and the dataclass configs of training."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Literal, Protocol, runtime_checkable

import torch


@runtime_checkable
class KwargsConfig(Protocol):
    """Anything with ``to_kwargs()`` returning a keyword dict (the configs below, or yours)."""

    def to_kwargs(self) -> dict[str, Any]:
        """Return keyword arguments of the constructor the config is for."""


def _fields_as_kwargs(config: Any, merged: tuple[str, ...]) -> dict[str, Any]:
    """The config's fields as keywords, with the dict fields named in ``merged`` flattened in."""
    kwargs = {f.name: getattr(config, f.name) for f in fields(config) if f.name not in merged}
    for name in merged:
        kwargs.update(getattr(config, name))
    return kwargs


@dataclass
class TrainingPlanConfig:
    """Keyword arguments of :class:`~scvi_rs.train.TrainingPlan`.

    ``loss_kwargs`` (keywords of the module's ``loss``) and ``extra_kwargs`` are flattened
    into the keywords :meth:`to_kwargs` returns.
    """

    optimizer: Literal["Adam", "AdamW", "Custom"] = "Adam"
    optimizer_creator: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer] | None = None
    lr: float = 1e-3
    update_only_decoder: bool = False
    weight_decay: float = 1e-6
    eps: float = 0.01
    n_steps_kl_warmup: int | None = None
    n_epochs_kl_warmup: int | None = 400
    reduce_lr_on_plateau: bool = False
    lr_factor: float = 0.6
    lr_patience: int = 30
    lr_threshold: float = 0.0
    lr_scheduler_metric: Literal[
        "elbo_validation", "reconstruction_loss_validation", "kl_local_validation"
    ] = "elbo_validation"
    lr_min: float = 0.0
    max_kl_weight: float = 1.0
    min_kl_weight: float = 0.0
    compile: bool = False
    compile_kwargs: dict | None = None
    on_step: bool | None = False
    on_epoch: bool | None = True
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    extra_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_kwargs(self) -> dict[str, Any]:
        """Return the config as a flat keyword dict.

        Returns
        -------
        dict
            The keyword arguments this config stands for.
        """
        return _fields_as_kwargs(self, ("loss_kwargs", "extra_kwargs"))


@dataclass
class TrainerConfig:
    """Keyword arguments of :class:`~scvi_rs.train.Trainer` (``extra_kwargs`` flattened in)."""

    accelerator: str | None = None
    devices: list[int] | str | int | None = None
    benchmark: bool = True
    check_val_every_n_epoch: int | None = None
    max_epochs: int = 400
    default_root_dir: str | None = None
    enable_checkpointing: bool = False
    checkpointing_monitor: str = "validation_loss"
    num_sanity_val_steps: int = 0
    enable_model_summary: bool = False
    early_stopping: bool = False
    early_stopping_monitor: Literal[
        "elbo_validation", "reconstruction_loss_validation", "kl_local_validation"
    ] = "elbo_validation"
    early_stopping_min_delta: float = 0.0
    early_stopping_patience: int = 45
    early_stopping_warmup_epochs: int = 0
    early_stopping_mode: Literal["min", "max"] = "min"
    enable_progress_bar: bool = True
    progress_bar_refresh_rate: int = 1
    simple_progress_bar: bool = True
    logger: Any = None
    log_every_n_steps: int = 10
    learning_rate_monitor: bool = False
    log_save_dir: str | None = None
    extra_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_kwargs(self) -> dict[str, Any]:
        """Return the config as a flat keyword dict (named fields win over ``extra_kwargs``).

        Returns
        -------
        dict
            The keyword arguments this config stands for.
        """
        kwargs = dict(self.extra_kwargs)
        kwargs.update(_fields_as_kwargs(self, ("extra_kwargs",)))
        return kwargs


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


# configs defined beside their plans, also found here as in scvi-tools' ``scvi.train._config``
# (looked up on first use: the Pyro module imports pyro, an optional extra)
_CONFIGS_ELSEWHERE = {
    "LowLevelPyroTrainingPlanConfig": "._pyro_trainingplan",
    "PyroTrainingPlanConfig": "._pyro_trainingplan",
    "SemiSupervisedTrainingPlanConfig": "._semisupervised_trainingplan",
}


def __getattr__(name: str) -> Any:
    if name in _CONFIGS_ELSEWHERE:
        import importlib

        module = importlib.import_module(_CONFIGS_ELSEWHERE[name], __package__)
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
