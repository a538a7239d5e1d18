"""The training step captured in a CUDA graph (``model.train(..., cuda_graph=True)``).

One graph holds the forward pass, the loss, the backward pass, gradient clipping and the
optimizer step; each full-size minibatch is copied into static input buffers and the graph
is replayed, one launch instead of hundreds of kernel launches from Python. The first
steps run eagerly on a side stream (warm-up: lazily created optimizer state and cuBLAS
workspaces must exist before capture). Logged values stay device tensors, accumulated by
the plan's epoch metrics and read once per epoch, as in the eager loop.

The last, smaller minibatch of an epoch:

- is padded to the static size (its first row repeated) with a per-cell mask that leaves
  the padding out of the loss, when the module has no batch norm and its ``loss`` takes a
  ``mask``: the loss, its gradients and the logged sums are those of the plain step;
- runs uncaptured (the plain step, exact by construction) otherwise: batch norm computes
  its statistics over every row of the batch, padding included.

Graph replays use the learning rates in force at capture; when a scheduler changes one,
the step is captured again.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any

import torch

from .._settings import settings

if TYPE_CHECKING:
    from ..module.base import LossOutput
    from ._trainer import Trainer
    from ._trainingplans import TrainingPlan

# Eager steps before the capture (on a side stream, as torch's CUDA graph recipe asks).
N_WARMUP_STEPS = 3
# Hooks the trainer calls inside an eager step; a captured step runs them only once.
_IN_STEP_HOOKS = (
    "on_before_zero_grad",
    "on_before_backward",
    "on_after_backward",
    "on_before_optimizer_step",
)


def pad_batch(
    batch: Mapping[str, torch.Tensor], batch_size: int
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Pad a minibatch to ``batch_size`` rows, with a mask marking its real cells.

    The padding rows repeat the first cell (real data keep every term of the loss finite,
    where zero rows would give ``log(0)``); a loss that multiplies its per-cell terms by the
    mask and divides by the mask's sum is then that of the unpadded minibatch.

    Parameters
    ----------
    batch
        Tensors keyed by registry key, all with the same number of rows.
    batch_size
        Rows of the padded minibatch; at least the rows of ``batch``.

    Returns
    -------
    tuple
        The padded tensors (new tensors, on the batch's device) and a float32 mask of shape
        ``(batch_size,)``: 1 for the cells of ``batch``, 0 for the padding.
    """
    n_rows = _n_rows(batch)
    if n_rows is None:
        raise ValueError("pad_batch needs a non-empty mapping of tensors with equal row counts.")
    if batch_size < n_rows:
        raise ValueError(f"batch_size={batch_size} is smaller than the batch's {n_rows} rows.")
    padded = {
        key: torch.empty((batch_size, *value.shape[1:]), dtype=value.dtype, device=value.device)
        for key, value in batch.items()
    }
    device = next(iter(batch.values())).device
    mask = torch.empty(batch_size, dtype=torch.float32, device=device)
    _copy_padded(batch, n_rows, padded, mask)
    return padded, mask


def _n_rows(batch: Any) -> int | None:
    """Rows of a mapping of tensors that all have the same first dimension, else None."""
    if not isinstance(batch, Mapping) or not batch:
        return None
    rows = set()
    for value in batch.values():
        if not isinstance(value, torch.Tensor) or value.dim() == 0:
            return None
        rows.add(value.shape[0])
    return rows.pop() if len(rows) == 1 else None


def _copy_padded(
    batch: Mapping[str, torch.Tensor],
    n_rows: int,
    out: dict[str, torch.Tensor],
    mask: torch.Tensor | None,
) -> None:
    """Copy ``batch`` into the first rows of ``out``; repeat its first row below (no host reads)."""
    size = next(iter(out.values())).shape[0]
    for key, target in out.items():
        source = batch[key]
        target[:n_rows].copy_(source, non_blocking=True)
        if n_rows < size:
            target[n_rows:].copy_(source[:1].expand(size - n_rows, *source.shape[1:]))
    if mask is not None:
        mask[:n_rows].fill_(1.0)
        mask[n_rows:].fill_(0.0)


def _has_batch_norm(module: torch.nn.Module) -> bool:
    return any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in module.modules())


