"""Training plans of Pyro modules: ``LowLevelPyroTrainingPlan`` and ``PyroTrainingPlan``.

Both run in the plain torch :class:`~scvi_rs.train.Trainer`. ``LowLevelPyroTrainingPlan``
returns Pyro's differentiable ELBO and lets the trainer step a torch optimizer;
``PyroTrainingPlan`` steps Pyro's :class:`~pyro.infer.SVI` itself (manual optimisation),
so the trainer only counts its steps.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from ..module.base._pyro import require_pyro
from ._metrics import EpochAccumulator
from ._trainingplans import TrainingPlan

if TYPE_CHECKING:
    import pyro

    from ..module.base import PyroBaseModuleClass


def _model_takes_kl_weight(model: Any) -> bool:
    """Whether the Pyro model (a ``PyroModule`` or a callable) has a ``kl_weight`` argument."""
    from pyro.nn import PyroModule

    target = model.forward if isinstance(model, PyroModule) else model
    if not callable(target):
        return False
    try:
        return "kl_weight" in inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False


class LowLevelPyroTrainingPlan(TrainingPlan):
    """Train a Pyro module by back-propagating Pyro's differentiable ELBO.

    Each step returns the loss of ``loss_fn.differentiable_loss`` (model and guide on the
    minibatch); the trainer back-propagates it and steps a torch optimizer over the
    module's parameters. The epoch mean of the step losses is logged as ``elbo_train``.

    Parameters
    ----------
    pyro_module
        A :class:`~scvi_rs.module.base.PyroBaseModuleClass` with callable ``model`` and
        ``guide``.
    loss_fn
        A Pyro ELBO (subclass of :class:`~pyro.infer.ELBO`); :class:`~pyro.infer.Trace_ELBO`
        by default.
    optim
        A torch optimizer class; :class:`torch.optim.Adam` by default.
    optim_kwargs
        Keyword arguments of the optimizer; ``lr`` defaults to ``1e-3``.
    n_steps_kl_warmup
        KL warm-up length in steps, used when ``n_epochs_kl_warmup`` is None.
    n_epochs_kl_warmup
        KL warm-up length in epochs (takes precedence over ``n_steps_kl_warmup``).
    scale_elbo
        Factor on the ELBO (through :func:`pyro.poutine.scale`), against numerical trouble
        with very large ELBOs.
    max_kl_weight, min_kl_weight
        End points of the KL warm-up. The weight is passed to the model as ``kl_weight``
        when its signature has that argument.
    """

    def __init__(
        self,
        pyro_module: PyroBaseModuleClass,
        loss_fn: pyro.infer.ELBO | None = None,
        optim: type[torch.optim.Optimizer] | None = None,
        optim_kwargs: dict | None = None,
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = 400,
        scale_elbo: float = 1.0,
        max_kl_weight: float = 1.0,
        min_kl_weight: float = 1e-6,
    ) -> None:
        require_pyro(type(self).__name__)
        import pyro

        if min_kl_weight > max_kl_weight:
            raise ValueError(
                f"min_kl_weight={min_kl_weight} is larger than max_kl_weight={max_kl_weight}."
            )
        for role in ("model", "guide"):
            if not callable(getattr(pyro_module, role, None)):
                raise TypeError(
                    f"{type(self).__name__} needs a Pyro module with a callable `{role}`; "
                    f"{type(pyro_module).__name__}.{role} is not callable."
                )
        self._init_plan_state(pyro_module)
        self._n_obs_training: int | None = None

        optim_kwargs = dict(optim_kwargs) if isinstance(optim_kwargs, dict) else {}
        optim_kwargs.setdefault("lr", 1e-3)
        self.optim_kwargs = optim_kwargs
        self.loss_fn = pyro.infer.Trace_ELBO() if loss_fn is None else loss_fn
        self.optim = torch.optim.Adam if optim is None else optim
        self.n_steps_kl_warmup = n_steps_kl_warmup
        self.n_epochs_kl_warmup = n_epochs_kl_warmup
        self.max_kl_weight = max_kl_weight
        self.min_kl_weight = min_kl_weight
        self.scale_elbo = scale_elbo
        self.use_kl_weight = _model_takes_kl_weight(pyro_module.model)
        self.differentiable_loss_fn = self.loss_fn.differentiable_loss
        self.training_step_outputs: list[dict[str, torch.Tensor]] = []

    def _init_plan_state(self, module: PyroBaseModuleClass) -> None:
        """The state the trainer and the inherited logging read (TrainingPlan's own ``__init__``
        inspects a ``loss`` method, which Pyro modules do not have)."""
        self.module = module
        self.forward_module: Callable[..., Any] = module
        self.automatic_optimization = True
        self.current_epoch = 0
        self.global_step = 0
        self.trainer = None
        self._n_obs_validation: int | None = None
        self._epoch_metrics: dict[str, EpochAccumulator] = {}
        self._forked_names: dict[str, set[str]] = {}
        self.on_step = False
        self.on_epoch = True
        self.initialize_train_metrics()
        self.initialize_val_metrics()

    def scale_fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with its log densities scaled by ``scale_elbo`` (``fn`` itself at 1)."""
        if self.scale_elbo == 1:
            return fn
        import pyro

        return pyro.poutine.scale(fn, self.scale_elbo)

    # -- properties ----------------------------------------------------------------------
    @property
    def n_obs_training(self) -> int | None:
        """Number of training cells; also set as ``n_obs`` of the model and the guide."""
        return self._n_obs_training

    @n_obs_training.setter
    def n_obs_training(self, n_obs: int | None) -> None:
        # Pyro plates scale the minibatch log densities by n_obs / minibatch size
        if n_obs is not None:
            for role in ("model", "guide"):
                fn = getattr(self.module, role)
                if hasattr(fn, "n_obs"):
                    fn.n_obs = n_obs
        self._n_obs_training = n_obs

    @property
    def device(self) -> torch.device:
        """Where training runs: the trainer's device while fitting, else the module's."""
        if self.trainer is not None:
            return self.trainer.root_device
        return self.module.device

    def setup(self, stage: str) -> None:
        """Refuse data-parallel runs: Pyro's ELBO calls the model directly, so no wrapper
        could synchronise the processes' gradients."""
        trainer = self.trainer
        if trainer is not None and trainer.world_size > 1:
            raise NotImplementedError(
                f"{type(self).__name__} trains on one process; data-parallel (DDP) training "
                "of Pyro modules is not supported."
            )

    # -- steps ---------------------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call the module (its Pyro model)."""
        return self.forward_module(*args, **kwargs)

    __call__ = forward

    def _step_inputs(self, batch: dict[str, torch.Tensor]) -> tuple[tuple, dict[str, Any]]:
        args, kwargs = self.module._get_fn_args_from_batch(batch)
        kwargs = dict(kwargs)
        if self.use_kl_weight:
            # the logged ELBO is then the annealed loss, not the true ELBO
            kwargs["kl_weight"] = self.kl_weight
        return tuple(args), kwargs

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """The differentiable ELBO of one minibatch.

        Parameters
        ----------
        batch
            Tensors keyed by registry key, on the training device.
        batch_idx
            Index of the minibatch in the epoch.

        Returns
        -------
        dict
            ``{"loss": loss}``, the tensor the trainer back-propagates.
        """
        args, kwargs = self._step_inputs(batch)
        loss = self.differentiable_loss_fn(
            self.scale_fn(self.module.model), self.scale_fn(self.module.guide), *args, **kwargs
        )
        self.training_step_outputs.append({"loss": loss.detach()})
        return {"loss": loss}

    def on_train_epoch_end(self) -> None:
        """Log the mean step loss of the epoch as ``elbo_train``."""
        outputs = self.training_step_outputs
        if outputs:
            elbo = sum(out["loss"] for out in outputs) / len(outputs)
            self.log("elbo_train", elbo, prog_bar=True)
        self.training_step_outputs.clear()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        """Nothing: scvi-tools' Pyro plans have no validation step (Lightning then skips
        their validation loop), so no validation metric is logged, even where a callback
        (``SaveCheckpoint``, early stopping) makes the trainer validate.

        Parameters
        ----------
        batch
            Tensors keyed by registry key (unused).
        batch_idx
            Index of the minibatch (unused).
        """
        return None

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The ``optim`` class over the module's parameters, with ``optim_kwargs``."""
        params = list(self.module.parameters())
        if not params:
            raise ValueError(
                "The Pyro module has no parameters to optimise yet; an AutoGuide creates "
                "them on its first call, so warm it up first (e.g. with the "
                "PyroModelGuideWarmup callback)."
            )
        return self.optim(params, **self.optim_kwargs)


