"""``Trainer``: a plain torch training loop with scvi-tools' arguments (no Lightning)."""

from __future__ import annotations

import logging
import math
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .._settings import settings
from ._callbacks import Callback, LearningRateMonitor, LoudEarlyStopping
from ._device import parse_device_args
from ._distributed import DistributedContext, init_distributed, is_ddp_strategy
from ._logger import SimpleLogger

if TYPE_CHECKING:
    from ._trainingplans import TrainingPlan

logger = logging.getLogger("scvi_rs")

# Lightning options users pass through `train(**trainer_kwargs)` that change nothing here.
_IGNORED_LIGHTNING_KWARGS = {
    "deterministic",
    "enable_model_summary",
    "num_nodes",
    "profiler",
    "detect_anomaly",
    "inference_mode",
    "use_distributed_sampler",
    "sync_batchnorm",
    "barebones",
    "plugins",
    "reload_dataloaders_every_n_epochs",
}


def _move_to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: _move_to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_move_to_device(v, device) for v in batch)
    return batch


def _limit(n_batches: int, limit: int | float | None) -> int:
    if limit is None:
        return n_batches
    if isinstance(limit, float) and limit <= 1.0:
        return int(n_batches * limit)
    return min(n_batches, int(limit))


class Trainer:
    """Train a :class:`~scvi_rs.train.TrainingPlan` on the data of a data splitter.

    Accepts scvi-tools' ``Trainer`` arguments and the commonly used Lightning keywords
    (``gradient_clip_val``, ``callbacks``, ``max_steps``, ``limit_train_batches``,
    ``limit_val_batches``), and runs a plain torch loop on one device.

    Parameters
    ----------
    accelerator
        ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"``.
    devices
        ``"auto"``, an int, a list of device indices, or ``-1``; one device is used.
    benchmark
        Set ``torch.backends.cudnn.benchmark``.
    check_val_every_n_epoch
        Run validation every this many epochs; ``None`` means never, unless early stopping
        or the learning-rate monitor needs it (then every epoch).
    max_epochs
        Number of epochs.
    default_root_dir
        Directory for logs (defaults to ``settings.logging_dir``).
    enable_checkpointing, checkpointing_monitor
        Keep the module state with the best ``checkpointing_monitor`` and restore it at the end.
    num_sanity_val_steps
        Accepted for compatibility; no sanity validation is run.
    enable_model_summary
        Accepted for compatibility.
    early_stopping
        Stop when ``early_stopping_monitor`` stops improving.
    early_stopping_monitor, early_stopping_min_delta, early_stopping_patience,
    early_stopping_warmup_epochs, early_stopping_mode
        Arguments of :class:`~scvi_rs.train.LoudEarlyStopping`.
    enable_progress_bar
        Show a tqdm progress bar over epochs.
    progress_bar_refresh_rate
        Must be 0 or 1.
    simple_progress_bar
        Accepted for compatibility (the bar is always per epoch).
    logger
        ``None`` for the built-in history logger, or an object with ``log_metrics``.
    log_every_n_steps
        Step-level values (``kl_weight``) are recorded every this many steps.
    learning_rate_monitor
        Record the learning rate each epoch (``"lr-Adam"``).
    log_save_dir
        Accepted for compatibility.
    **kwargs
        ``gradient_clip_val``, ``gradient_clip_algorithm``, ``callbacks``, ``max_steps``,
        ``limit_train_batches``, ``limit_val_batches``, ``strategy`` (``"ddp"`` or
        ``"ddp_find_unused_parameters_*"``: data-parallel training, one process per device,
        launched by ``torchrun``).
    """

    def __init__(
        self,
        accelerator: str | None = None,
        devices: list[int] | str | int | None = None,
        benchmark: bool = True,
        check_val_every_n_epoch: int | None = None,
        max_epochs: int = 400,
        default_root_dir: str | None = None,
        enable_checkpointing: bool = False,
        checkpointing_monitor: str = "validation_loss",
        num_sanity_val_steps: int = 0,
        enable_model_summary: bool = False,
        early_stopping: bool = False,
        early_stopping_monitor: str = "elbo_validation",
        early_stopping_min_delta: float = 0.0,
        early_stopping_patience: int = 45,
        early_stopping_warmup_epochs: int = 0,
        early_stopping_mode: str = "min",
        enable_progress_bar: bool = True,
        progress_bar_refresh_rate: int = 1,
        simple_progress_bar: bool = True,
        logger: Any = None,
        log_every_n_steps: int = 10,
        learning_rate_monitor: bool = False,
        log_save_dir: str | None = None,
        **kwargs: Any,
    ) -> None:
        self.gradient_clip_val = kwargs.pop("gradient_clip_val", None)
        self.gradient_clip_algorithm = kwargs.pop("gradient_clip_algorithm", "norm")
        self.max_steps = kwargs.pop("max_steps", -1)
        self.limit_train_batches = kwargs.pop("limit_train_batches", None)
        self.limit_val_batches = kwargs.pop("limit_val_batches", None)
        callbacks = list(kwargs.pop("callbacks", None) or [])
        self.strategy = kwargs.pop("strategy", "auto")
        precision = kwargs.pop("precision", None)
        if precision not in (None, 32, "32", "32-true"):
            raise NotImplementedError(f"precision={precision!r} is not supported; use 32.")
        ignored = sorted(set(kwargs) & _IGNORED_LIGHTNING_KWARGS)
        for key in ignored:
            kwargs.pop(key)
        if kwargs:
            raise TypeError(f"Trainer got unexpected keyword argument(s): {sorted(kwargs)}")
        if progress_bar_refresh_rate > 1:
            raise ValueError(
                "scvi-rs' progress bar only supports `progress_bar_refresh_rate` of 0 or 1."
            )
        if self.gradient_clip_algorithm not in ("norm", "value"):
            raise ValueError(
                f"gradient_clip_algorithm must be 'norm' or 'value', "
                f"got {self.gradient_clip_algorithm!r}."
            )

        self.distributed: DistributedContext | None = None
        if is_ddp_strategy(self.strategy):
            self.accelerator, self.device_indices, _ = parse_device_args(
                accelerator or "auto", "auto", "torch"
            )
            self.distributed = init_distributed(self.accelerator)
            self.device = self.distributed.device
        else:
            self.accelerator, self.device_indices, self.device = parse_device_args(
                accelerator or "auto", devices if devices is not None else "auto", "torch"
            )
            if len(self.device_indices) > 1:
                raise NotImplementedError(
                    f"devices={devices!r} asks for {len(self.device_indices)} devices in one "
                    "process; for several devices launch one process per device with "
                    "torchrun and pass strategy='ddp'."
                )
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = benchmark

        validation_needed = early_stopping or learning_rate_monitor or enable_checkpointing
        if check_val_every_n_epoch is None:
            check_val_every_n_epoch = 1 if validation_needed else sys.maxsize
        if check_val_every_n_epoch < 1:
            raise ValueError("check_val_every_n_epoch must be a positive int or None.")
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.max_epochs = int(max_epochs)
        self.default_root_dir = default_root_dir or str(settings.logging_dir)
        self.log_every_n_steps = max(int(log_every_n_steps), 1)
        self.enable_progress_bar = (
            bool(enable_progress_bar)
            and progress_bar_refresh_rate > 0
            and (self.distributed is None or self.distributed.is_main)
        )
        self.logger = SimpleLogger(save_dir=log_save_dir) if logger in (None, True) else logger
        self.log_save_dir = log_save_dir

        if early_stopping:
            callbacks.append(
                LoudEarlyStopping(
                    monitor=early_stopping_monitor,
                    min_delta=early_stopping_min_delta,
                    patience=early_stopping_patience,
                    mode=early_stopping_mode,
                    warmup_epochs=early_stopping_warmup_epochs,
                )
            )
        if learning_rate_monitor and not any(
            isinstance(c, LearningRateMonitor) for c in callbacks
        ):
            callbacks.append(LearningRateMonitor())
        self.callbacks: list[Any] = callbacks
        self.checkpointing_monitor = checkpointing_monitor if enable_checkpointing else None

        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.interrupted = False
        self.callback_metrics: dict[str, float] = {}
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[dict[str, Any]] = []
        self._step_values: dict[str, Any] = {}
        self._best_checkpoint: tuple[float, dict[str, torch.Tensor]] | None = None

    # -- helpers used by the plan and callbacks ------------------------------------------
    @property
    def early_stopping_callback(self) -> LoudEarlyStopping | None:
        """The early-stopping callback, if any."""
        return next((c for c in self.callbacks if isinstance(c, LoudEarlyStopping)), None)

    def _log_step_value(self, name: str, value: Any) -> None:
        # Lightning logs step values on every `log_every_n_steps`-th optimiser step.
        if (self.global_step + 1) % self.log_every_n_steps == 0:
            self._step_values[name] = value

    def _call_hooks(self, hook: str, plan: TrainingPlan) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if callable(method):
                method(self, plan)

    def _log(self, metrics: dict[str, float]) -> None:
        if metrics:
            self.logger.log_metrics(metrics, self.current_epoch)
            self.callback_metrics.update(metrics)

    # -- the loop ------------------------------------------------------------------------
    def fit(
        self,
        training_plan: TrainingPlan,
        datamodule: Any = None,
        ckpt_path: str | None = None,
        train_dataloaders: Iterable | None = None,
        val_dataloaders: Iterable | None = None,
    ) -> None:
        """Run the training loop.

        Parameters
        ----------
        training_plan
            The plan providing ``training_step``, ``validation_step`` and optimizers.
        datamodule
            A data splitter with ``setup()``, ``train_dataloader()`` and
            ``val_dataloader()``.
        ckpt_path
            Not supported; must be None.
        train_dataloaders, val_dataloaders
            Loaders to use instead of a datamodule.
        """
        if ckpt_path is not None:
            raise NotImplementedError("Resuming from `ckpt_path` is not supported by scvi-rs.")
        if datamodule is not None:
            if hasattr(datamodule, "setup"):
                datamodule.setup()
            train_dataloaders = datamodule.train_dataloader()
            val_dataloaders = (
                datamodule.val_dataloader() if hasattr(datamodule, "val_dataloader") else None
            )
        if train_dataloaders is None:
            raise ValueError("Trainer.fit needs a datamodule or train_dataloaders.")

        plan = training_plan
        plan.trainer = self
        plan.module.to(self.device)
        single_process_forward = plan._forward
        if self.distributed is not None:
            plan._forward = self._data_parallel(plan)
        self._configure_optimizers(plan)
        self.should_stop = False
        self._call_hooks("on_train_start", plan)

        epochs = range(self.max_epochs)
        bar = tqdm(
            epochs,
            desc="Training",
            disable=not self.enable_progress_bar,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            for epoch in bar:
                self.current_epoch = plan.current_epoch = epoch
                bar.set_description(f"Epoch {epoch + 1}/{self.max_epochs}")
                self._call_hooks("on_train_epoch_start", plan)
                for loader in (train_dataloaders, val_dataloaders):
                    set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
                    if callable(set_epoch):
                        set_epoch(epoch)
                self._train_epoch(plan, train_dataloaders)
                ran_validation = False
                if val_dataloaders is not None and (epoch + 1) % self.check_val_every_n_epoch == 0:
                    ran_validation = self._validate(plan, val_dataloaders)
                train_metrics = plan._epoch_metrics["train"].compute()
                plan._epoch_metrics["train"].reset()
                step_values = {k: float(v) for k, v in self._step_values.items()}
                self._step_values.clear()
                self._log(step_values)
                plan.on_train_epoch_end()
                self._log(train_metrics)
                if "train_loss" in train_metrics:
                    bar.set_postfix(train_loss=f"{train_metrics['train_loss']:.3g}", refresh=False)
                if ran_validation:
                    self._after_validation(plan)
                self._call_hooks("on_train_epoch_end", plan)
                if self.should_stop or (0 <= self.max_steps <= self.global_step):
                    break
        except KeyboardInterrupt:
            self.interrupted = True
            logger.warning("Received KeyboardInterrupt: training stopped early.")
        finally:
            bar.close()
            plan._forward = single_process_forward
        self._restore_best_checkpoint(plan)
        self._call_hooks("on_train_end", plan)

    def _data_parallel(self, plan: TrainingPlan) -> torch.nn.Module:
        forward = plan._forward
        module = forward if isinstance(forward, torch.nn.Module) else plan.module
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        # Modules such as the VAE hold parameters a given setup never uses (the library
        # encoder with observed library sizes), which plain DDP reports as an error.
        find_unused = self.strategy != "ddp_find_unused_parameters_false"
        return torch.nn.parallel.DistributedDataParallel(
            module, device_ids=device_ids, find_unused_parameters=find_unused
        )

    def _configure_optimizers(self, plan: TrainingPlan) -> None:
        config = plan.configure_optimizers()
        self.lr_scheduler_configs = []
        if isinstance(config, torch.optim.Optimizer):
            self.optimizers = [config]
            return
        if isinstance(config, Mapping):
            self.optimizers = [config["optimizer"]]
            scheduler = config.get("lr_scheduler")
            if scheduler is not None:
                if not isinstance(scheduler, Mapping):
                    scheduler = {"scheduler": scheduler}
                self.lr_scheduler_configs.append(dict(scheduler))
            return
        if isinstance(config, (list, tuple)) and config:
            self.optimizers = list(config)
            return
        raise TypeError(
            "configure_optimizers must return an optimizer or a dict with 'optimizer'."
        )

    def _train_epoch(self, plan: TrainingPlan, loader: Iterable) -> None:
        module = plan.module
        module.train()
        plan._mode = "train"
        optimizer = self.optimizers[0]
        params = [p for group in optimizer.param_groups for p in group["params"]]
        n_batches = (
            _limit(len(loader), self.limit_train_batches) if hasattr(loader, "__len__") else None
        )
        for batch_idx, batch in enumerate(loader):
            if n_batches is not None and batch_idx >= n_batches:
                break
            batch = _move_to_device(batch, self.device)
            loss = plan.training_step(batch, batch_idx)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.gradient_clip_val:
                if self.gradient_clip_algorithm == "value":
                    torch.nn.utils.clip_grad_value_(params, self.gradient_clip_val)
                else:
                    torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
            optimizer.step()
            self.global_step += 1
            plan.global_step = self.global_step
            if 0 <= self.max_steps <= self.global_step:
                break

    def _validate(self, plan: TrainingPlan, loader: Iterable) -> bool:
        module = plan.module
        module.eval()
        plan._mode = "validation"
        n_batches = (
            _limit(len(loader), self.limit_val_batches) if hasattr(loader, "__len__") else None
        )
        ran = False
        try:
            with torch.no_grad():
                for batch_idx, batch in enumerate(loader):
                    if n_batches is not None and batch_idx >= n_batches:
                        break
                    plan.validation_step(_move_to_device(batch, self.device), batch_idx)
                    ran = True
        finally:
            plan._mode = "train"
            module.train()
        metrics = plan._epoch_metrics["validation"].compute()
        plan._epoch_metrics["validation"].reset()
        plan.on_validation_epoch_end()
        self._log(metrics)
        return ran

    def _after_validation(self, plan: TrainingPlan) -> None:
        for config in self.lr_scheduler_configs:
            scheduler = config["scheduler"]
            monitor = config.get("monitor")
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if monitor not in self.callback_metrics:
                    raise RuntimeError(
                        f"ReduceLROnPlateau conditioned on metric {monitor!r}, which is not "
                        f"available. Available metrics are: {sorted(self.callback_metrics)}."
                    )
                scheduler.step(self.callback_metrics[monitor])
            else:
                scheduler.step()
        if self.checkpointing_monitor is not None:
            value = self.callback_metrics.get(self.checkpointing_monitor)
            if value is not None and math.isfinite(value):
                if self._best_checkpoint is None or value < self._best_checkpoint[0]:
                    state = {k: v.detach().clone() for k, v in plan.module.state_dict().items()}
                    self._best_checkpoint = (value, state)
        self._call_hooks("on_validation_end", plan)

    def _restore_best_checkpoint(self, plan: TrainingPlan) -> None:
        if self._best_checkpoint is not None:
            plan.module.load_state_dict(self._best_checkpoint[1])
            logger.info(
                "Loaded the best model state (%s = %.4f).",
                self.checkpointing_monitor,
                self._best_checkpoint[0],
            )


__all__ = ["Callback", "Trainer"]
