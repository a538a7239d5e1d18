"""``TrainingPlan``: optimizers, KL warm-up, the training/validation steps and their metrics."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Literal

import torch

from .._settings import settings
from ._metrics import EpochAccumulator

if TYPE_CHECKING:
    from ..module.base import BaseModuleClass, LossOutput
    from ._trainer import Trainer

_ELBO_COMPONENTS = ("elbo", "reconstruction_loss", "kl_local", "kl_global")


def _compute_kl_weight(
    epoch: int,
    step: int,
    n_epochs_kl_warmup: int | None,
    n_steps_kl_warmup: int | None,
    max_kl_weight: float = 1.0,
    min_kl_weight: float = 0.0,
) -> float:
    """KL weight of a linear warm-up from ``min_kl_weight`` to ``max_kl_weight``.

    Parameters
    ----------
    epoch
        Current epoch (0-based).
    step
        Current global optimisation step.
    n_epochs_kl_warmup
        Warm-up length in epochs; takes precedence over ``n_steps_kl_warmup``.
    n_steps_kl_warmup
        Warm-up length in steps, used when ``n_epochs_kl_warmup`` is falsy.
    max_kl_weight
        Weight reached at the end of the warm-up.
    min_kl_weight
        Weight at the start of the warm-up.

    Returns
    -------
    float
        The KL weight.
    """
    if min_kl_weight > max_kl_weight:
        raise ValueError(
            f"min_kl_weight={min_kl_weight} is larger than max_kl_weight={max_kl_weight}."
        )
    slope = max_kl_weight - min_kl_weight
    if n_epochs_kl_warmup:
        if epoch < n_epochs_kl_warmup:
            return slope * (epoch / n_epochs_kl_warmup) + min_kl_weight
    elif n_steps_kl_warmup and step < n_steps_kl_warmup:
        return slope * (step / n_steps_kl_warmup) + min_kl_weight
    return max_kl_weight


def _scalar_sum(value: Any) -> torch.Tensor | float:
    """Sum a loss record (tensor, number or dict of tensors) into one 0-d value."""
    if isinstance(value, dict):
        return sum(_scalar_sum(v) for v in value.values())
    if isinstance(value, torch.Tensor):
        return value.sum()
    return float(value) if value is not None else 0.0


class TrainingPlan:
    """Lightweight training plan for unsupervised VAE-style modules (no Lightning).

    Parameters
    ----------
    module
        A :class:`~scvi_rs.module.base.BaseModuleClass` instance.
    optimizer
        ``"Adam"``, ``"AdamW"`` or ``"Custom"`` (then ``optimizer_creator`` is required).
    optimizer_creator
        Callable taking the trainable parameters and returning an optimizer.
    lr
        Learning rate.
    update_only_decoder
        Passed to the module's inference input as ``full_forward_pass=not update_only_decoder``.
    weight_decay
        Weight decay of Adam/AdamW.
    eps
        Epsilon of Adam/AdamW.
    n_steps_kl_warmup
        KL warm-up length in steps (used when ``n_epochs_kl_warmup`` is None).
    n_epochs_kl_warmup
        KL warm-up length in epochs.
    reduce_lr_on_plateau
        Whether to reduce the learning rate when ``lr_scheduler_metric`` plateaus.
    lr_factor, lr_patience, lr_threshold, lr_min
        Arguments of :class:`torch.optim.lr_scheduler.ReduceLROnPlateau`.
    lr_scheduler_metric
        Validation metric the scheduler monitors.
    max_kl_weight, min_kl_weight
        End points of the KL warm-up.
    compile
        Wrap the module's forward with :func:`torch.compile`.
    compile_kwargs
        Keyword arguments of :func:`torch.compile`.
    on_step, on_epoch
        Whether ``train_loss`` is logged per step and/or per epoch.
    **loss_kwargs
        Extra keyword arguments of the module's ``loss``.
    """

    def __init__(
        self,
        module: BaseModuleClass,
        *,
        optimizer: Literal["Adam", "AdamW", "Custom"] = "Adam",
        optimizer_creator: Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer] | None = None,
        lr: float = 1e-3,
        update_only_decoder: bool = False,
        weight_decay: float = 1e-6,
        eps: float = 0.01,
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = 400,
        reduce_lr_on_plateau: bool = False,
        lr_factor: float = 0.6,
        lr_patience: int = 30,
        lr_threshold: float = 0.0,
        lr_scheduler_metric: Literal[
            "elbo_validation", "reconstruction_loss_validation", "kl_local_validation"
        ] = "elbo_validation",
        lr_min: float = 0,
        max_kl_weight: float = 1.0,
        min_kl_weight: float = 0.0,
        compile: bool = False,
        compile_kwargs: dict | None = None,
        on_step: bool | None = False,
        on_epoch: bool | None = True,
        **loss_kwargs: Any,
    ) -> None:
        if optimizer == "Custom" and optimizer_creator is None:
            raise ValueError("If optimizer is 'Custom', `optimizer_creator` must be provided.")
        if min_kl_weight > max_kl_weight:
            raise ValueError(
                f"min_kl_weight={min_kl_weight} is larger than max_kl_weight={max_kl_weight}."
            )
        self.module = module
        self.optimizer_name = optimizer
        self.optimizer_creator = optimizer_creator
        self.lr = lr
        self.update_only_decoder = update_only_decoder
        self.weight_decay = weight_decay
        self.eps = eps
        self.n_steps_kl_warmup = n_steps_kl_warmup
        self.n_epochs_kl_warmup = n_epochs_kl_warmup
        self.reduce_lr_on_plateau = reduce_lr_on_plateau
        self.lr_factor = lr_factor
        self.lr_patience = lr_patience
        self.lr_threshold = lr_threshold
        self.lr_scheduler_metric = lr_scheduler_metric
        self.lr_min = lr_min
        self.max_kl_weight = max_kl_weight
        self.min_kl_weight = min_kl_weight
        self.on_step = on_step
        self.on_epoch = on_epoch
        self.loss_kwargs = dict(loss_kwargs)
        # What `forward` calls: the module, its compiled form, or a data-parallel wrapper the
        # trainer installs for the length of `fit`.
        self.forward_module: Callable[..., Any] = module
        if compile:
            self.forward_module = torch.compile(module, **(compile_kwargs or {}))
        self.automatic_optimization = True

        self.current_epoch = 0
        self.global_step = 0
        self._loss_args = set(inspect.signature(module.loss).parameters)
        if "kl_weight" in self._loss_args:
            self.loss_kwargs["kl_weight"] = self.kl_weight
        self._inference_accepts_full_pass = "full_forward_pass" in set(
            inspect.signature(module._get_inference_input).parameters
        )
        self._n_obs_training: int | None = None
        self._n_obs_validation: int | None = None
        self.trainer: Trainer | None = None
        self._epoch_metrics: dict[str, EpochAccumulator] = {}
        # names logged both per step and per epoch, per stage: their epoch means are
        # logged as `<name>_epoch` and are also what `callback_metrics[<name>]` holds
        self._forked_names: dict[str, set[str]] = {}
        self.initialize_train_metrics()
        self.initialize_val_metrics()

    # -- properties the trainer and callers read -------------------------------------
    @property
    def n_obs_training(self) -> int | None:
        """Number of training cells; scales ``kl_global`` in the ELBO."""
        return self._n_obs_training

    @n_obs_training.setter
    def n_obs_training(self, n_obs: int | None) -> None:
        if "n_obs" in self._loss_args:
            self.loss_kwargs["n_obs"] = n_obs
        self._n_obs_training = n_obs

    @property
    def n_obs_validation(self) -> int | None:
        """Number of validation cells."""
        return self._n_obs_validation

    @n_obs_validation.setter
    def n_obs_validation(self, n_obs: int | None) -> None:
        self._n_obs_validation = n_obs

    @property
    def kl_weight(self) -> float:
        """KL weight for the current epoch and step."""
        return _compute_kl_weight(
            self.current_epoch,
            self.global_step,
            self.n_epochs_kl_warmup,
            self.n_steps_kl_warmup,
            self.max_kl_weight,
            self.min_kl_weight,
        )

    @property
    def device(self) -> torch.device:
        """Device of the module's parameters."""
        return self.module.device

    @property
    def use_sync_dist(self) -> bool:
        """Whether metrics are synchronised across processes (single-process here)."""
        return False

    # -- logging -------------------------------------------------------------------------
    def _stage(self) -> str:
        trainer = self.trainer
        return "validation" if trainer is not None and trainer.validating else "train"

    def log(
        self,
        name: str,
        value: torch.Tensor | float,
        on_step: bool | None = None,
        on_epoch: bool | None = None,
        batch_size: int | None = None,
        prog_bar: bool = False,
        **kwargs: Any,
    ) -> None:
        """Log a value: averaged over the epoch (weighted by ``batch_size``) and/or per step.

        As in Lightning, a value logged both per step and per epoch is recorded as
        ``<name>_step`` and ``<name>_epoch`` (``callback_metrics[name]`` holds the epoch
        mean); logged one way only, it is recorded as ``name``.

        Parameters
        ----------
        name
            Metric name in the history.
        value
            0-d tensor or number; tensors stay on the device until the epoch ends.
        on_step
            Record the value at single steps: training steps every ``log_every_n_steps``
            (indexed by epoch), validation steps each batch (indexed by step). By default
            True in training steps and False elsewhere, as in Lightning.
        on_epoch
            Record the epoch's weighted mean. By default the opposite of ``on_step``'s
            default.
        batch_size
            Weight of the value in the epoch mean (default 1).
        prog_bar
            Accepted for Lightning compatibility (the bar shows ``train_loss``).
        **kwargs
            Accepted for Lightning compatibility (``sync_dist``, ...).
        """
        step_default = self.trainer is not None and self.trainer.in_training_step
        on_step = step_default if on_step is None else on_step
        on_epoch = (not step_default) if on_epoch is None else on_epoch
        self._record(name, value, self._stage(), on_step, on_epoch, batch_size or 1)

    def _record(
        self,
        name: str,
        value: torch.Tensor | float,
        stage: str,
        on_step: bool,
        on_epoch: bool,
        weight: torch.Tensor | float,
    ) -> None:
        forked = bool(on_step and on_epoch)
        if on_epoch:
            if forked:
                self._forked_names.setdefault(stage, set()).add(name)
            accumulator = self._epoch_metrics.setdefault(stage, EpochAccumulator())
            accumulator.update(f"{name}_epoch" if forked else name, value, weight)
        if on_step and self.trainer is not None:
            self.trainer.log_step_value(f"{name}_step" if forked else name, value)

    def log_dict(self, values: dict[str, Any], **kwargs: Any) -> None:
        """Log every item of ``values`` with :meth:`log`."""
        for key, value in values.items():
            self.log(key, value, **kwargs)

    def flush_epoch_metrics(self, stage: str) -> tuple[dict[str, float], dict[str, float]]:
        """Read the epoch means of ``stage`` (one host transfer) and start the next epoch afresh.

        Parameters
        ----------
        stage
            ``"train"`` or ``"validation"``.

        Returns
        -------
        tuple of dict
            The values to log (history names) and the values for ``callback_metrics`` (the
            same, plus each forked name's epoch mean under its plain name).
        """
        accumulator = self._epoch_metrics.get(stage)
        if accumulator is None:
            return {}, {}
        logged = accumulator.compute()
        accumulator.reset()
        callback = dict(logged)
        for name in self._forked_names.get(stage, ()):
            if f"{name}_epoch" in logged:
                callback[name] = logged[f"{name}_epoch"]
        return logged, callback

    # -- steps -------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module's forward pass."""
        if self._inference_accepts_full_pass:
            kwargs.setdefault(
                "get_inference_input_kwargs", {"full_forward_pass": not self.update_only_decoder}
            )
        return self.forward_module(*args, **kwargs)

    __call__ = forward

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        """Compute the loss of one minibatch and log its metrics.

        Parameters
        ----------
        batch
            Tensors keyed by registry key, already on the module's device.
        batch_idx
            Index of the minibatch within the epoch.

        Returns
        -------
        torch.Tensor
            The loss to back-propagate.
        """
        if "kl_weight" in self.loss_kwargs:
            kl_weight = self.kl_weight
            self.loss_kwargs["kl_weight"] = kl_weight
            self.log("kl_weight", kl_weight, on_step=True, on_epoch=False)
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        n_obs = self._minibatch_size(loss_output, batch)
        self.log(
            "train_loss",
            loss_output.loss,
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            batch_size=n_obs,
            prog_bar=True,
        )
        if self.on_step and self.trainer is not None:
            # every step, indexed by the step (the reference logs this one by hand)
            self.trainer.log_step_metrics({"train_loss_step": loss_output.loss}, self.global_step)
        self.compute_and_log_metrics(loss_output, None, "train")
        return loss_output.loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Compute the loss of one validation minibatch and log its metrics.

        Parameters
        ----------
        batch
            Tensors keyed by registry key, already on the module's device.
        batch_idx
            Index of the minibatch within the validation pass.
        """
        _, _, loss_output = self.forward(batch, loss_kwargs=self.loss_kwargs)
        n_obs = self._minibatch_size(loss_output, batch)
        self.log(
            "validation_loss",
            loss_output.loss,
            on_step=self.on_step,
            on_epoch=self.on_epoch,
            batch_size=n_obs,
        )
        self.compute_and_log_metrics(loss_output, None, "validation")

    @staticmethod
    def _minibatch_size(loss_output: LossOutput, batch: dict[str, torch.Tensor]) -> int:
        n_obs = getattr(loss_output, "n_obs_minibatch", None)
        if n_obs is None:
            first = next(v for v in batch.values() if isinstance(v, torch.Tensor))
            n_obs = first.shape[0]
        return int(n_obs)

    def compute_and_log_metrics(
        self, loss_output: LossOutput, metrics: dict | None, mode: str
    ) -> None:
        """Accumulate the ELBO components and extra metrics of one minibatch.

        Parameters
        ----------
        loss_output
            The module's :class:`~scvi_rs.module.base.LossOutput`.
        metrics
            Unused; kept for signature compatibility with the reference.
        mode
            ``"train"`` or ``"validation"``; metric names get this suffix.
        """
        n_obs = self._minibatch_size(loss_output, {})
        if self.on_epoch:
            # The ELBO terms are epoch means (the reference's torchmetrics objects): never
            # per step; `_epoch` names when `on_step` forks the logged values.
            acc = self._epoch_metrics.setdefault(mode, EpochAccumulator())
            suffix = "_epoch" if self.on_step else ""
            rec = _sum_or_record(loss_output, "reconstruction_loss_sum", "reconstruction_loss")
            kl_local = _sum_or_record(loss_output, "kl_local_sum", "kl_local")
            kl_global = _sum_or_record(loss_output, "kl_global_sum", "kl_global")
            n_total = self.n_obs_training if mode == "train" else self.n_obs_validation
            n_total = n_total if n_total is not None and n_total >= 1 else 1
            elbo = rec + kl_local + kl_global / n_total
            for name, numerator, denominator in (
                ("elbo", elbo, n_obs),
                ("reconstruction_loss", rec, n_obs),
                ("kl_local", kl_local, n_obs),
                ("kl_global", kl_global, 1),
            ):
                acc.add(f"{name}_{mode}{suffix}", numerator, denominator)
                if suffix:
                    self._forked_names.setdefault(mode, set()).add(f"{name}_{mode}")
        for key, value in (getattr(loss_output, "extra_metrics", None) or {}).items():
            if isinstance(value, torch.Tensor) and value.dim() != 0:
                warnings.warn(
                    f"Extra tracked metrics {key} should be 0-d tensors. It will not be logged",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
                continue
            self._record(
                f"{key}_{mode}", value, mode, bool(self.on_step), bool(self.on_epoch), n_obs
            )

    def initialize_train_metrics(self) -> None:
        """Start the training ELBO metrics afresh (the reference's torchmetrics hook)."""
        self._epoch_metrics["train"] = EpochAccumulator()

    def initialize_val_metrics(self) -> None:
        """Start the validation ELBO metrics afresh (the reference's torchmetrics hook)."""
        self._epoch_metrics["validation"] = EpochAccumulator()

    # -- hooks the trainer calls (Lightning's names; no-ops to override) ------------------
    def setup(self, stage: str) -> None:
        """Run when ``fit`` begins."""

    def teardown(self, stage: str) -> None:
        """Run when ``fit`` ends."""

    def on_fit_start(self) -> None:
        """Run when fitting starts."""

    def on_fit_end(self) -> None:
        """Run when fitting ends."""

    def on_train_start(self) -> None:
        """Run once before the first epoch."""

    def on_train_end(self) -> None:
        """Run once after the last epoch."""

    def on_train_epoch_start(self) -> None:
        """Run before each training epoch."""

    def on_train_epoch_end(self) -> None:
        """Run after each training epoch, before its metrics are logged."""

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> int | None:
        """Run before each training step; returning ``-1`` ends the epoch."""
        return None

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """Run after each optimizer step."""

    def on_validation_start(self) -> None:
        """Run before each validation pass."""

    def on_validation_end(self) -> None:
        """Run after each validation pass."""

    def on_validation_epoch_start(self) -> None:
        """Run before the first validation batch."""

    def on_validation_epoch_end(self) -> None:
        """Run after each validation pass, before its metrics are logged."""

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Run when the trainer writes a checkpoint; may add entries to it."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Run when the trainer resumes from ``checkpoint``."""

    # -- state and manual optimisation -----------------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        """The module's weights under ``module.`` keys (a Lightning checkpoint's ``state_dict``).

        Returns
        -------
        dict
            Parameter and buffer name to tensor.
        """
        return {f"module.{k}": v for k, v in self.module.state_dict().items()}

    def load_state_dict(self, state_dict: dict[str, torch.Tensor], strict: bool = True) -> Any:
        """Load weights saved by :meth:`state_dict` (``module.`` keys) into the module.

        Parameters
        ----------
        state_dict
            ``module.``-prefixed parameter and buffer names to tensors.
        strict
            Require exactly the module's keys.

        Returns
        -------
        NamedTuple
            ``missing_keys`` and ``unexpected_keys``, as :meth:`torch.nn.Module.load_state_dict`.
        """
        prefix = "module."
        stray = [k for k in state_dict if not k.startswith(prefix)]
        if stray and strict:
            raise KeyError(f"state_dict keys without the 'module.' prefix: {stray[:5]}")
        weights = {k[len(prefix) :]: v for k, v in state_dict.items() if k.startswith(prefix)}
        return self.module.load_state_dict(weights, strict=strict)

    def optimizers(self) -> torch.optim.Optimizer | list[torch.optim.Optimizer]:
        """The trainer's optimizer(s), for plans with ``automatic_optimization = False``."""
        if self.trainer is None:
            raise RuntimeError("The plan is not attached to a trainer; call Trainer.fit first.")
        optimizers = self.trainer.optimizers
        return optimizers[0] if len(optimizers) == 1 else optimizers

    def lr_schedulers(self) -> Any:
        """The trainer's learning-rate scheduler(s), or None."""
        if self.trainer is None or not self.trainer.lr_scheduler_configs:
            return None
        schedulers = [config.scheduler for config in self.trainer.lr_scheduler_configs]
        return schedulers[0] if len(schedulers) == 1 else schedulers

    def manual_backward(self, loss: torch.Tensor, *args: Any, **kwargs: Any) -> None:
        """Back-propagate ``loss`` (for plans that step their optimizers themselves)."""
        loss.backward(*args, **kwargs)

    # -- optimisation ------------------------------------------------------------------
    def get_optimizer_creator(self) -> Callable[[Iterable[torch.Tensor]], torch.optim.Optimizer]:
        """Return a callable building the optimizer from parameters.

        Returns
        -------
        callable
            ``params -> optimizer``.
        """
        fused = _fused_supported(self.module)
        if self.optimizer_name == "Adam":
            return lambda params: torch.optim.Adam(
                params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, **fused
            )
        if self.optimizer_name == "AdamW":
            return lambda params: torch.optim.AdamW(
                params, lr=self.lr, eps=self.eps, weight_decay=self.weight_decay, **fused
            )
        if self.optimizer_name == "Custom":
            return self.optimizer_creator
        raise ValueError("Optimizer not understood.")

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        """Build the optimizer (and the plateau scheduler when requested).

        Returns
        -------
        optimizer or dict
            The optimizer, or ``{"optimizer", "lr_scheduler": {"scheduler", "monitor"}}``.
        """
        params = [p for p in self.module.parameters() if p.requires_grad]
        optimizer = self.get_optimizer_creator()(params)
        if not self.reduce_lr_on_plateau:
            return optimizer
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer,
            patience=self.lr_patience,
            factor=self.lr_factor,
            threshold=self.lr_threshold,
            min_lr=self.lr_min,
            threshold_mode="abs",
        )
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "monitor": self.lr_scheduler_metric},
        }