class PyroTrainingPlan(LowLevelPyroTrainingPlan):
    """Train a Pyro module with :class:`~pyro.infer.SVI`, which runs each optimiser step.

    Parameters
    ----------
    pyro_module
        A :class:`~scvi_rs.module.base.PyroBaseModuleClass` with callable ``model`` and
        ``guide``.
    loss_fn
        A Pyro ELBO (subclass of :class:`~pyro.infer.ELBO`); :class:`~pyro.infer.Trace_ELBO`
        by default.
    optim
        A Pyro optimizer instance (:class:`~pyro.optim.PyroOptim`); by default
        :class:`pyro.optim.Adam` with ``optim_kwargs``.
    optim_kwargs
        Keyword arguments of the default optimizer; ``lr`` defaults to ``1e-3``.
    n_steps_kl_warmup
        KL warm-up length in steps, used when ``n_epochs_kl_warmup`` is None.
    n_epochs_kl_warmup
        KL warm-up length in epochs (takes precedence over ``n_steps_kl_warmup``).
    scale_elbo
        Factor on the ELBO (through :func:`pyro.poutine.scale`).
    blocked
        Names of Pyro sites and parameters to hide from training
        (:func:`pyro.poutine.block`); all are trained when None.
    max_kl_weight, min_kl_weight
        End points of the KL warm-up.
    """

    def __init__(
        self,
        pyro_module: PyroBaseModuleClass,
        loss_fn: pyro.infer.ELBO | None = None,
        optim: pyro.optim.PyroOptim | None = None,
        optim_kwargs: dict | None = None,
        n_steps_kl_warmup: int | None = None,
        n_epochs_kl_warmup: int | None = 400,
        scale_elbo: float = 1.0,
        blocked: list | None = None,
        max_kl_weight: float = 1.0,
        min_kl_weight: float = 1e-6,
    ) -> None:
        super().__init__(
            pyro_module=pyro_module,
            loss_fn=loss_fn,
            optim_kwargs=optim_kwargs,
            n_steps_kl_warmup=n_steps_kl_warmup,
            n_epochs_kl_warmup=n_epochs_kl_warmup,
            scale_elbo=scale_elbo,
            max_kl_weight=max_kl_weight,
            min_kl_weight=min_kl_weight,
        )
        import pyro

        if optim is not None and not isinstance(optim, pyro.optim.PyroOptim):
            raise TypeError(
                "PyroTrainingPlan's `optim` must be a Pyro optimizer instance "
                f"(pyro.optim.PyroOptim, e.g. pyro.optim.Adam(...)), got {optim!r}; "
                "pass torch optimizer classes to LowLevelPyroTrainingPlan."
            )
        self.optim = pyro.optim.Adam(optim_args=self.optim_kwargs) if optim is None else optim
        self.blocked = blocked
        # SVI updates the parameters; the trainer does not back-propagate or step
        self.automatic_optimization = False
        self.svi = pyro.infer.SVI(
            model=self.block_fn(self.scale_fn(self.module.model)),
            guide=self.block_fn(self.scale_fn(self.module.guide)),
            optim=self.optim,
            loss=self.loss_fn,
        )

    def block_fn(self, fn: Callable[..., Any]) -> Callable[..., Any]:
        """``fn`` with the ``blocked`` sites hidden (``fn`` itself when nothing is blocked)."""
        if self.blocked is None:
            return fn
        import pyro

        return pyro.poutine.block(fn, hide=self.blocked)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> dict[str, Any]:
        """One :meth:`pyro.infer.SVI.step` on a minibatch.

        Parameters
        ----------
        batch
            Tensors keyed by registry key, on the training device.
        batch_idx
            Index of the minibatch in the epoch.

        Returns
        -------
        dict
            ``{"loss": loss}``, a one-element CPU tensor of the step's loss.
        """
        args, kwargs = self._step_inputs(batch)
        loss = torch.tensor([self.svi.step(*args, **kwargs)])
        out = {"loss": loss}
        self.training_step_outputs.append(out)
        return out

    def configure_optimizers(self) -> None:
        """None: SVI owns the (Pyro) optimizer, so the trainer steps none."""
        return None


