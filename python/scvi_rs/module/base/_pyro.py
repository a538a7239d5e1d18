"""Modules written in Pyro: ``PyroBaseModuleClass`` and its auto-moving ``Predictive``.

Pyro (``pyro-ppl``) is an optional dependency (``pip install scvi-rs[pyro]``): these names
import without it, so ``import scvi_rs`` never needs Pyro, and using them without it raises
an ``ImportError`` that says what to install.
"""

from __future__ import annotations

import functools
from abc import abstractmethod
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from ._decorators import _module_device, auto_move_data

if TYPE_CHECKING:
    from pyro.infer import Predictive

PYRO_INSTALL_HINT = "pip install scvi-rs[pyro]"


def pyro_available() -> bool:
    """Whether ``pyro`` (the ``pyro-ppl`` distribution) imports."""
    try:
        import pyro  # noqa: F401
    except ImportError:
        return False
    return True


def require_pyro(what: str) -> None:
    """Raise ``ImportError`` naming ``what`` and the install command when Pyro is missing.

    Parameters
    ----------
    what
        The class or function that needs Pyro (shown in the message).
    """
    if not pyro_available():
        raise ImportError(
            f"{what} needs Pyro (the `pyro-ppl` package), which is not installed. "
            f"Install it with `{PYRO_INSTALL_HINT}`."
        )


@functools.cache
def _auto_move_data_predictive_cls() -> type:
    """The ``Predictive`` subclass whose forward moves its inputs to its device.

    Built on first use, as its base class comes from Pyro.
    """
    from pyro.infer import Predictive

    class AutoMoveDataPredictive(Predictive):
        """:class:`pyro.infer.Predictive` that moves its arguments to its parameters' device."""

        @auto_move_data
        def forward(self, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
            return super().forward(*args, **kwargs)

    AutoMoveDataPredictive.__module__ = __name__
    AutoMoveDataPredictive.__qualname__ = "AutoMoveDataPredictive"
    return AutoMoveDataPredictive


def __getattr__(name: str) -> Any:
    if name == "AutoMoveDataPredictive":
        require_pyro("AutoMoveDataPredictive")
        return _auto_move_data_predictive_cls()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class PyroBaseModuleClass(nn.Module):
    """Base class of modules whose model and guide are written in Pyro.

    In Pyro, ``model`` and ``guide`` take the same arguments; calling the module calls its
    ``model``. A subclass provides ``model`` and ``guide`` either as properties returning
    :class:`~pyro.nn.PyroModule` attributes (e.g. an AutoGuide), or as methods written
    directly with Pyro primitives, and a static ``_get_fn_args_from_batch`` turning a
    minibatch (tensors keyed by registry key) into their ``(args, kwargs)``.

    ``model`` and ``guide`` may carry an ``n_obs`` attribute (e.g. ``self.n_obs = None``),
    useful to size observation plates: :class:`~scvi_rs.train.PyroTrainingPlan` sets it to
    the number of training cells.

    Parameters
    ----------
    on_load_kwargs
        Keyword arguments of the one-step ``model.train`` that :meth:`on_load` runs.
    """

    def __init__(self, on_load_kwargs: dict | None = None) -> None:
        require_pyro(type(self).__name__)
        super().__init__()
        if on_load_kwargs is not None and not isinstance(on_load_kwargs, dict):
            raise TypeError(
                f"on_load_kwargs must be a dict or None, got {type(on_load_kwargs).__name__}."
            )
        self.on_load_kwargs = on_load_kwargs or {}

    @staticmethod
    @abstractmethod
    def _get_fn_args_from_batch(
        tensor_dict: dict[str, torch.Tensor],
    ) -> tuple[Iterable, dict[str, Any]]:
        """Arguments of ``model`` and ``guide`` for one minibatch.

        Parameters
        ----------
        tensor_dict
            The minibatch: tensors keyed by registry key.

        Returns
        -------
        tuple
            ``(args, kwargs)``: an iterable of positional arguments and a dict of keywords.
        """

    @property
    @abstractmethod
    def model(self) -> Callable[..., Any]:
        """The Pyro model (a callable with Pyro primitives, or a ``PyroModule``)."""

    @property
    @abstractmethod
    def guide(self) -> Callable[..., Any]:
        """The Pyro guide, taking the same arguments as :attr:`model`."""

    @property
    def list_obs_plate_vars(self) -> dict[str, Any]:
        """The observation (minibatch) plate and the sites inside it.

        Returns
        -------
        dict
            ``"name"``: the plate's name; ``"in"``: indices of the model arguments an
            amortised encoder reads; ``"sites"``: site name to the size of its non-plate
            dimension. Optionally ``"event_dim"``, the event dimensions to the right of
            the plate.
        """
        return {"name": "", "in": [], "sites": {}}

    @property
    def device(self) -> torch.device:
        """Device of the module's parameters (CPU when it has none yet, as before a guide ran)."""
        device = _module_device(self)
        return torch.device("cpu") if device is None else device

    def on_load(self, model: Any, **kwargs: Any) -> None:
        """Create the guide's parameters before ``BaseModelClass.load`` loads the weights.

        AutoGuides create their parameters on first use, so the state dict fits only after
        one training step: the Pyro parameter store is cleared, the model trained for one
        step (with :attr:`on_load_kwargs`), and its history put back as it was.

        Parameters
        ----------
        model
            The model being loaded (its ``module`` is this module).
        **kwargs
            ``pyro_param_store``: a saved parameter-store state to restore afterwards.
        """
        import pyro

        pyro.clear_param_store()
        history = model.history_.copy() if model.history_ is not None else None
        model.train(max_steps=1, **self.on_load_kwargs)
        model.history_ = history
        param_store = kwargs.get("pyro_param_store")
        if param_store is not None:
            # scArches changes parameter shapes; the stored state keeps the saved ones
            pyro.get_param_store().set_state(param_store)

    def create_predictive(
        self,
        model: Callable | None = None,
        posterior_samples: dict | None = None,
        guide: Callable | None = None,
        num_samples: int | None = None,
        return_sites: tuple[str, ...] = (),
        parallel: bool = False,
    ) -> Predictive:
        """A :class:`~pyro.infer.Predictive` of this module, moving its inputs to the device.

        Parameters
        ----------
        model
            Callable with Pyro primitives; :attr:`model` by default.
        posterior_samples
            Samples of the posterior, keyed by site.
        guide
            Guide drawing the sites missing from ``posterior_samples``; :attr:`guide` by
            default.
        num_samples
            Number of draws; ignored when ``posterior_samples`` is non-empty (then its
            leading dimension is used).
        return_sites
            Sites to return; by default the sample sites not in ``posterior_samples``.
        parallel
            Draw all samples at once in an outermost plate (needs every batch dimension
            annotated with :class:`~pyro.plate`).

        Returns
        -------
        pyro.infer.Predictive
            The predictive, in eval mode (so its inputs are moved to its device).
        """
        predictive = _auto_move_data_predictive_cls()(
            model=self.model if model is None else model,
            posterior_samples=posterior_samples,
            guide=self.guide if guide is None else guide,
            num_samples=num_samples,
            return_sites=return_sites,
            parallel=parallel,
        )
        predictive.eval()
        return predictive

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """Call :attr:`model`."""
        return self.model(*args, **kwargs)


__all__ = [
    "PYRO_INSTALL_HINT",
    "PyroBaseModuleClass",
    "pyro_available",
    "require_pyro",
]