def _sum_or_record(loss_output: Any, sum_attr: str, record_attr: str) -> torch.Tensor | float:
    value = getattr(loss_output, sum_attr, None)
    if value is None:
        value = getattr(loss_output, record_attr, None)
    return _scalar_sum(value)


def _fused_supported(module: torch.nn.Module) -> dict[str, bool]:
    """Use torch's fused Adam kernel when every parameter is a float tensor on one device.

    The fused kernel updates all parameters in one pass (CUDA, and CPU since torch 2.4);
    it is the same algorithm as the default loop, 2-3x cheaper per step on the CPU.
    """
    params = list(module.parameters())
    if not params or not all(p.is_floating_point() for p in params):
        return {}
    device_types = {p.device.type for p in params}
    if len(device_types) != 1:
        return {}
    device_type = device_types.pop()
    if device_type == "cuda" or (device_type == "cpu" and _cpu_fused_adam_available()):
        return {"fused": True}
    return {}


@functools.cache
def _cpu_fused_adam_available() -> bool:
    try:
        torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], fused=True)
    except (RuntimeError, TypeError, ValueError):
        return False
    return True


# scvi-tools defines its Pyro and semi-supervised plans in this module, and user code
# imports them from here; they are resolved on first use, as their modules import this one.
_PLANS_DEFINED_ELSEWHERE = {
    "LowLevelPyroTrainingPlan": "._pyro_trainingplan",
    "PyroTrainingPlan": "._pyro_trainingplan",
    "SemiSupervisedTrainingPlan": "._semisupervised_trainingplan",
}


def __getattr__(name: str) -> Any:
    module = _PLANS_DEFINED_ELSEWHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __package__), name)