@dataclass
class LowLevelPyroTrainingPlanConfig:
    """Keyword arguments of :class:`~scvi_rs.train.LowLevelPyroTrainingPlan`."""

    loss_fn: Any | None = None
    optim: Any | None = None
    optim_kwargs: dict | None = None
    n_steps_kl_warmup: int | None = None
    n_epochs_kl_warmup: int | None = 400
    scale_elbo: float = 1.0

    def to_kwargs(self) -> dict[str, Any]:
        """Return the config as a keyword dict.

        Returns
        -------
        dict
            The keyword arguments this config stands for.
        """
        return {
            "loss_fn": self.loss_fn,
            "optim": self.optim,
            "optim_kwargs": self.optim_kwargs,
            "n_steps_kl_warmup": self.n_steps_kl_warmup,
            "n_epochs_kl_warmup": self.n_epochs_kl_warmup,
            "scale_elbo": self.scale_elbo,
        }


@dataclass
class PyroTrainingPlanConfig(LowLevelPyroTrainingPlanConfig):
    """Keyword arguments of :class:`~scvi_rs.train.PyroTrainingPlan`."""

    blocked: list | None = None

    def to_kwargs(self) -> dict[str, Any]:
        """Return the config as a keyword dict.

        Returns
        -------
        dict
            The keyword arguments this config stands for.
        """
        return {**super().to_kwargs(), "blocked": self.blocked}


__all__ = [
    "LowLevelPyroTrainingPlan",
    "LowLevelPyroTrainingPlanConfig",
    "PyroTrainingPlan",
    "PyroTrainingPlanConfig",
]
