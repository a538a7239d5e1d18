"""``TrainRunner``: wires a model, a training plan and a data splitter to a :class:`Trainer`."""

from __future__ import annotations

import gc
import logging
import warnings
from typing import TYPE_CHECKING, Any

import pandas as pd
import torch

from .._settings import settings
from ..dataloaders import DataSplitter
from ._config import merge_kwargs
from ._strategy import Strategy
from ._trainer import Trainer

if TYPE_CHECKING:
    from ..model.base import BaseModelClass
    from ._trainingplans import TrainingPlan

logger = logging.getLogger("scvi_rs")


class TrainRunner:
    """Run training of a model and record its history and split indices.

    The device and the strategy are resolved once, here, into one
    :class:`~scvi_rs.train.Strategy` that the :class:`~scvi_rs.train.Trainer` receives.

    Parameters
    ----------
    model
        The model whose ``module`` is trained.
    training_plan
        The :class:`~scvi_rs.train.TrainingPlan`.
    data_splitter
        A :class:`~scvi_rs.dataloaders.DataSplitter` (or any object with
        ``train_dataloader``, and optionally ``setup`` and ``val_dataloader``).
    max_epochs
        Number of epochs.
    accelerator
        ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"``.
    devices
        Device selection (one device per process).
    trainer_config
        Config of :class:`~scvi_rs.train.Trainer` keywords, merged with ``trainer_kwargs``.
    **trainer_kwargs
        Keyword arguments of :class:`~scvi_rs.train.Trainer` (``strategy="ddp"`` included).

    Notes
    -----
    When training raises, ``KeyboardInterrupt`` included, the exception reaches the caller
    and the model is left in a defined state: ``history`` holds what was logged until then,
    ``is_trained`` keeps its value from before this call, the module (with the weights of
    the last completed step) is in eval mode, and ``model.trainer`` is this run's trainer.
    """

    _trainer_cls = Trainer

    def __init__(
        self,
        model: BaseModelClass,
        training_plan: TrainingPlan,
        data_splitter: Any,
        max_epochs: int,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        trainer_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        self.training_plan = training_plan
        self.data_splitter = data_splitter
        self.model = model
        trainer_kwargs = merge_kwargs(trainer_config, trainer_kwargs, name="trainer")
        strategy = trainer_kwargs.pop("strategy", "auto")
        self.strategy = (
            strategy
            if isinstance(strategy, Strategy)
            else Strategy.resolve(accelerator, devices, strategy)
        )
        self.accelerator = self.strategy.accelerator
        self.lightning_devices = self.strategy.device_indices
        self.device = self.strategy.root_device
        if getattr(training_plan, "reduce_lr_on_plateau", False):
            trainer_kwargs["learning_rate_monitor"] = True
        self.ckpt_path = trainer_kwargs.pop("ckpt_path", None)
        for key in ("max_epochs", "accelerator", "devices"):
            trainer_kwargs.pop(key, None)
        self.trainer = self._trainer_cls(
            max_epochs=max_epochs, strategy=self.strategy, **trainer_kwargs
        )
        self.trainer.scvi_model = model
        self._check_early_stopping_setup()

    def _check_early_stopping_setup(self) -> None:
        callback = self.trainer.early_stopping_callback
        splitter = self.data_splitter
        if callback is None or not isinstance(splitter, DataSplitter):
            return
        if splitter.n_val == 0 and "valid" in callback.monitor:
            raise ValueError(
                "Can't run Early Stopping with validation monitor with no validation set"
            )
        n_test = splitter.adata_manager.adata.n_obs - splitter.n_train - splitter.n_val
        if n_test == 0 and "test" in callback.monitor:
            raise ValueError("Can't run Early Stopping with test monitor with no test set")

    def __call__(self) -> None:
        """Train, then record history, split indices and the trained state on the model."""
        splitter = self.data_splitter
        if hasattr(splitter, "n_train"):
            self.training_plan.n_obs_training = splitter.n_train
        if hasattr(splitter, "n_val"):
            self.training_plan.n_obs_validation = splitter.n_val
        try:
            self.trainer.fit(self.training_plan, datamodule=splitter, ckpt_path=self.ckpt_path)
        except BaseException as exception:
            self._update_history()
            self.model.module.eval()
            self.model.trainer = self.trainer
            print("Exception raised during training.", type(exception).__name__, exception)
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            raise
        self._update_history()
        self.model.train_indices = getattr(splitter, "train_idx", None)
        self.model.test_indices = getattr(splitter, "test_idx", None)
        self.model.validation_indices = getattr(splitter, "val_idx", None)
        self.model.module.eval()
        self.model.is_trained_ = True
        self.model.to_device(self.device)
        self.model.trainer = self.trainer

    def _update_history(self) -> None:
        trainer_logger = self.trainer.logger
        history = getattr(trainer_logger, "history", None)
        if trainer_logger is None:
            history = {}
        if not isinstance(history, dict):
            warnings.warn(
                "Training history cannot be updated. Logger can be accessed from "
                "`model.trainer.logger`",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            return
        old = self.model.history_
        if not self.model.is_trained_ or not isinstance(old, dict):
            self.model.history_ = {k: df.copy() for k, df in history.items()}
            return
        # A further train() call continues the index of keys already in the history;
        # keys first seen now are dropped, as in the reference.
        for key, old_df in old.items():
            if key not in history:
                continue
            new_df = history[key].copy()
            start = int(old_df.index[-1]) + 1 if len(old_df.index) else 0
            new_df.index = pd.Index(
                range(start, start + len(new_df)), name=old_df.index.name or "epoch"
            )
            old[key] = pd.concat([old_df, new_df])
