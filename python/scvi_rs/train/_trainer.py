"""``Trainer``: a plain torch training loop with scvi-tools' arguments (no Lightning).

The loop calls Lightning's hooks in Lightning's order, on the callbacks and on the training
plan, and offers the trainer attributes Lightning callbacks read (``strategy``,
``callback_metrics``, ``state``, ``fit_loop``, ``save_checkpoint``, ...), so callbacks written
for Lightning, such as its ``ModelCheckpoint``, run unchanged.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm

from .._settings import settings
from ._callbacks import Callback, LearningRateMonitor, LoudEarlyStopping, SaveCheckpoint
from ._cuda_graph import CudaGraphStep, make_graph_step
from ._logger import SimpleLogger
from ._metrics import StepValues
from ._strategy import Strategy

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
# Hooks run inside a training step: there `log` records per step by default, as in Lightning.
_TRAINING_STEP_HOOKS = frozenset(
    {
        "training_step",
        "on_train_batch_start",
        "on_train_batch_end",
        "on_before_backward",
        "on_after_backward",
        "on_before_optimizer_step",
        "on_before_zero_grad",
    }
)


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


def _step_loss(output: Any) -> torch.Tensor | None:
    """The loss in what ``training_step`` returned: a tensor, a dict with "loss", or None."""
    if output is None or isinstance(output, torch.Tensor):
        return output
    if isinstance(output, Mapping):
        if "loss" not in output:
            raise ValueError(
                "training_step returned a dict without a 'loss' entry; return the loss tensor, "
                "a dict with 'loss', or None to skip the batch."
            )
        return output["loss"]
    raise TypeError(
        "training_step must return a loss tensor, a dict with 'loss', or None to skip the "
        f"batch; got {type(output).__name__}."
    )


@dataclass
class TrainerState:
    """What the trainer is doing: ``fn`` ("fit" while fitting), ``status`` and ``stage``."""

    fn: str | None = None
    status: str = "initializing"
    stage: str | None = None


@dataclass
class _Progress:
    """Counts of one loop level (Lightning's ``ready/started/processed/completed``)."""

    ready: int = 0
    started: int = 0
    processed: int = 0
    completed: int = 0

    def as_dict(self) -> dict[str, int]:
        return {
            "ready": self.ready,
            "started": self.started,
            "processed": self.processed,
            "completed": self.completed,
        }


@dataclass
class BatchProgress:
    """Position in the epoch's batches."""

    is_last_batch: bool = False
    current: _Progress = field(default_factory=_Progress)


@dataclass
class ValidationLoopState:
    """Whether validation has run during this fit (Lightning's ``val_loop._has_run``)."""

    _has_run: bool = False
    batches_seen: int = 0


@dataclass
class EpochLoopState:
    """Batch progress of the running epoch and the validation loop inside it."""

    batch_progress: BatchProgress = field(default_factory=BatchProgress)
    val_loop: ValidationLoopState = field(default_factory=ValidationLoopState)
    _batches_that_stepped: int = 0


@dataclass
class FitLoopState:
    """Progress of ``fit``: epochs processed (batches done) and completed (epoch end done)."""

    epoch_loop: EpochLoopState = field(default_factory=EpochLoopState)
    epoch_progress: _Progress = field(default_factory=_Progress)

    def state_dict(self) -> dict[str, Any]:
        """Progress in a Lightning checkpoint's ``loops["fit_loop"]`` layout."""
        progress = self.epoch_progress.as_dict()
        return {
            "epoch_progress": {"total": dict(progress), "current": dict(progress)},
            "epoch_loop.state_dict": {
                "_batches_that_stepped": self.epoch_loop._batches_that_stepped
            },
        }


class LoggerConnector:
    """When step values are logged (Lightning's ``trainer._logger_connector``).

    Lightning callbacks such as ``LearningRateMonitor`` ask it before logging a step.
    """

    def __init__(self, trainer: Trainer) -> None:
        self._trainer = trainer

    @property
    def should_update_logs(self) -> bool:
        """Whether the coming step is one whose values are logged."""
        trainer = self._trainer
        # `+ 1`: asked before the step runs (e.g. in `on_train_batch_start`)
        step = trainer.fit_loop.epoch_loop._batches_that_stepped + 1
        return step % trainer.log_every_n_steps == 0 or trainer.should_stop


@dataclass
class LRSchedulerConfig:
    """A learning-rate scheduler and the metric it follows (ReduceLROnPlateau)."""

    scheduler: Any
    monitor: str | None = None
    interval: str = "epoch"
    frequency: int = 1
    strict: bool = True
    name: str | None = None


class Trainer:
    """Train a :class:`~scvi_rs.train.TrainingPlan` on the data of a data module.

    Accepts scvi-tools' ``Trainer`` arguments and the commonly used Lightning keywords
    (``gradient_clip_val``, ``callbacks``, ``max_steps``, ``limit_train_batches``,
    ``limit_val_batches``, ``fast_dev_run``), and runs a plain torch loop on one device per
    process.

    Parameters
    ----------
    accelerator
        ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"`` (ignored when ``strategy`` is a
        :class:`~scvi_rs.train.Strategy`).
    devices
        ``"auto"``, an int, a list of device indices, or ``-1``; one device is used per process.
    benchmark
        Set ``torch.backends.cudnn.benchmark``.
    check_val_every_n_epoch
        Run validation every this many epochs; ``None`` means never, unless early stopping,
        checkpointing or the learning-rate monitor needs it (then every epoch).
    max_epochs
        Number of epochs.
    default_root_dir
        Directory for logs (defaults to ``settings.logging_dir``).
    enable_checkpointing
        Add a :class:`~scvi_rs.train.SaveCheckpoint` monitoring ``checkpointing_monitor``
        (unless ``callbacks`` has one): the best model is saved under ``settings.logging_dir``.
    checkpointing_monitor
        Metric of that checkpoint callback.
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
        ``None`` (or True) for the built-in history logger, False for none, or an object with
        Lightning's ``log_metrics(metrics, step)``.
    log_every_n_steps
        Step-level values (``kl_weight``) are recorded every this many steps.
    learning_rate_monitor
        Record the learning rate each epoch (``"lr-Adam"``).
    log_save_dir
        Directory where the built-in logger writes ``history.pkl`` at the end.
    **kwargs
        ``gradient_clip_val``, ``gradient_clip_algorithm``, ``callbacks``, ``max_steps``,
        ``limit_train_batches``, ``limit_val_batches``, ``fast_dev_run`` (run that many
        batches, or 1 when True, of one epoch with no logging or checkpoints),
        ``strategy`` (``"ddp"`` or ``"ddp_find_unused_parameters_*"``: data-parallel training,
        one process per device, launched by ``torchrun``; or a resolved
        :class:`~scvi_rs.train.Strategy`), ``cuda_graph`` (default False: capture the
        training step, i.e. forward, loss, backward, clipping and optimizer step, in a CUDA
        graph and replay it for each minibatch; see :mod:`scvi_rs.train._cuda_graph` for the
        policy on the last, smaller minibatch. When the device is not CUDA, or the plan
        overrides ``training_step``, optimizes manually, is compiled or runs data-parallel,
        a warning says so and the step runs eagerly).
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
        self.fast_dev_run = kwargs.pop("fast_dev_run", False)
        self.cuda_graph = bool(kwargs.pop("cuda_graph", False))
        callbacks = list(kwargs.pop("callbacks", None) or [])
        strategy = kwargs.pop("strategy", "auto")
        precision = kwargs.pop("precision", None)
        if precision not in (None, 32, "32", "32-true"):
            raise NotImplementedError(f"precision={precision!r} is not supported; use 32.")
        val_check_interval = kwargs.pop("val_check_interval", None)
        if val_check_interval not in (None, 1, 1.0):
            raise NotImplementedError(
                f"val_check_interval={val_check_interval!r} is not supported: validation "
                "runs at the end of an epoch (use check_val_every_n_epoch)."
            )
        if kwargs.pop("accumulate_grad_batches", 1) != 1:
            raise NotImplementedError("accumulate_grad_batches other than 1 is not supported.")
        for key in sorted(set(kwargs) & _IGNORED_LIGHTNING_KWARGS):
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
        if isinstance(self.fast_dev_run, bool) or self.fast_dev_run is None:
            self.fast_dev_run = int(bool(self.fast_dev_run))
        if not isinstance(self.fast_dev_run, int) or self.fast_dev_run < 0:
            raise ValueError(
                f"fast_dev_run must be a bool or an int >= 0, got {self.fast_dev_run!r}."
            )

        self.strategy = (
            strategy
            if isinstance(strategy, Strategy)
            else Strategy.resolve(accelerator, devices, strategy)
        )
        if self.root_device.type == "cuda":
            torch.backends.cudnn.benchmark = benchmark

        callbacks = self._standard_callbacks(
            callbacks,
            early_stopping=early_stopping,
            early_stopping_kwargs={
                "monitor": early_stopping_monitor,
                "min_delta": early_stopping_min_delta,
                "patience": early_stopping_patience,
                "mode": early_stopping_mode,
                "warmup_epochs": early_stopping_warmup_epochs,
            },
            enable_checkpointing=enable_checkpointing,
            checkpointing_monitor=checkpointing_monitor,
            learning_rate_monitor=learning_rate_monitor,
        )
        validation_needed = (
            early_stopping
            or learning_rate_monitor
            or any(isinstance(c, SaveCheckpoint) for c in callbacks)
        )
        if check_val_every_n_epoch is None:
            check_val_every_n_epoch = 1 if validation_needed else sys.maxsize
        if check_val_every_n_epoch < 1:
            raise ValueError("check_val_every_n_epoch must be a positive int or None.")
        self.callbacks: list[Any] = callbacks
        self.check_val_every_n_epoch = check_val_every_n_epoch
        self.val_check_interval = 1.0
        self.max_epochs = int(max_epochs)
        if self.fast_dev_run:
            n = self.fast_dev_run
            self.max_epochs, self.max_steps = 1, n
            self.limit_train_batches = self.limit_val_batches = n
            self.check_val_every_n_epoch = 1
        self.default_root_dir = default_root_dir or str(settings.logging_dir)
        self.log_every_n_steps = max(int(log_every_n_steps), 1)
        self.enable_progress_bar = (
            bool(enable_progress_bar) and progress_bar_refresh_rate > 0 and self.is_global_zero
        )
        if self.fast_dev_run or logger is False:
            self.logger = None
        elif logger in (None, True):
            self.logger = SimpleLogger(save_dir=log_save_dir)
        else:
            self.logger = logger
        self.log_save_dir = log_save_dir
        self.enable_checkpointing = any(isinstance(c, SaveCheckpoint) for c in callbacks)

        self.scvi_model: Any = None
        self.lightning_module: TrainingPlan | None = None
        self.datamodule: Any = None
        self.train_dataloader: Any = None
        self.val_dataloaders: Any = None
        self.num_training_batches: int | float = 0
        self.num_val_batches: list[int] = []
        self.ckpt_path: str | None = None
        self.state = TrainerState()
        self.fit_loop = FitLoopState()
        self._logger_connector = LoggerConnector(self)
        self.current_hook: str | None = None
        self.current_epoch = 0
        self.global_step = 0
        self.should_stop = False
        self.interrupted = False
        self.callback_metrics: dict[str, torch.Tensor] = {}
        self.optimizers: list[torch.optim.Optimizer] = []
        self.lr_scheduler_configs: list[LRSchedulerConfig] = []
        self._step_values = StepValues()
        self._per_step_names: set[str] = set()
        self._transfer: Callable[[Any, int], Any] = lambda batch, idx: batch
        self._graph_step: CudaGraphStep | None = None
        # counts of the last fit's captured steps (captures, replays, ...), with cuda_graph=True
        self.cuda_graph_stats: dict[str, int] = {}

    @staticmethod
    def _standard_callbacks(
        callbacks: list[Any],
        *,
        early_stopping: bool,
        early_stopping_kwargs: dict[str, Any],
        enable_checkpointing: bool,
        checkpointing_monitor: str,
        learning_rate_monitor: bool,
    ) -> list[Any]:
        if early_stopping:
            callbacks.append(LoudEarlyStopping(**early_stopping_kwargs))
        if enable_checkpointing and not any(isinstance(c, SaveCheckpoint) for c in callbacks):
            callbacks.append(SaveCheckpoint(monitor=checkpointing_monitor))
        if learning_rate_monitor and not any(
            isinstance(c, LearningRateMonitor) for c in callbacks
        ):
            callbacks.append(LearningRateMonitor())
        return callbacks

    # -- where training runs ---------------------------------------------------------------
    @property
    def root_device(self) -> torch.device:
        """The device the module trains on."""
        return self.strategy.root_device

    @property
    def device(self) -> torch.device:
        """The device the module trains on (same as :attr:`root_device`)."""
        return self.strategy.root_device

    @property
    def accelerator(self) -> str:
        """``"cpu"`` or ``"gpu"``."""
        return self.strategy.accelerator

    @property
    def device_ids(self) -> list[int]:
        """The device indices named by ``devices``."""
        return self.strategy.device_indices

    @property
    def num_devices(self) -> int:
        """Number of devices of this process (one)."""
        return 1

    @property
    def world_size(self) -> int:
        """Number of processes training together."""
        return self.strategy.world_size

    @property
    def global_rank(self) -> int:
        """Rank of this process."""
        return self.strategy.global_rank

    @property
    def local_rank(self) -> int:
        """Rank of this process on its node."""
        return self.strategy.local_rank

    @property
    def is_global_zero(self) -> bool:
        """Whether this process reports and writes files."""
        return self.strategy.is_global_zero

    # -- what the trainer is doing ---------------------------------------------------------
    @property
    def training(self) -> bool:
        """Whether the training part of an epoch is running."""
        return self.state.stage == "train"

    @property
    def validating(self) -> bool:
        """Whether a validation pass is running."""
        return self.state.stage == "validate"

    @property
    def sanity_checking(self) -> bool:
        """Always False: no sanity validation is run."""
        return False

    @property
    def in_training_step(self) -> bool:
        """Whether the running hook is part of a training step (``log`` defaults per step)."""
        return self.current_hook in _TRAINING_STEP_HOOKS

    @property
    def enable_validation(self) -> bool:
        """Whether there is validation data."""
        return sum(self.num_val_batches) > 0

    @property
    def model(self) -> TrainingPlan | None:
        """The training plan being fitted (Lightning's ``trainer.model``)."""
        return self.lightning_module

    @property
    def _model(self) -> Any:
        # scvi-tools' callbacks reach the whole model through `trainer._model`
        return self.scvi_model

    @_model.setter
    def _model(self, model: Any) -> None:
        self.scvi_model = model

    @property
    def loggers(self) -> list[Any]:
        """The loggers (none or one)."""
        return [] if self.logger is None else [self.logger]

    @property
    def early_stopping_callback(self) -> LoudEarlyStopping | None:
        """The early-stopping callback, if any."""
        return next((c for c in self.callbacks if isinstance(c, LoudEarlyStopping)), None)

    @property
    def checkpoint_callbacks(self) -> list[Any]:
        """Callbacks that save checkpoints."""
        return [c for c in self.callbacks if hasattr(c, "best_model_path")]

    @property
    def checkpoint_callback(self) -> Any:
        """The first checkpoint callback, if any."""
        callbacks = self.checkpoint_callbacks
        return callbacks[0] if callbacks else None

    # -- logging (used by the plan and callbacks) ------------------------------------------
    def log_step_value(self, name: str, value: torch.Tensor | float) -> None:
        """Record a step-level value of the running step.

        Training values are kept every ``log_every_n_steps`` steps, indexed by epoch (the last
        of an epoch wins); validation values every batch, indexed by the count of validation
        batches of this fit. Values stay on the device until the epoch's metrics are read.

        Parameters
        ----------
        name
            Metric name.
        value
            0-d tensor or number.
        """
        if self.validating:
            self._step_values.add(
                name, "step", self.fit_loop.epoch_loop.val_loop.batches_seen, value
            )
        elif (self.global_step + 1) % self.log_every_n_steps == 0 or self.should_stop:
            self._step_values.add(name, "epoch", self.current_epoch, value)

    def log_step_metrics(self, metrics: Mapping[str, torch.Tensor | float], step: int) -> None:
        """Record values at ``step`` (indexed by step), read at the end of the epoch.

        A name recorded this way keeps only its per-step series in the history.

        Parameters
        ----------
        metrics
            Metric name to 0-d tensor or number.
        step
            The step index.
        """
        for name, value in metrics.items():
            self._per_step_names.add(name)
            self._step_values.add(name, "step", step, value)

    def log_metrics(self, metrics: Mapping[str, float], step: int | None = None) -> None:
        """Send host values to the logger now (epoch-indexed when ``metrics`` has "epoch").

        Parameters
        ----------
        metrics
            Metric name to number, optionally with an ``"epoch"`` entry.
        step
            Step index of the values (default: the global step).
        """
        if not metrics:
            return
        step = self.global_step if step is None else step
        if self.logger is not None:
            self.logger.log_metrics(dict(metrics), step=step)
        for key, value in metrics.items():
            if key != "epoch":
                self.callback_metrics[key] = torch.tensor(float(value))

    def _log_epoch_metrics(self, logged: dict[str, float], callback: dict[str, float]) -> None:
        if logged and self.logger is not None:
            self.logger.log_metrics({**logged, "epoch": self.current_epoch}, step=self.global_step)
        for key, value in callback.items():
            self.callback_metrics[key] = torch.tensor(value)

    def _flush_step_values(self) -> None:
        last: dict[str, float] = {}
        for name, index_name, index, value in self._step_values.drain():
            if index_name == "epoch" and name in self._per_step_names:
                continue
            if self.logger is not None:
                if index_name == "epoch":
                    self.logger.log_metrics({name: value, "epoch": index}, step=self.global_step)
                else:
                    self.logger.log_metrics({name: value}, step=index)
            last[name] = value
        for name, value in last.items():
            self.callback_metrics[name] = torch.tensor(value)

    # -- hooks -----------------------------------------------------------------------------
    def _call_callbacks(self, hook: str, plan: TrainingPlan, *args: Any) -> None:
        for callback in self.callbacks:
            method = getattr(callback, hook, None)
            if callable(method):
                method(self, plan, *args)

    def _call_plan(self, hook: str, plan: TrainingPlan, *args: Any) -> Any:
        method = getattr(plan, hook, None)
        if not callable(method):
            return None
        previous, self.current_hook = self.current_hook, hook
        try:
            return method(*args)
        finally:
            self.current_hook = previous

    def _call_hooks(self, hook: str, plan: TrainingPlan, *args: Any) -> Any:
        """Callbacks first, then the plan, as Lightning does."""
        self._call_callbacks(hook, plan, *args)
        return self._call_plan(hook, plan, *args)

    # -- the loop ------------------------------------------------------------------------
    def fit(
        self,
        model: TrainingPlan,
        train_dataloaders: Any = None,
        val_dataloaders: Iterable | None = None,
        datamodule: Any = None,
        ckpt_path: str | os.PathLike | None = None,
        weights_only: bool | None = None,
    ) -> None:
        """Train ``model`` (a training plan).

        Parameters
        ----------
        model
            The plan providing ``training_step``, ``validation_step`` and optimizers.
        train_dataloaders
            Loader of the training batches, or a data module (as Lightning accepts).
        val_dataloaders
            Loader of the validation batches.
        datamodule
            An object with ``train_dataloader()`` (and optionally ``setup``,
            ``val_dataloader`` and the batch-transfer hooks), e.g. a
            :class:`~scvi_rs.dataloaders.DataSplitter`.
        ckpt_path
            A checkpoint written by :meth:`save_checkpoint` (or by Lightning) to resume from:
            the weights, optimizer and scheduler states, progress and callback states are
            restored, and training resumes after the last epoch whose batches had all run.
        weights_only
            Accepted for compatibility; checkpoints are always loaded with
            ``torch.load(weights_only=True)``.
        """
        if datamodule is None and callable(getattr(train_dataloaders, "train_dataloader", None)):
            datamodule, train_dataloaders = train_dataloaders, None
        if datamodule is None and train_dataloaders is None:
            raise ValueError("Trainer.fit needs a datamodule or train_dataloaders.")
        plan = model
        plan.trainer = self
        self.lightning_module = plan
        self.datamodule = datamodule
        self.ckpt_path = None if ckpt_path is None else os.fspath(ckpt_path)
        self.state = TrainerState(fn="fit", status="running")
        self.should_stop = False
        self.interrupted = False
        single_process_forward = plan.forward_module
        try:
            self._run_fit(plan, train_dataloaders, val_dataloaders)
        except BaseException as exception:
            self.interrupted = isinstance(exception, KeyboardInterrupt)
            self.state.status = "interrupted" if self.interrupted else "failed"
            self.state.stage = None
            self._call_callbacks("on_exception", plan, exception)
            on_exception = getattr(datamodule, "on_exception", None)
            if callable(on_exception):
                on_exception(exception)
            self._teardown(plan, "failed")
            raise
        finally:
            plan.forward_module = single_process_forward
            self._release_graph_step()
        self.state.status = "finished"
        self._teardown(plan, "success")

    def _teardown(self, plan: TrainingPlan, status: str) -> None:
        self.state.stage = None
        self._call_hooks("teardown", plan, "fit")
        if self.logger is not None and callable(getattr(self.logger, "finalize", None)):
            self.logger.finalize(status)

    def _release_graph_step(self) -> None:
        if self._graph_step is not None:
            self.cuda_graph_stats = dict(self._graph_step.stats)
            self._graph_step.release()
            self._graph_step = None

    def _loaders(self, train: Any, val: Any) -> tuple[Any, Any]:
        datamodule = self.datamodule
        if datamodule is None:
            return train, val
        setup = getattr(datamodule, "setup", None)
        if callable(setup):
            setup(stage="fit")
        train = datamodule.train_dataloader()
        val_dataloader = getattr(datamodule, "val_dataloader", None)
        val = val_dataloader() if callable(val_dataloader) else None
        return train, val

    def _run_fit(self, plan: TrainingPlan, train: Any, val: Any) -> None:
        train, val = self._loaders(train, val)
        self.train_dataloader, self.val_dataloaders = train, val
        n_train = len(train) if hasattr(train, "__len__") else float("inf")
        self.num_training_batches = (
            _limit(n_train, self.limit_train_batches) if n_train != float("inf") else n_train
        )
        n_val = len(val) if val is not None and hasattr(val, "__len__") else 0
        self.num_val_batches = [_limit(n_val, self.limit_val_batches) if val is not None else 0]
        self._transfer = self._transfer_hooks(plan)

        plan.module.to(self.root_device)
        plan.forward_module = self.strategy.wrap_module(plan.forward_module)
        self._call_hooks("setup", plan, "fit")
        self._configure_optimizers(plan)
        start_epoch = 0
        if self.ckpt_path is not None:
            start_epoch = self._restore_checkpoint(plan, self.ckpt_path)
        self.cuda_graph_stats = {}
        if self.cuda_graph:
            self._graph_step = make_graph_step(self, plan, self.optimizers)
        self._call_hooks("on_fit_start", plan)
        self._call_hooks("on_train_start", plan)

        bar = tqdm(
            range(start_epoch, self.max_epochs),
            desc="Training",
            disable=not self.enable_progress_bar,
            file=sys.stderr,
            dynamic_ncols=True,
        )
        try:
            for epoch in bar:
                bar.set_description(f"Epoch {epoch + 1}/{self.max_epochs}")
                train_loss = self._run_epoch(plan, epoch, train, val)
                if train_loss is not None:
                    bar.set_postfix(train_loss=f"{train_loss:.3g}", refresh=False)
                if self.should_stop or (0 <= self.max_steps <= self.global_step):
                    break
        finally:
            bar.close()
        self.state.stage = None
        self._call_hooks("on_train_end", plan)
        self._call_hooks("on_fit_end", plan)

    def _run_epoch(self, plan: TrainingPlan, epoch: int, train: Any, val: Any) -> float | None:
        self.current_epoch = plan.current_epoch = epoch
        self.fit_loop.epoch_progress.started = epoch + 1
        self.state.stage = "train"
        self._call_hooks("on_train_epoch_start", plan)
        for loader in (train, val):
            set_epoch = getattr(getattr(loader, "sampler", None), "set_epoch", None)
            if callable(set_epoch):
                set_epoch(epoch)
        self._train_batches(plan, train)
        self.fit_loop.epoch_progress.processed = epoch + 1

        ran_validation = False
        if val is not None and (epoch + 1) % self.check_val_every_n_epoch == 0:
            ran_validation = self._validate(plan, val)
            self.state.stage = "train"

        self._call_plan("on_train_epoch_end", plan)
        self._flush_step_values()
        logged, callback = plan.flush_epoch_metrics("train")
        self._log_epoch_metrics(logged, callback)
        self._call_callbacks("on_train_epoch_end", plan)
        if ran_validation:
            self._step_schedulers()
        self.fit_loop.epoch_progress.completed = epoch + 1
        self.current_epoch = epoch + 1
        loss = callback.get("train_loss")
        return loss

    def _transfer_hooks(self, plan: TrainingPlan) -> Callable[[Any, int], Any]:
        """The three batch-transfer hooks, taken from the data module, else from the plan."""

        def pick(name: str, default: Callable[..., Any]) -> Callable[..., Any]:
            for owner in (self.datamodule, plan):
                method = getattr(owner, name, None) if owner is not None else None
                if callable(method):
                    return method
            return default

        before = pick("on_before_batch_transfer", lambda batch, idx: batch)
        move = pick(
            "transfer_batch_to_device", lambda batch, device, idx: _move_to_device(batch, device)
        )
        after = pick("on_after_batch_transfer", lambda batch, idx: batch)
        device = self.root_device

        def transfer(batch: Any, dataloader_idx: int) -> Any:
            batch = before(batch, dataloader_idx)
            batch = move(batch, device, dataloader_idx)
            return after(batch, dataloader_idx)

        return transfer

    def _train_batches(self, plan: TrainingPlan, loader: Iterable) -> None:
        plan.module.train()
        optimizer = self.optimizers[0] if self.optimizers else None
        params = (
            [p for group in optimizer.param_groups for p in group["params"]] if optimizer else []
        )
        batch_progress = self.fit_loop.epoch_loop.batch_progress
        n_batches = self.num_training_batches
        for batch_idx, batch in enumerate(loader):
            if batch_idx >= n_batches:
                break
            batch_progress.is_last_batch = batch_idx == n_batches - 1
            batch = self._transfer(batch, 0)
            if self._call_hooks("on_train_batch_start", plan, batch, batch_idx) == -1:
                break
            graph_step = self._graph_step
            loss = graph_step.step(batch, batch_idx) if graph_step is not None else None
            if loss is not None:  # the captured step also ran the optimizer
                outputs = loss
            else:
                outputs = self._call_plan("training_step", plan, batch, batch_idx)
                loss = _step_loss(outputs)
                if plan.automatic_optimization and loss is not None and optimizer is not None:
                    self._optimizer_step(plan, optimizer, params, loss)
            self.global_step += 1
            self.fit_loop.epoch_loop._batches_that_stepped = self.global_step
            plan.global_step = self.global_step
            batch_outputs = None if loss is None else {"loss": loss.detach()}
            if isinstance(outputs, Mapping):
                batch_outputs = {**outputs, "loss": loss.detach()}
            self._call_callbacks("on_train_batch_end", plan, batch_outputs, batch, batch_idx)
            self._call_plan("on_train_batch_end", plan, batch_outputs, batch, batch_idx)
            if self.should_stop or 0 <= self.max_steps <= self.global_step:
                break

    def _optimizer_step(
        self,
        plan: TrainingPlan,
        optimizer: torch.optim.Optimizer,
        params: list[torch.Tensor],
        loss: torch.Tensor,
    ) -> None:
        self._call_hooks("on_before_zero_grad", plan, optimizer)
        optimizer.zero_grad(set_to_none=True)
        self._call_hooks("on_before_backward", plan, loss)
        loss.backward()
        self._call_hooks("on_after_backward", plan)
        if self.gradient_clip_val:
            if self.gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, self.gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, self.gradient_clip_val)
        self._call_hooks("on_before_optimizer_step", plan, optimizer)
        optimizer.step()

    def _validate(self, plan: TrainingPlan, loader: Iterable) -> bool:
        self.state.stage = "validate"
        val_loop = self.fit_loop.epoch_loop.val_loop
        self._call_hooks("on_validation_start", plan)
        self._call_hooks("on_validation_epoch_start", plan)
        plan.module.eval()
        ran = False
        n_batches = self.num_val_batches[0]
        try:
            with torch.no_grad():
                for batch_idx, batch in enumerate(loader):
                    if batch_idx >= n_batches:
                        break
                    batch = self._transfer(batch, 0)
                    self._call_hooks("on_validation_batch_start", plan, batch, batch_idx, 0)
                    outputs = self._call_plan("validation_step", plan, batch, batch_idx)
                    self._call_hooks("on_validation_batch_end", plan, outputs, batch, batch_idx, 0)
                    val_loop.batches_seen += 1
                    ran = True
        finally:
            plan.module.train()
        self._call_plan("on_validation_epoch_end", plan)
        self._flush_step_values()
        logged, callback = plan.flush_epoch_metrics("validation")
        self._log_epoch_metrics(logged, callback)
        self._call_callbacks("on_validation_epoch_end", plan)
        val_loop._has_run = val_loop._has_run or ran
        self._call_hooks("on_validation_end", plan)
        return ran

    def _configure_optimizers(self, plan: TrainingPlan) -> None:
        config = plan.configure_optimizers()
        self.optimizers, self.lr_scheduler_configs = [], []
        if config is None:
            return
        if isinstance(config, torch.optim.Optimizer):
            self.optimizers = [config]
            return
        if isinstance(config, Mapping):
            self.optimizers = [config["optimizer"]]
            scheduler = config.get("lr_scheduler")
            if scheduler is not None:
                if not isinstance(scheduler, Mapping):
                    scheduler = {"scheduler": scheduler, "monitor": config.get("monitor")}
                self.lr_scheduler_configs.append(LRSchedulerConfig(**scheduler))
            return
        if isinstance(config, (list, tuple)) and config:
            self.optimizers = list(config)
            return
        raise TypeError(
            "configure_optimizers must return an optimizer, a dict with 'optimizer', a list of "
            f"optimizers or None; got {type(config).__name__}."
        )

    def _step_schedulers(self) -> None:
        for config in self.lr_scheduler_configs:
            scheduler = config.scheduler
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                if config.monitor not in self.callback_metrics:
                    raise RuntimeError(
                        f"ReduceLROnPlateau conditioned on metric {config.monitor!r}, which is "
                        f"not available. Available metrics are: {sorted(self.callback_metrics)}."
                    )
                scheduler.step(float(self.callback_metrics[config.monitor]))
            else:
                scheduler.step()

    # -- checkpoints -----------------------------------------------------------------------
    def save_checkpoint(
        self,
        filepath: str | os.PathLike,
        weights_only: bool = False,
        storage_options: Any = None,
    ) -> None:
        """Write a checkpoint of the running fit (Lightning's layout) to ``filepath``.

        The file holds ``epoch``, ``global_step``, ``state_dict`` (the plan's weights),
        ``loops`` (progress) and, unless ``weights_only``, ``callbacks`` (their states),
        ``optimizer_states`` and ``lr_schedulers``. Only rank 0 writes.

        Parameters
        ----------
        filepath
            Path of the file.
        weights_only
            Leave out the optimizer, scheduler and callback states.
        storage_options
            Not supported; must be None.
        """
        if storage_options is not None:
            raise NotImplementedError("storage_options is not supported.")
        plan = self.lightning_module
        if plan is None:
            raise RuntimeError("save_checkpoint needs a running fit (call Trainer.fit).")
        checkpoint: dict[str, Any] = {
            "epoch": self.current_epoch,
            "global_step": self.global_step,
            "state_dict": plan.state_dict(),
            "loops": {"fit_loop": self.fit_loop.state_dict()},
        }
        if not weights_only:
            checkpoint["callbacks"] = {
                callback.state_key: state
                for callback in self.callbacks
                if hasattr(callback, "state_dict") and (state := callback.state_dict())
            }
            checkpoint["optimizer_states"] = [opt.state_dict() for opt in self.optimizers]
            checkpoint["lr_schedulers"] = [
                config.scheduler.state_dict() for config in self.lr_scheduler_configs
            ]
            self._call_callbacks("on_save_checkpoint", plan, checkpoint)
        self._call_plan("on_save_checkpoint", plan, checkpoint)
        if self.is_global_zero:
            directory = os.path.dirname(os.fspath(filepath))
            if directory:
                os.makedirs(directory, exist_ok=True)
            torch.save(checkpoint, filepath)
        self.strategy.barrier()

    def _restore_checkpoint(self, plan: TrainingPlan, path: str) -> int:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Checkpoint file {path!r} (ckpt_path) does not exist.")
        checkpoint = torch.load(path, map_location=self.root_device, weights_only=True)
        if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
            raise ValueError(f"{path!r} is not a training checkpoint: it has no 'state_dict'.")
        plan.load_state_dict(checkpoint["state_dict"])
        for optimizer, state in zip(
            self.optimizers, checkpoint.get("optimizer_states", []), strict=False
        ):
            optimizer.load_state_dict(state)
        for config, state in zip(
            self.lr_scheduler_configs, checkpoint.get("lr_schedulers", []), strict=False
        ):
            config.scheduler.load_state_dict(state)
        self.global_step = plan.global_step = int(checkpoint.get("global_step", 0))
        self.fit_loop.epoch_loop._batches_that_stepped = self.global_step
        progress = (
            checkpoint.get("loops", {})
            .get("fit_loop", {})
            .get("epoch_progress", {})
            .get("current")
        )
        # resume after the last epoch whose batches all ran
        start_epoch = int(progress["processed"]) if progress else int(checkpoint.get("epoch", 0))
        self.fit_loop.epoch_progress.processed = self.fit_loop.epoch_progress.completed = (
            start_epoch
        )
        self.current_epoch = plan.current_epoch = start_epoch
        states = checkpoint.get("callbacks", {})
        for callback in self.callbacks:
            key = getattr(callback, "state_key", None)
            if key in states and hasattr(callback, "load_state_dict"):
                callback.load_state_dict(states[key])
        self._call_callbacks("on_load_checkpoint", plan, checkpoint)
        self._call_plan("on_load_checkpoint", plan, checkpoint)
        return start_epoch


__all__ = ["Callback", "LRSchedulerConfig", "Trainer", "TrainerState"]