def _loss_takes_mask(module: torch.nn.Module) -> bool:
    # modules whose loss honours a per-cell `loss_mask` attribute (scvi_rs' VAE)
    return callable(getattr(module, "loss", None)) and hasattr(type(module), "loss_mask")


@contextlib.contextmanager
def loss_masked(module: torch.nn.Module, mask: torch.Tensor | None) -> Iterator[None]:
    """Run ``module``'s loss with the per-cell ``mask`` (its ``loss_mask``) for a while."""
    if mask is None:
        yield
        return
    module.loss_mask = mask
    try:
        yield
    finally:
        module.loss_mask = None


def _overrides(owner: Any, hook: str) -> bool:
    """Whether ``owner`` does something in ``hook`` (the Callback bases' hooks are no-ops)."""
    method = getattr(type(owner), hook, None)
    if method is None:
        return False
    return getattr(method, "__qualname__", "") != f"Callback.{hook}"


def _device_reason(trainer: Trainer) -> str | None:
    device = trainer.root_device
    if device.type != "cuda" or not torch.cuda.is_available():
        return f"the training device is {device}, not a CUDA device"
    return None


def graph_unsupported_reason(
    trainer: Trainer, plan: TrainingPlan, optimizers: list[torch.optim.Optimizer]
) -> str | None:
    """Why the training step of ``plan`` cannot be captured in a CUDA graph, or None.

    Parameters
    ----------
    trainer
        The trainer running the fit.
    plan
        The training plan.
    optimizers
        The optimizers of the plan (from ``configure_optimizers``).

    Returns
    -------
    str or None
        A reason, phrased to follow "runs eagerly: ", or None when the step can be captured.
    """
    from ._trainingplans import TrainingPlan

    reason = _device_reason(trainer)
    if reason is not None:
        return reason
    if trainer.strategy.is_distributed:
        return "data-parallel (DDP) training is not captured"
    if not plan.automatic_optimization:
        return "the plan does manual optimization"
    if type(plan).training_step is not TrainingPlan.training_step:
        return f"{type(plan).__name__} overrides training_step"
    if type(plan).forward is not TrainingPlan.forward or plan.forward_module is not plan.module:
        return "the plan's forward is compiled or wrapped (torch.compile captures its own graphs)"
    if len(optimizers) != 1:
        return f"the plan has {len(optimizers)} optimizers, not one"
    if any("capturable" not in group for group in optimizers[0].param_groups):
        return f"{type(optimizers[0]).__name__} has no 'capturable' option"
    for owner in (plan, *trainer.callbacks):
        for hook in _IN_STEP_HOOKS:
            if _overrides(owner, hook):
                return f"{type(owner).__name__} runs code in {hook}"
    return None


