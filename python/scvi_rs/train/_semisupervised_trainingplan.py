"""``SemiSupervisedTrainingPlan``: the ELBO plus a classification loss on labelled cells."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch

from ._callbacks import Callback
from ._config import _fields_as_kwargs
from ._constants import METRIC_KEYS
from ._metrics import EpochAccumulator
from ._trainingplans import TrainingPlan

if TYPE_CHECKING:
    from ..module.base import BaseModuleClass, LossOutput
    from ._trainer import Trainer

_CALIBRATION_BINS = 15


def multiclass_accuracy(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Micro-averaged accuracy: the fraction of correct predictions.

    Parameters
    ----------
    predicted
        Predicted classes, ``(n,)``.
    target
        True classes, ``(n,)``.

    Returns
    -------
    torch.Tensor
        0-d float tensor.
    """
    return (predicted == target).float().mean()


def multiclass_f1_score(predicted: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Micro-averaged F1 score of single-label predictions.

    Every wrong prediction is one false positive (for the predicted class) and one false
    negative (for the true class), so ``2 tp / (2 tp + fp + fn)`` equals the accuracy.

    Parameters
    ----------
    predicted
        Predicted classes, ``(n,)``.
    target
        True classes, ``(n,)``.

    Returns
    -------
    torch.Tensor
        0-d float tensor.
    """
    true_pos = (predicted == target).float().sum()
    errors = predicted.numel() - true_pos
    return 2 * true_pos / (2 * true_pos + 2 * errors).clamp(min=1)


def multiclass_calibration_error(
    scores: torch.Tensor, target: torch.Tensor, n_bins: int = _CALIBRATION_BINS
) -> torch.Tensor:
    """Expected calibration error (L1) of the top-class confidence, as torchmetrics.

    Scores outside ``[0, 1]`` are logits and go through a softmax first. Confidences fall in
    ``n_bins`` equal-width bins over ``[0, 1]`` (a confidence of exactly 1 in a bin of its
    own); the error is ``sum_b |accuracy_b - confidence_b| * share_b``.

    Parameters
    ----------
    scores
        ``(n, n_classes)`` logits or probabilities.
    target
        True classes, ``(n,)``.
    n_bins
        Number of bins.

    Returns
    -------
    torch.Tensor
        0-d float tensor.
    """
    scores = scores.detach().float()
    # selected on the device (no host read): logits go through a softmax, probabilities not
    in_unit_interval = ((scores >= 0) & (scores <= 1)).all()
    scores = torch.where(in_unit_interval, scores, scores.softmax(dim=1))
    confidence, predicted = scores.max(dim=1)
    correct = (predicted == target).to(confidence.dtype)
    boundaries = torch.linspace(0, 1, n_bins + 1, device=scores.device, dtype=confidence.dtype)
    bins = torch.bucketize(confidence, boundaries, right=True) - 1
    n_slots = len(boundaries)
    count = torch.zeros(n_slots, device=scores.device, dtype=confidence.dtype)
    count.scatter_add_(0, bins, torch.ones_like(confidence))
    conf_sum = torch.zeros_like(count).scatter_add_(0, bins, confidence)
    acc_sum = torch.zeros_like(count).scatter_add_(0, bins, correct)
    safe_count = count.clamp(min=1)
    share = count / count.sum().clamp(min=1)
    return ((acc_sum / safe_count - conf_sum / safe_count).abs() * share).sum()


_CLASSIFICATION_METRICS = (
    METRIC_KEYS.CLASSIFICATION_LOSS_KEY,
    METRIC_KEYS.ACCURACY_KEY,
    METRIC_KEYS.F1_SCORE_KEY,
    METRIC_KEYS.CALIBRATION_ERROR_KEY,
)


def classification_step_values(
    classification_loss: torch.Tensor, logits: torch.Tensor, true_labels: torch.Tensor
) -> torch.Tensor:
    """The classification metrics of one labelled minibatch, stacked on its device.

    Parameters
    ----------
    classification_loss
        0-d cross-entropy of the minibatch.
    logits
        ``(n, n_classes)`` classifier output.
    true_labels
        True classes, ``(n,)`` or ``(n, 1)``.

    Returns
    -------
    torch.Tensor
        ``(4,)`` float tensor: loss, accuracy, micro F1 and calibration error, in the order
        of ``_CLASSIFICATION_METRICS``.
    """
    target = true_labels.reshape(-1).long()
    logits = logits.detach()
    predicted = torch.argmax(logits, dim=-1)
    values = (
        classification_loss.detach().float().reshape(()),
        multiclass_accuracy(predicted, target),
        multiclass_f1_score(predicted, target),
        multiclass_calibration_error(logits, target),
    )
    return torch.stack(values)


def _split_batch(batch: Any) -> tuple[dict, dict | None]:
    """``(all cells, labelled cells or None)`` of a minibatch or a loader's tuple of them."""
    if isinstance(batch, (list, tuple)):
        return batch[0], (batch[1] if len(batch) > 1 else None)
    return batch, None


class SemiSupervisedTrainingPlan(TrainingPlan):
    """Training plan of semi-supervised modules such as :class:`~scvi_rs.module.SCANVAE`.

    Each step takes ``(minibatch, labelled minibatch)`` (from a
    :class:`~scvi_rs.dataloaders.SemiSupervisedDataLoader`) or a plain minibatch (no
    labelled cells); the labelled cells go to the module's loss as ``labelled_tensors``.
    Besides the ELBO metrics it logs ``{mode}_classification_loss``, ``{mode}_accuracy``,
    ``{mode}_f1_score`` and ``{mode}_calibration_error`` (``mode`` is ``train`` or
    ``validation``) for steps with labelled cells.

    Parameters
    ----------
    module
        A module whose ``loss`` takes ``labelled_tensors`` and ``classification_ratio``.
    n_classes
        Number of labels.
    classification_ratio
        Weight of the classification loss.
    lr
        Learning rate.
    weight_decay
        Weight decay of the optimizer.
    n_steps_kl_warmup
        KL warm-up length in steps (when ``n_epochs_kl_warmup`` is None).
    n_epochs_kl_warmup
        KL warm-up length in epochs.
    reduce_lr_on_plateau
        Reduce the learning rate when ``lr_scheduler_metric`` plateaus.
    lr_factor, lr_patience, lr_threshold
        Arguments of the plateau scheduler.
    lr_scheduler_metric
        Validation metric the scheduler monitors.
    compile
        Wrap the module's forward with :func:`torch.compile`.
    compile_kwargs
        Keyword arguments of :func:`torch.compile`.
    **loss_kwargs
        Further :class:`~scvi_rs.train.TrainingPlan` arguments (``optimizer``,
        ``max_kl_weight``, ...) and keyword arguments of the module's ``loss``.
    """

    def __init__(
        self,
        module: BaseModuleClass,
        n_classes: int,
        *,
        classification_ratio: int = 50,
        lr: float = 1e-3,
        weight_decay: float = 1e-6,
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = 400,
        reduce_lr_on_plateau: bool = False,
        lr_factor: float = 0.6,
        lr_patience: int = 30,
        lr_threshold: float = 0.0,
        lr_scheduler_metric: Literal[
            "elbo_validation", "reconstruction_loss_validation", "kl_local_validation"
        ] = "elbo_validation",
        compile: bool = False,
        compile_kwargs: dict | None = None,
        **loss_kwargs: Any,
    ) -> None:
        super().__init__(
            module,
            lr=lr,
            weight_decay=weight_decay,
            n_steps_kl_warmup=n_steps_kl_warmup,
            n_epochs_kl_warmup=n_epochs_kl_warmup,
            reduce_lr_on_plateau=reduce_lr_on_plateau,
            lr_factor=lr_factor,
            lr_patience=lr_patience,
            lr_threshold=lr_threshold,
            lr_scheduler_metric=lr_scheduler_metric,
            compile=compile,
            compile_kwargs=compile_kwargs,
            **loss_kwargs,
        )
        self.loss_kwargs["classification_ratio"] = classification_ratio
        self.n_classes = n_classes

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Run the module on the minibatch of all cells, its labelled cells in the loss.

        The first argument may be a ``(cells, labelled cells)`` pair; the labelled part is
        passed to the module's loss as ``labelled_tensors``.
        """
        if args:
            full, labelled = _split_batch(args[0])
            args = (full, *args[1:])
            if "loss_kwargs" in kwargs or labelled is not None:
                loss_kwargs = dict(kwargs.get("loss_kwargs") or {})
                loss_kwargs["labelled_tensors"] = labelled
                kwargs["loss_kwargs"] = loss_kwargs
        return super().forward(*args, **kwargs)

    __call__ = forward

    def log_with_mode(self, key: str, value: Any, mode: str, **kwargs: Any) -> None:
        """Log ``value`` as ``{mode}_{key}``."""
        self.log(f"{mode}_{key}", value, **kwargs)

    def compute_and_log_metrics(
        self, loss_output: LossOutput, metrics: dict | None, mode: str
    ) -> None:
        """Log the ELBO metrics and, for steps with labelled cells, the classification ones.

        Parameters
        ----------
        loss_output
            The module's loss output.
        metrics
            Unused (the reference's torchmetrics collection).
        mode
            ``"train"`` or ``"validation"``.
        """
        super().compute_and_log_metrics(loss_output, metrics, mode)
        if loss_output.classification_loss is None:
            return
        step_values = classification_step_values(
            loss_output.classification_loss, loss_output.logits, loss_output.true_labels
        )
        n_obs = loss_output.n_obs_minibatch
        if self.on_epoch and not self.on_step and mode == self._stage():
            # Epoch means only (the default): one running sum for the four metrics, handed
            # to the epoch accumulator when the epoch's metrics are read.
            self._add_classification_sums(mode, step_values, n_obs)
            return
        for key, value in zip(_CLASSIFICATION_METRICS, step_values.unbind(), strict=True):
            self.log_with_mode(
                key, value, mode, on_step=self.on_step, on_epoch=self.on_epoch, batch_size=n_obs
            )

    @property
    def _classification_sums(self) -> dict[str, tuple[torch.Tensor, int]]:
        """Stage -> (weighted sums of the classification metrics, their total weight)."""
        sums = self.__dict__.get("_pending_classification_sums")
        if sums is None:
            sums = self.__dict__["_pending_classification_sums"] = {}
        return sums

    def _add_classification_sums(self, stage: str, values: torch.Tensor, weight: int) -> None:
        sums = self._classification_sums
        weight = weight or 1
        weighted = values.to(torch.float64) * weight
        if stage in sums:
            total, total_weight = sums[stage]
            sums[stage] = (total + weighted, total_weight + weight)
        else:
            sums[stage] = (weighted, weight)

    def flush_epoch_metrics(self, stage: str) -> tuple[dict[str, float], dict[str, float]]:
        """Read the epoch means of ``stage``, the classification metrics among them.

        Parameters
        ----------
        stage
            ``"train"`` or ``"validation"``.

        Returns
        -------
        tuple of dict
            As :meth:`TrainingPlan.flush_epoch_metrics`.
        """
        pending = self._classification_sums.pop(stage, None)
        if pending is not None:
            total, weight = pending
            accumulator = self._epoch_metrics.setdefault(stage, EpochAccumulator())
            for key, numerator in zip(_CLASSIFICATION_METRICS, total.unbind(), strict=True):
                accumulator.add(f"{stage}_{key}", numerator, weight)
        return super().flush_epoch_metrics(stage)

    def initialize_train_metrics(self) -> None:
        """Start the training metrics afresh, the classification ones included."""
        super().initialize_train_metrics()
        self._classification_sums.pop("train", None)

    def initialize_val_metrics(self) -> None:
        """Start the validation metrics afresh, the classification ones included."""
        super().initialize_val_metrics()
        self._classification_sums.pop("validation", None)


@dataclass
class SemiSupervisedTrainingPlanConfig:
    """Keyword arguments of :class:`SemiSupervisedTrainingPlan` (``plan_config=``).

    ``loss_kwargs`` (further plan and loss keywords) are flattened into the keywords
    :meth:`to_kwargs` returns.
    """

    classification_ratio: int = 50
    lr: float = 1e-3
    weight_decay: float = 1e-6
    n_steps_kl_warmup: int | None = None
    n_epochs_kl_warmup: int | None = 400
    reduce_lr_on_plateau: bool = False
    lr_factor: float = 0.6
    lr_patience: int = 30
    lr_threshold: float = 0.0
    lr_scheduler_metric: Literal[
        "elbo_validation", "reconstruction_loss_validation", "kl_local_validation"
    ] = "elbo_validation"
    compile: bool = False
    compile_kwargs: dict | None = None
    loss_kwargs: dict[str, Any] = field(default_factory=dict)

    def to_kwargs(self) -> dict[str, Any]:
        """Return the config as a flat keyword dict.

        Returns
        -------
        dict
            The keyword arguments this config stands for.
        """
        return _fields_as_kwargs(self, ("loss_kwargs",))


class SubSampleLabels(Callback):
    """Draw a new subsample of labelled cells at the start of every epoch.

    Parameters
    ----------
    datamodule
        The data splitter whose training loader to resample, when the trainer does not
        expose ``train_dataloader``.
    """

    def __init__(self, datamodule: Any = None) -> None:
        super().__init__()
        self.datamodule = datamodule

    def on_train_epoch_start(self, trainer: Trainer, pl_module: TrainingPlan) -> None:
        """Call ``resample_labels()`` of the training loader, if it has one."""
        candidates = (
            getattr(trainer, "train_dataloader", None),
            getattr(self.datamodule, "last_train_dataloader", None),
        )
        for loader in candidates:
            resample = getattr(loader, "resample_labels", None)
            if callable(resample):
                resample()
                return


__all__ = [
    "SemiSupervisedTrainingPlan",
    "SemiSupervisedTrainingPlanConfig",
    "SubSampleLabels",
    "classification_step_values",
    "multiclass_accuracy",
    "multiclass_calibration_error",
    "multiclass_f1_score",
]
