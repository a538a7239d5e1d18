"""``UnsupervisedTrainingMixin.train``: split, plan and run training."""

from __future__ import annotations

import warnings
from typing import Any

import torch

from ..._settings import settings
from ...dataloaders import DataSplitter
from ...train import TrainingPlan, TrainRunner
from ...train._config import merge_kwargs
from ...train._distributed import is_ddp_strategy


def get_max_epochs_heuristic(
    n_obs: int, epochs_cap: int = 400, decay_at_n_obs: int = 20000
) -> int:
    """Default number of epochs for ``n_obs`` cells: 400 up to 20,000 cells, then decaying.

    Parameters
    ----------
    n_obs
        Number of cells.
    epochs_cap
        Largest number of epochs.
    decay_at_n_obs
        Number of cells above which the epoch count decays as ``1 / n_obs``.

    Returns
    -------
    int
        ``max(min(round(decay_at_n_obs / n_obs * epochs_cap), epochs_cap), 1)``.
    """
    max_epochs = int(min(round((decay_at_n_obs / n_obs) * epochs_cap), epochs_cap))
    max_epochs = max(max_epochs, 1)
    if max_epochs == 1:
        warnings.warn(
            "The default number of maximum epochs has been set to 1 due to the large number "
            "of cells. Consider setting `max_epochs` manually.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
    return max_epochs


def _trains_on_cuda(accelerator: str) -> bool:
    """Whether ``accelerator`` resolves to a CUDA device here."""
    if not isinstance(accelerator, str) or accelerator.lower() not in ("auto", "gpu", "cuda"):
        return False
    return torch.cuda.is_available()


class UnsupervisedTrainingMixin:
    """Adds ``train`` for unsupervised models (a :class:`DataSplitter`, a plan and a runner)."""

    _data_splitter_cls = DataSplitter
    _training_plan_cls = TrainingPlan
    _train_runner_cls = TrainRunner

    def _module_from_datamodule(self, datamodule: Any) -> torch.nn.Module:
        """Build the module of a model created without AnnData from the data module's sizes.

        The data module must tell ``n_vars`` and ``n_batch``; ``n_labels``,
        ``n_continuous_cov`` and ``n_cats_per_cov`` are optional.
        """
        missing = [name for name in ("n_vars", "n_batch") if not hasattr(datamodule, name)]
        if missing:
            raise AttributeError(
                f"The model was built without AnnData, so its module is sized from the "
                f"datamodule, which lacks {', '.join(missing)}."
            )
        return self._module_cls(
            datamodule.n_vars,
            n_batch=datamodule.n_batch,
            n_labels=getattr(datamodule, "n_labels", 1),
            n_continuous_cov=getattr(datamodule, "n_continuous_cov", 0),
            n_cats_per_cov=getattr(datamodule, "n_cats_per_cov", None),
            **getattr(self, "_module_kwargs", {}),
        )

    def train(
        self,
        max_epochs: int | None = None,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        load_sparse_tensor: bool = False,
        batch_size: int = 128,
        early_stopping: bool = False,
        datasplitter_kwargs: dict | None = None,
        plan_config: Any = None,
        plan_kwargs: Any = None,
        datamodule: Any = None,
        trainer_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train the model.

        Parameters
        ----------
        max_epochs
            Number of passes through the data; by default from
            :func:`get_max_epochs_heuristic` of the number of cells.
        accelerator
            ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"``.
        devices
            Device selection; one device is used.
        train_size
            Fraction of cells for training (0.9 when None, with the reference's rounding).
        validation_size
            Fraction for validation; the rest of ``train_size`` when None.
        shuffle_set_split
            Shuffle cells before splitting (seeded by ``settings.seed``).
        load_sparse_tensor
            Load X as torch sparse CSR minibatches.
        batch_size
            Minibatch size.
        early_stopping
            Stop when ``early_stopping_monitor`` stops improving.
        datasplitter_kwargs
            Extra arguments of the data splitter (e.g. ``external_indexing``).
        plan_config
            Config of training-plan arguments.
        plan_kwargs
            Training-plan arguments (override ``plan_config``).
        datamodule
            A data module to use instead of the model's AnnData.
        trainer_config
            Config of trainer arguments.
        **trainer_kwargs
            Trainer arguments (``check_val_every_n_epoch``, ``early_stopping_patience``, ...).
        """
        if datamodule is None and getattr(self, "adata_manager", None) is None:
            raise AttributeError(
                "The model was built without AnnData; pass the training data as "
                "`datamodule=` (e.g. a DataSplitter of a registered AnnData)."
            )
        if max_epochs is None:
            if datamodule is None:
                max_epochs = get_max_epochs_heuristic(self.adata.n_obs)
            elif hasattr(datamodule, "n_obs"):
                max_epochs = get_max_epochs_heuristic(datamodule.n_obs)
            else:
                raise ValueError(
                    "If `datamodule` does not have `n_obs` attribute, `max_epochs` must be "
                    "passed in."
                )
        if datamodule is None:
            datasplitter_kwargs = dict(datasplitter_kwargs or {})
            if is_ddp_strategy(trainer_kwargs.get("strategy")):
                # each process loads its own share of every epoch's minibatches
                datasplitter_kwargs.setdefault("distributed_sampler", True)
            if _trains_on_cuda(accelerator):
                # page-locked minibatches: the host-to-device copies run asynchronously
                datasplitter_kwargs.setdefault("pin_memory", True)
            datamodule = self._data_splitter_cls(
                self.adata_manager,
                train_size=train_size,
                validation_size=validation_size,
                batch_size=batch_size or settings.batch_size,
                shuffle_set_split=shuffle_set_split,
                load_sparse_tensor=load_sparse_tensor,
                **datasplitter_kwargs,
            )
        else:
            self._datamodule = datamodule
            if getattr(self, "module", None) is None:
                self.module = self._module_from_datamodule(datamodule)
        if getattr(self, "module", None) is None:
            raise ValueError(
                "The model has no module; build it from AnnData before calling train()."
            )
        plan = self._training_plan_cls(
            self.module, **merge_kwargs(plan_config, plan_kwargs, name="plan")
        )
        trainer_kwargs.setdefault("early_stopping", early_stopping)
        runner = self._train_runner_cls(
            self,
            training_plan=plan,
            data_splitter=datamodule,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            trainer_config=trainer_config,
            **trainer_kwargs,
        )
        return runner()