def make_graph_step(
    trainer: Trainer, plan: TrainingPlan, optimizers: list[torch.optim.Optimizer]
) -> CudaGraphStep | None:
    """A :class:`CudaGraphStep` for this fit, or None (with a warning) when it cannot be used.

    Parameters
    ----------
    trainer
        The trainer running the fit.
    plan
        The training plan.
    optimizers
        The optimizers of the plan.

    Returns
    -------
    CudaGraphStep or None
        None when :func:`graph_unsupported_reason` gives a reason; the step then runs eagerly.
    """
    reason = graph_unsupported_reason(trainer, plan, optimizers)
    if reason is not None:
        warnings.warn(
            f"cuda_graph=True: the training step runs eagerly: {reason}.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
        return None
    return CudaGraphStep(trainer, plan, optimizers[0], capture=True)


class CudaGraphStep:
    """The training step of a plan, on static buffers, replayed from a CUDA graph.

    Parameters
    ----------
    trainer
        The trainer (its gradient clipping settings and logging are used).
    plan
        A plan whose ``training_step`` is :meth:`TrainingPlan.training_step`.
    optimizer
        The plan's optimizer; its parameter groups are made ``capturable`` for the fit.
    capture
        Capture and replay a graph (CUDA only). Without it the same static-buffer step, with
        the same padding policy, runs eagerly (how the step is checked on a CPU).

    Attributes
    ----------
    stats
        Counts of ``captures``, ``replays``, ``warmup_steps``, ``padded_steps`` and
        ``eager_steps`` (batches left to the plain step), for benchmarks and tests.
    """

    def __init__(
        self,
        trainer: Trainer,
        plan: TrainingPlan,
        optimizer: torch.optim.Optimizer,
        capture: bool = True,
    ) -> None:
        self.trainer = trainer
        self.plan = plan
        self.optimizer = optimizer
        self.capture = capture
        self.pads = not _has_batch_norm(plan.module) and _loss_takes_mask(plan.module)
        self.stats = dict.fromkeys(
            ("captures", "replays", "warmup_steps", "padded_steps", "eager_steps"), 0
        )
        self._device = trainer.root_device
        self._params = [p for group in optimizer.param_groups for p in group["params"]]
        self._capturable_before = [group["capturable"] for group in optimizer.param_groups]
        self._static: dict[str, torch.Tensor] | None = None
        self._mask: torch.Tensor | None = None
        self._kl_weight = torch.zeros((), dtype=torch.float32, device=self._device)
        self._graph: torch.cuda.CUDAGraph | None = None
        self._graph_output: LossOutput | None = None
        self._graph_lrs: tuple[Any, ...] = ()
        self._warmup_left = N_WARMUP_STEPS
        self._side_stream = torch.cuda.Stream(self._device) if capture else None
        if capture:
            self._make_capturable()

    @property
    def batch_size(self) -> int | None:
        """Rows of the static buffers (the first minibatch's), None before the first step."""
        return None if self._static is None else next(iter(self._static.values())).shape[0]

    # -- what the trainer calls -----------------------------------------------------------
    def step(self, batch: Any, batch_idx: int) -> torch.Tensor | None:
        """Run one training step on ``batch``, or return None to leave it to the plain step.

        Parameters
        ----------
        batch
            The minibatch, on the training device.
        batch_idx
            Its index in the epoch.

        Returns
        -------
        torch.Tensor or None
            The (detached) loss of the step, or None when the batch does not fit the static
            buffers (other keys, dtypes or trailing shapes, more rows, or fewer rows with
            batch norm): the trainer then runs the plain step.
        """
        n_rows = _n_rows(batch)
        if n_rows is None:
            self.stats["eager_steps"] += 1
            return None
        if self._static is None:
            if n_rows < 2:
                self.stats["eager_steps"] += 1
                return None
            self._allocate(batch)
        if not self._fits(batch, n_rows):
            self.stats["eager_steps"] += 1
            return None
        if n_rows < self.batch_size:
            self.stats["padded_steps"] += 1
        _copy_padded(batch, n_rows, self._static, self._mask)
        kl_weight = self._current_kl_weight()
        if kl_weight is not None:
            self._kl_weight.fill_(kl_weight)
        if not self.capture:
            output = self._compute(zero_grad=True)
        elif self._warmup_left > 0:
            output = self._warmup()
        else:
            if self._graph is None or self._lrs() != self._graph_lrs:
                self._capture_graph()
            self._graph.replay()
            self.stats["replays"] += 1
            output = self._graph_output
        return self._log(output, n_rows, kl_weight)

    def release(self) -> None:
        """Free the graph and the static buffers; restore the optimizer's ``capturable``."""
        self._graph = self._graph_output = None
        self._static = self._mask = None
        for group, capturable in zip(
            self.optimizer.param_groups, self._capturable_before, strict=True
        ):
            group["capturable"] = capturable

    # -- buffers --------------------------------------------------------------------------
    def _allocate(self, batch: Mapping[str, torch.Tensor]) -> None:
        self._static = {key: torch.empty_like(value) for key, value in batch.items()}
        if self.pads:
            self._mask = torch.ones(
                _n_rows(batch), dtype=torch.float32, device=next(iter(batch.values())).device
            )

    def _fits(self, batch: Mapping[str, torch.Tensor], n_rows: int) -> bool:
        static = self._static
        if batch.keys() != static.keys() or n_rows > self.batch_size:
            return False
        if n_rows < self.batch_size and not self.pads:
            return False
        return all(
            value.dtype == static[key].dtype
            and value.device == static[key].device
            and value.shape[1:] == static[key].shape[1:]
            for key, value in batch.items()
        )

    # -- the step ------------------------------------------------------------------------
    def _current_kl_weight(self) -> float | None:
        if "kl_weight" not in self.plan.loss_kwargs:
            return None
        return self.plan.kl_weight

    def _loss_kwargs(self) -> dict[str, Any]:
        kwargs = dict(self.plan.loss_kwargs)
        if "kl_weight" in kwargs:
            kwargs["kl_weight"] = self._kl_weight
        return kwargs

    def _compute(self, zero_grad: bool) -> LossOutput:
        """Forward, loss, backward, clipping and the optimizer step on the static buffers."""
        if zero_grad:
            self.optimizer.zero_grad(set_to_none=True)
        with loss_masked(self.plan.module, self._mask):
            _, _, loss_output = self.plan.forward(self._static, loss_kwargs=self._loss_kwargs())
        loss_output.loss.backward()
        clip = self.trainer.gradient_clip_val
        if clip:
            if self.trainer.gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(self._params, clip)
            else:
                torch.nn.utils.clip_grad_norm_(self._params, clip)
        self.optimizer.step()
        return loss_output

    def _warmup(self) -> LossOutput:
        stream = self._side_stream
        stream.wait_stream(torch.cuda.current_stream(self._device))
        with torch.cuda.stream(stream):
            output = self._compute(zero_grad=True)
        torch.cuda.current_stream(self._device).wait_stream(stream)
        self._warmup_left -= 1
        self.stats["warmup_steps"] += 1
        return output

    def _capture_graph(self) -> None:
        self._graph = self._graph_output = None
        # the captured backward writes gradients it allocates itself; replays rewrite them
        self.optimizer.zero_grad(set_to_none=True)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            self._graph_output = self._compute(zero_grad=False)
        self._graph = graph
        self._graph_lrs = self._lrs()
        self.stats["captures"] += 1

    def _lrs(self) -> tuple[Any, ...]:
        # tensors compare by identity: comparing their values would read them to the host
        return tuple(
            id(group["lr"]) if isinstance(group["lr"], torch.Tensor) else group["lr"]
            for group in self.optimizer.param_groups
        )

    def _make_capturable(self) -> None:
        for group in self.optimizer.param_groups:
            group["capturable"] = True
            for param in group["params"]:
                state = self.optimizer.state.get(param, {})
                step = state.get("step")
                if isinstance(step, torch.Tensor) and step.device != param.device:
                    state["step"] = step.to(device=param.device, dtype=torch.float32)

    # -- metrics (what TrainingPlan.training_step logs, on this step's values) ------------
    def _log(self, output: LossOutput, n_rows: int, kl_weight: float | None) -> torch.Tensor:
        plan, trainer = self.plan, self.trainer
        values = self._detached(output, n_rows)
        previous, trainer.current_hook = trainer.current_hook, "training_step"
        try:
            if kl_weight is not None:
                plan.loss_kwargs["kl_weight"] = kl_weight
                plan.log("kl_weight", kl_weight, on_step=True, on_epoch=False)
            plan.log(
                "train_loss",
                values.loss,
                on_step=plan.on_step,
                on_epoch=plan.on_epoch,
                batch_size=values.n_obs_minibatch,
                prog_bar=True,
            )
            if plan.on_step:
                trainer.log_step_metrics({"train_loss_step": values.loss}, plan.global_step)
            plan.compute_and_log_metrics(values, None, "train")
        finally:
            trainer.current_hook = previous
        return values.loss

    def _detached(self, output: LossOutput, n_rows: int) -> LossOutput:
        """This step's scalars, copied out of the graph's outputs (the next replay rewrites them)."""
        values = copy.copy(output)
        for name in ("loss", "reconstruction_loss_sum", "kl_local_sum", "kl_global_sum"):
            value = getattr(values, name, None)
            if isinstance(value, torch.Tensor):
                setattr(values, name, value.detach().clone())
        values.extra_metrics = {
            key: value.detach().clone() if isinstance(value, torch.Tensor) else value
            for key, value in (output.extra_metrics or {}).items()
        }
        # the padding rows count for nothing: the step's weight is its real cells
        if output.n_obs_minibatch == self.batch_size:
            values.n_obs_minibatch = n_rows
        return values


__all__ = ["CudaGraphStep", "graph_unsupported_reason", "make_graph_step", "pad_batch"]
