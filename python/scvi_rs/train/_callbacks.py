"""Training callbacks: the hook protocol of :class:`Trainer`, early stopping and checkpoints."""

from __future__ import annotations

import logging
import math
import os
import re
import warnings
from datetime import datetime
from typing import TYPE_CHECKING, Any

import torch

from .._settings import settings

if TYPE_CHECKING:
    from ._trainer import Trainer
    from ._trainingplans import TrainingPlan

logger = logging.getLogger("scvi_rs")


def _state_key(callback: object, **identity: Any) -> str:
    """Lightning's checkpoint key of a callback: its class name and what tells instances apart."""
    return f"{type(callback).__qualname__}{identity!r}"


class Callback:
    """Base class of training callbacks: Lightning's hooks, each a no-op to override.

    Every hook receives the :class:`~scvi_rs.train.Trainer` and the training plan, in
    Lightning's order of arguments. A callback stops training by setting
    ``trainer.should_stop = True``. Callbacks written for Lightning run unchanged.
    """

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint."""
        return type(self).__qualname__

    def state_dict(self) -> dict[str, Any]:
        """State to save in checkpoints (empty: nothing is saved)."""
        return {}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the state :meth:`state_dict` returned."""

    def setup(self, trainer: Trainer, pl_module: TrainingPlan, stage: str) -> None:
        """Run when ``fit`` begins, before anything else."""

    def teardown(self, trainer: Trainer, pl_module: TrainingPlan, stage: str) -> None:
        """Run when ``fit`` ends, also after an exception."""

    def on_fit_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run when fitting starts (after a checkpoint is restored)."""

    def on_fit_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run when fitting ends."""

    def on_train_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run once before the first epoch."""

    def on_train_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run once after the last epoch (also after an early stop)."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run before each training epoch."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run after each epoch, once the epoch's metrics are logged."""

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: TrainingPlan, batch: Any, batch_idx: int
    ) -> None:
        """Run before each training step, with the batch on the device."""

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: TrainingPlan, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Run after each optimizer step; ``outputs`` is ``{"loss": loss}`` (or None)."""

    def on_validation_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run before each validation pass."""

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run after each validation pass, once its metrics are in ``trainer.callback_metrics``."""

    def on_validation_epoch_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run before the first validation batch."""

    def on_validation_epoch_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run after the last validation batch."""

    def on_validation_batch_start(
        self,
        trainer: Trainer,
        pl_module: TrainingPlan,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Run before each validation step."""

    def on_validation_batch_end(
        self,
        trainer: Trainer,
        pl_module: TrainingPlan,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        """Run after each validation step."""

    def on_before_backward(
        self, trainer: Trainer, pl_module: TrainingPlan, loss: torch.Tensor
    ) -> None:
        """Run before ``loss.backward()``."""

    def on_after_backward(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run after ``loss.backward()``, before gradient clipping."""

    def on_before_optimizer_step(
        self, trainer: Trainer, pl_module: TrainingPlan, optimizer: torch.optim.Optimizer
    ) -> None:
        """Run before ``optimizer.step()``."""

    def on_before_zero_grad(
        self, trainer: Trainer, pl_module: TrainingPlan, optimizer: torch.optim.Optimizer
    ) -> None:
        """Run before the gradients are cleared."""

    def on_exception(
        self, trainer: Trainer, pl_module: TrainingPlan, exception: BaseException
    ) -> None:
        """Run when training raises (``KeyboardInterrupt`` included); the exception propagates."""

    def on_save_checkpoint(
        self, trainer: Trainer, pl_module: TrainingPlan, checkpoint: dict[str, Any]
    ) -> None:
        """Run when the trainer writes a checkpoint; may add entries to ``checkpoint``."""

    def on_load_checkpoint(
        self, trainer: Trainer, pl_module: TrainingPlan, checkpoint: dict[str, Any]
    ) -> None:
        """Run when the trainer resumes from ``checkpoint``."""


class LoudEarlyStopping(Callback):
    """Stop training when a monitored validation metric stops improving.

    Parameters
    ----------
    monitor
        Name of the logged metric to watch, e.g. ``"elbo_validation"``.
    min_delta
        Smallest change that counts as an improvement.
    patience
        Number of validation checks without improvement before stopping.
    mode
        ``"min"`` or ``"max"``: whether smaller or larger values are better.
    warmup_epochs
        Validation checks during the first ``warmup_epochs`` epochs never stop training.
    check_finite
        Stop when the metric becomes NaN or infinite.
    """

    def __init__(
        self,
        monitor: str = "elbo_validation",
        min_delta: float = 0.0,
        patience: int = 45,
        mode: str = "min",
        warmup_epochs: int = 0,
        check_finite: bool = True,
        verbose: bool = False,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` can be 'min' or 'max', got {mode!r}.")
        if patience < 0:
            raise ValueError(f"`patience` must be >= 0, got {patience}.")
        self.monitor = monitor
        self.min_delta = abs(float(min_delta))
        self.patience = int(patience)
        self.mode = mode
        self.warmup_epochs = int(warmup_epochs)
        self.check_finite = check_finite
        self.verbose = verbose
        self.best_score = math.inf if mode == "min" else -math.inf
        self.wait_count = 0
        self.stopped_epoch = 0
        self.early_stopping_reason: str | None = None

    def _improved(self, current: float) -> bool:
        if self.mode == "min":
            return current < self.best_score - self.min_delta
        return current > self.best_score + self.min_delta

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Compare the monitored metric with the best so far and stop when patience runs out."""
        metrics = trainer.callback_metrics
        if self.monitor not in metrics:
            available = ", ".join(sorted(metrics)) or "none"
            raise RuntimeError(
                f"Early stopping conditioned on metric `{self.monitor}`, which is not "
                f"available. Available metrics are: {available}."
            )
        current = float(metrics[self.monitor])
        if self.check_finite and not math.isfinite(current):
            self._stop(trainer, f"Monitored metric {self.monitor} = {current} is not finite.")
            return
        if self._improved(current):
            self.best_score = current
            self.wait_count = 0
            return
        if trainer.current_epoch < self.warmup_epochs:
            return
        self.wait_count += 1
        if self.wait_count >= self.patience:
            self._stop(
                trainer,
                f"Monitored metric {self.monitor} did not improve in the last "
                f"{self.wait_count} records. Best score: {self.best_score:.3f}. "
                "Signaling Trainer to stop.",
            )

    def _stop(self, trainer: Trainer, reason: str) -> None:
        trainer.should_stop = True
        self.stopped_epoch = trainer.current_epoch
        self.early_stopping_reason = reason

    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Fail when validation was due but never produced the monitored metric."""
        every = getattr(trainer, "check_val_every_n_epoch", None)
        if not every or (trainer.current_epoch + 1) % every != 0:
            return
        if self.monitor not in trainer.callback_metrics:
            available = ", ".join(sorted(trainer.callback_metrics)) or "none"
            raise RuntimeError(
                f"Early stopping conditioned on metric `{self.monitor}`, which is not "
                f"available after epoch {trainer.current_epoch} (is there a validation set?). "
                f"Available metrics are: {available}."
            )

    def teardown(
        self, trainer: Trainer, pl_module: TrainingPlan, stage: str | None = None
    ) -> None:
        """Print why training stopped early, as the reference does."""
        if self.early_stopping_reason is not None:
            print(self.early_stopping_reason)

    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint (Lightning's layout)."""
        return _state_key(self, monitor=self.monitor, mode=self.mode)

    def state_dict(self) -> dict[str, Any]:
        """The stopping state, saved in checkpoints."""
        return {
            "wait_count": self.wait_count,
            "stopped_epoch": self.stopped_epoch,
            "best_score": torch.tensor(self.best_score),
            "patience": self.patience,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the stopping state of a checkpoint."""
        self.wait_count = int(state_dict["wait_count"])
        self.stopped_epoch = int(state_dict["stopped_epoch"])
        self.best_score = float(state_dict["best_score"])
        self.patience = int(state_dict["patience"])


class LearningRateMonitor(Callback):
    """Log each optimizer's learning rate at the start of every epoch as ``lr-<Optimizer>``.

    Values are indexed by the global step, as Lightning's monitor logs them; with several
    parameter groups the keys are ``lr-<Optimizer>/pg<i>``.
    """

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Record the current learning rate(s) in the history."""
        values = {}
        for optimizer in trainer.optimizers:
            name = f"lr-{type(optimizer).__name__}"
            for i, group in enumerate(optimizer.param_groups):
                key = name if len(optimizer.param_groups) == 1 else f"{name}/pg{i + 1}"
                values[key] = float(group["lr"])
        trainer.log_metrics(values, step=trainer.global_step)


class SaveCheckpoint(Callback):
    """Save the whole model (``model.save``) when a monitored metric improves.

    The kept saves are directories ``<dirpath>/<filename>`` (by default
    ``epoch=E-step=S-<monitor>=V``) written with ``save_anndata=False``; the best one is
    :attr:`best_model_path`, its score :attr:`best_model_score`. Only the ``save_top_k`` best
    are kept. Like Lightning's ``ModelCheckpoint``, a save is considered after each epoch
    when validation runs every epoch, otherwise after each validation pass.

    Parameters
    ----------
    dirpath
        Directory of the saves; by default a directory in ``settings.logging_dir`` named
        after the current date, time and ``monitor``.
    filename
        Name template of a save, e.g. ``"{epoch}-{elbo_validation:.2f}"``; metric names in
        braces are filled in (prefixed ``name=`` unless ``auto_insert_metric_name=False``).
    monitor
        Logged metric to compare saves by.
    load_best_on_end
        Load the best save's weights into the module when training ends.
    check_nan_gradients
        When training raises (not a ``KeyboardInterrupt``), load the best save's weights,
        stop, and explain whether the loss had become NaN.
    mode
        ``"min"`` or ``"max"``: whether smaller or larger values are better.
    save_top_k
        Number of best saves to keep (``-1``: all, ``0``: none).
    every_n_epochs
        Consider a save every this many epochs.
    save_on_train_epoch_end
        Consider saves after the training epoch (True) or after validation (False); by
        default after the epoch when validation runs every epoch.
    auto_insert_metric_name
        Write ``name=`` before each metric value in the name.
    enable_version_counter
        Add ``-v1``, ``-v2``, ... to a name that already exists.
    verbose
        Log each decision.
    **kwargs
        ``save_weights_only`` and ``save_last`` are accepted and ignored with a warning, as in
        the reference.
    """

    CHECKPOINT_JOIN_CHAR = "-"
    CHECKPOINT_EQUALS_CHAR = "="

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str | None = None,
        monitor: str = "validation_loss",
        load_best_on_end: bool = False,
        check_nan_gradients: bool = False,
        *,
        mode: str = "min",
        save_top_k: int = 1,
        every_n_epochs: int | None = None,
        save_on_train_epoch_end: bool | None = None,
        auto_insert_metric_name: bool = True,
        enable_version_counter: bool = True,
        verbose: bool = False,
        **kwargs: Any,
    ) -> None:
        for ignored in ("save_weights_only", "save_last"):
            if ignored in kwargs:
                warnings.warn(
                    f"`{ignored}` is not supported in `SaveCheckpoint` and will be ignored.",
                    RuntimeWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
                kwargs.pop(ignored)
        for key in ("every_n_train_steps", "train_time_interval"):
            if kwargs.pop(key, None):
                raise NotImplementedError(f"SaveCheckpoint does not support `{key}`.")
        if kwargs:
            raise TypeError(f"SaveCheckpoint got unexpected keyword argument(s): {sorted(kwargs)}")
        if mode not in ("min", "max"):
            raise ValueError(f"`mode` can be 'min' or 'max', got {mode!r}.")
        if save_top_k < -1:
            raise ValueError(f"Invalid value for save_top_k={save_top_k}. Must be >= -1.")
        if every_n_epochs is not None and every_n_epochs < 0:
            raise ValueError(f"Invalid value for every_n_epochs={every_n_epochs}. Must be >= 0.")
        if dirpath is None:
            stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
            dirpath = os.path.join(settings.logging_dir, f"{stamp}_{monitor}")
        self.dirpath = os.path.realpath(os.path.expanduser(str(dirpath)))
        self.filename = filename if filename is not None else "{epoch}-{step}-{" + monitor + "}"
        self.monitor = monitor
        self.mode = mode
        self.save_top_k = int(save_top_k)
        self.every_n_epochs = 1 if every_n_epochs is None else int(every_n_epochs)
        self.load_best_on_end = load_best_on_end
        self.check_nan_gradients = check_nan_gradients
        self.auto_insert_metric_name = auto_insert_metric_name
        self.enable_version_counter = enable_version_counter
        self.verbose = verbose
        self._save_on_train_epoch_end = save_on_train_epoch_end

        self.best_k_models: dict[str, torch.Tensor] = {}
        self.kth_best_model_path = ""
        self.kth_value = torch.tensor(math.inf if mode == "min" else -math.inf)
        self.best_model_path = ""
        self.best_model_score: torch.Tensor | None = None
        self.current_score: torch.Tensor | None = None
        self.last_model_path = ""
        self.reason: str | None = None
        self._last_global_step_saved = 0
        # Whether a training loss was NaN, kept on the device: reading it every step would
        # stall the host; it is read only when training raises.
        self._nan_seen: torch.Tensor | bool = False

    # -- Lightning's checkpoint-state protocol -------------------------------------------
    @property
    def state_key(self) -> str:
        """Key of this callback's state in a checkpoint (Lightning's layout)."""
        return _state_key(
            self,
            monitor=self.monitor,
            mode=self.mode,
            every_n_train_steps=0,
            every_n_epochs=self.every_n_epochs,
            train_time_interval=None,
        )

    def state_dict(self) -> dict[str, Any]:
        """The kept saves and scores."""
        return {
            "monitor": self.monitor,
            "best_model_score": self.best_model_score,
            "best_model_path": self.best_model_path,
            "current_score": self.current_score,
            "dirpath": self.dirpath,
            "best_k_models": dict(self.best_k_models),
            "kth_best_model_path": self.kth_best_model_path,
            "kth_value": self.kth_value,
            "last_model_path": self.last_model_path,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore the kept saves; only ``best_model_path`` when ``dirpath`` changed."""
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self.best_model_score = state_dict["best_model_score"]
            self.kth_best_model_path = state_dict.get("kth_best_model_path", "")
            self.kth_value = state_dict.get("kth_value", self.kth_value)
            self.best_k_models = dict(state_dict.get("best_k_models", {}))
            self.last_model_path = state_dict.get("last_model_path", "")
        else:
            warnings.warn(
                f"The dirpath has changed from {state_dict.get('dirpath')!r} to "
                f"{self.dirpath!r}, therefore only `best_model_path` is restored.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        self.best_model_path = state_dict["best_model_path"]

    # -- NaN tracking ---------------------------------------------------------------------
    @property
    def loss_is_nan(self) -> bool:
        """Whether a training loss of this run was NaN."""
        return bool(self._nan_seen)

    @loss_is_nan.setter
    def loss_is_nan(self, value: bool) -> None:
        self._nan_seen = bool(value)

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: TrainingPlan, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        """Note (on the device) whether the step's loss was NaN."""
        if not self.check_nan_gradients:
            return
        loss = outputs.get("loss") if isinstance(outputs, dict) else outputs
        if isinstance(loss, torch.Tensor):
            self._nan_seen = torch.isnan(loss.detach()).any() | self._nan_seen

    # -- when to save ---------------------------------------------------------------------
    def _should_skip(self, trainer: Trainer) -> bool:
        return (
            bool(trainer.fast_dev_run)
            or trainer.state.fn != "fit"
            or trainer.sanity_checking
            or self._last_global_step_saved == trainer.global_step
        )

    def _saves_on_train_epoch_end(self, trainer: Trainer) -> bool:
        if self._save_on_train_epoch_end is not None:
            return self._save_on_train_epoch_end
        if trainer.check_val_every_n_epoch != 1:
            return False
        return sum(trainer.num_val_batches) == 0 or trainer.val_check_interval == 1.0

    def _epoch_due(self, trainer: Trainer) -> bool:
        return self.every_n_epochs >= 1 and (trainer.current_epoch + 1) % self.every_n_epochs == 0

    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Consider a save after the epoch (when validation runs every epoch)."""
        if not self._should_skip(trainer) and self._saves_on_train_epoch_end(trainer):
            if self._epoch_due(trainer):
                self._save_topk(trainer)

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Consider a save after validation (when validation does not run every epoch)."""
        if not self._should_skip(trainer) and not self._saves_on_train_epoch_end(trainer):
            if self._epoch_due(trainer):
                self._save_topk(trainer)

    # -- saving ---------------------------------------------------------------------------
    def _monitor_candidates(self, trainer: Trainer) -> dict[str, torch.Tensor]:
        candidates = {k: torch.as_tensor(v) for k, v in trainer.callback_metrics.items()}
        candidates["epoch"] = torch.tensor(trainer.current_epoch)
        candidates["step"] = torch.tensor(trainer.global_step)
        return candidates

    def format_checkpoint_name(
        self, metrics: dict[str, Any], filename: str | None = None, ver: int | None = None
    ) -> str:
        """Path of a save named by the template filled with ``metrics``.

        Parameters
        ----------
        metrics
            Values for the names in braces (missing ones are 0).
        filename
            Template to use instead of :attr:`filename`.
        ver
            Version suffix (``-v<ver>``).

        Returns
        -------
        str
            ``<dirpath>/<name>``.
        """
        template = filename or self.filename
        metrics = dict(metrics)
        # longest names first, so that "{epoch" is not replaced inside "{epoch_test"
        fields = sorted(re.findall(r"(\{.*?)[:}]", template), key=len, reverse=True)
        for field in fields:
            name = field[1:]
            if self.auto_insert_metric_name:
                template = template.replace(field, name + self.CHECKPOINT_EQUALS_CHAR + field)
            # "{0[name]" indexes the metrics mapping, so names may contain dots
            template = template.replace(field, "{0[" + name + "]")
            metrics.setdefault(name, torch.tensor(0))
        name = template.format(metrics)
        if ver is not None:
            name = self.CHECKPOINT_JOIN_CHAR.join((name, f"v{ver}"))
        return os.path.join(self.dirpath, name)

    def _save_topk(self, trainer: Trainer) -> None:
        if self.save_top_k == 0:
            return
        candidates = self._monitor_candidates(trainer)
        current = candidates.get(self.monitor)
        if current is None:
            message = (
                f"SaveCheckpoint(monitor={self.monitor!r}) could not find the monitored key in "
                f"the logged metrics: {sorted(candidates)}."
            )
            if trainer.fit_loop.epoch_loop.val_loop._has_run:
                raise RuntimeError(message)
            warnings.warn(message, UserWarning, stacklevel=settings.warnings_stacklevel)
            return
        if self._is_top_k(trainer, current):
            self._update_best_and_save(current.float(), trainer, candidates)
        elif self.verbose:
            logger.info("%r was not in top %d.", self.monitor, self.save_top_k)

    def _is_top_k(self, trainer: Trainer, current: torch.Tensor) -> bool:
        if self.save_top_k == -1 or len(self.best_k_models) < self.save_top_k:
            return True
        worst = self.best_k_models[self.kth_best_model_path]
        better = current < worst if self.mode == "min" else current > worst
        return trainer.strategy.reduce_boolean_decision(bool(better))

    def _update_best_and_save(
        self, current: torch.Tensor, trainer: Trainer, candidates: dict[str, torch.Tensor]
    ) -> None:
        k = len(self.best_k_models) + 1 if self.save_top_k == -1 else self.save_top_k
        dropped = None
        if len(self.best_k_models) == k and k > 0:
            dropped = self.kth_best_model_path
            self.best_k_models.pop(dropped)
        if torch.isnan(current):
            current = torch.tensor(math.inf if self.mode == "min" else -math.inf)
        path = self._free_path(candidates, dropped)
        self.current_score = current
        self.best_k_models[path] = current
        pick_worst, pick_best = (max, min) if self.mode == "min" else (min, max)
        if len(self.best_k_models) == k:
            self.kth_best_model_path = pick_worst(self.best_k_models, key=self.best_k_models.get)
            self.kth_value = self.best_k_models[self.kth_best_model_path]
        self.best_model_path = pick_best(self.best_k_models, key=self.best_k_models.get)
        self.best_model_score = self.best_k_models[self.best_model_path]
        if self.verbose:
            logger.info("%r reached %.5f, saving the model to %r.", self.monitor, current, path)
        self._save_model(trainer, path)
        if dropped and dropped != path:
            trainer.strategy.remove_checkpoint(dropped)

    def _free_path(self, candidates: dict[str, torch.Tensor], dropped: str | None) -> str:
        path = self.format_checkpoint_name(candidates)
        version = 1
        while self.enable_version_counter and os.path.exists(path) and path != dropped:
            path = self.format_checkpoint_name(candidates, ver=version)
            version += 1
        return path

    def _save_model(self, trainer: Trainer, path: str) -> None:
        model = trainer.scvi_model
        if model is None:
            raise RuntimeError(
                "SaveCheckpoint saves the whole model and needs `trainer.scvi_model` "
                "(set by TrainRunner); this trainer has none."
            )
        if trainer.is_global_zero:
            was_trained, was_training = model.is_trained_, model.module.training
            previous_trainer = getattr(model, "trainer", None)
            model.module.eval()
            model.is_trained_ = True
            model.trainer = trainer
            try:
                model.save(path, save_anndata=False, overwrite=True)
            finally:
                model.module.train(was_training)
                model.is_trained_ = was_trained
                model.trainer = previous_trainer
        self._last_global_step_saved = trainer.global_step
        trainer.strategy.barrier()

    # -- loading the best save -------------------------------------------------------------
    def _load_best(self, pl_module: TrainingPlan) -> None:
        from ..model.base._base_model import _load_saved_files

        _, _, state_dict, _ = _load_saved_files(
            self.best_model_path, load_adata=False, map_location=pl_module.module.device
        )
        pyro_param_store = state_dict.pop("pyro_param_store", None)
        pl_module.module.load_state_dict(state_dict)
        if pyro_param_store and pyro_param_store.get("params"):
            import pyro  # only a Pyro model's save holds parameters in the store

            pyro.get_param_store().set_state(pyro_param_store)

    def on_train_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Load the best save's weights when ``load_best_on_end``."""
        if not self.load_best_on_end:
            return
        if not self.best_model_path:
            warnings.warn(
                "SaveCheckpoint(load_best_on_end=True) saved nothing during training; the "
                "module keeps its last weights.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            return
        self._load_best(pl_module)

    def on_exception(
        self, trainer: Trainer, pl_module: TrainingPlan, exception: BaseException
    ) -> None:
        """With ``check_nan_gradients``, load the best save after an error and say why."""
        if isinstance(exception, KeyboardInterrupt) or not self.check_nan_gradients:
            return
        if self.loss_is_nan:
            self.reason = (
                "\033[31m[Warning] NaN detected in the loss. Stopping training. "
                "Please verify your model and data. "
                "Saving model....Please load it back and continue training\033[0m"
            )
        else:
            self.reason = (
                "\033[31m[Warning] Exception occurred during training (Nan or Inf gradients). "
                "Please verify your model and data. "
                "Saving model....Please load it back and continue training\033[0m"
            )
        trainer.should_stop = True
        if self.best_model_path:
            self._load_best(pl_module)
        print(self.reason + f". Model saved to {self.best_model_path}")
        logger.info(self.reason)


class ScibCallback(Callback):
    """Expose the training plan to scib-metrics' autotune at validation and training end.

    Needs no scib-metrics: it only keeps the plan in :attr:`pl_module`.
    """

    def __init__(self) -> None:
        self.pl_module: TrainingPlan | None = None

    def _get_report_dict(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        self.pl_module = pl_module

    def on_train_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Keep the plan once training ends."""
        self._get_report_dict(trainer, pl_module)

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Keep the plan after each validation pass."""
        self._get_report_dict(trainer, pl_module)
