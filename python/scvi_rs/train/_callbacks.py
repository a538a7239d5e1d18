"""Training callbacks: the hook protocol of :class:`Trainer` and early stopping."""

from __future__ import annotations

import logging
import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._trainer import Trainer
    from ._trainingplans import TrainingPlan

logger = logging.getLogger("scvi_rs")


class Callback:
    """Base class of training callbacks; override the hooks you need.

    Every hook receives the :class:`~scvi_rs.train.Trainer` and the training plan. A
    callback stops training by setting ``trainer.should_stop = True``.
    """

    def on_train_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run once before the first epoch."""

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run before each training epoch."""

    def on_validation_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run after each validation pass, once its metrics are in ``trainer.callback_metrics``."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run after each epoch, once the epoch's metrics are logged."""

    def on_train_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Run once after the last epoch (also after an early stop)."""


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

    def on_train_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Print why training stopped early, as the reference does."""
        if self.early_stopping_reason is not None:
            print(self.early_stopping_reason)


class LearningRateMonitor(Callback):
    """Log the learning rate of each optimizer parameter group once per epoch as ``lr-<Opt>``."""

    def on_train_epoch_end(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Record the current learning rate(s) in the history."""
        for optimizer in trainer.optimizers:
            name = f"lr-{type(optimizer).__name__}"
            for i, group in enumerate(optimizer.param_groups):
                key = name if len(optimizer.param_groups) == 1 else f"{name}/pg{i + 1}"
                trainer.logger.log_metrics({key: float(group["lr"])}, trainer.current_epoch)
