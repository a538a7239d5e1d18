"""Base classes of torch modules and the ``LossOutput`` record they return."""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution

from .._constants import MODULE_KEYS
from ._decorators import _module_device, auto_move_data

LossRecord = dict[str, torch.Tensor] | torch.Tensor


@dataclass
class LossOutput:
    """Loss of a minibatch and its components.

    Parameters
    ----------
    loss
        Scalar to minimise (a dict is summed).
    reconstruction_loss
        Per-observation reconstruction loss, a tensor or a dict of tensors.
    kl_local
        Per-observation KL divergences (tensor or dict).
    kl_global
        Global KL divergence (tensor, float or dict).
    classification_loss
        Classification loss; needs ``logits`` and ``true_labels``.
    logits
        Classifier logits.
    true_labels
        Labels the classifier is scored against.
    extra_metrics
        Further metrics to log.
    n_obs_minibatch
        Number of observations in the minibatch; defaults to the first dimension of the
        first reconstruction-loss value.

    ``reconstruction_loss``, ``kl_local`` and ``kl_global`` default to ``0 * loss`` and are
    stored as dicts (a bare value ``v`` becomes ``{"reconstruction_loss": v}`` etc.);
    ``reconstruction_loss_sum`` and ``kl_local_sum`` are the sums over keys and
    observations, ``kl_global_sum`` the sum over keys.
    """

    loss: LossRecord
    reconstruction_loss: LossRecord | None = None
    kl_local: LossRecord | None = None
    kl_global: LossRecord | None = None
    classification_loss: LossRecord | None = None
    logits: torch.Tensor | None = None
    true_labels: torch.Tensor | None = None
    extra_metrics: dict[str, torch.Tensor] | None = field(default_factory=dict)
    n_obs_minibatch: int | None = None
    reconstruction_loss_sum: torch.Tensor = field(default=None)
    kl_local_sum: torch.Tensor = field(default=None)
    kl_global_sum: torch.Tensor = field(default=None)

    def __post_init__(self) -> None:
        self.loss = self.dict_sum(self.loss)

        if self.n_obs_minibatch is None and self.reconstruction_loss is None:
            raise ValueError("Must provide either n_obs_minibatch or reconstruction_loss")

        default = 0 * self.loss
        if self.reconstruction_loss is None:
            self.reconstruction_loss = default
        if self.kl_local is None:
            self.kl_local = default
        if self.kl_global is None:
            self.kl_global = default
        self.reconstruction_loss = self._as_dict("reconstruction_loss")
        self.kl_local = self._as_dict("kl_local")
        self.kl_global = self._as_dict("kl_global")
        self.reconstruction_loss_sum = self.dict_sum(self.reconstruction_loss).sum()
        self.kl_local_sum = self.dict_sum(self.kl_local).sum()
        self.kl_global_sum = self.dict_sum(self.kl_global)

        if self.n_obs_minibatch is None:
            first = next(iter(self.reconstruction_loss.values()))
            self.n_obs_minibatch = first.shape[0]

        if self.classification_loss is not None and (
            self.logits is None or self.true_labels is None
        ):
            raise ValueError(
                "Must provide `logits` and `true_labels` if `classification_loss` is provided."
            )

    @staticmethod
    def dict_sum(dictionary: dict[str, torch.Tensor] | torch.Tensor) -> Any:
        """Sum of the values of a dict; anything else is returned as is."""
        if isinstance(dictionary, dict):
            return sum(dictionary.values())
        return dictionary

    @property
    def extra_metrics_keys(self):
        """Keys of ``extra_metrics``."""
        return self.extra_metrics.keys()

    def _as_dict(self, attr_name: str) -> dict:
        value = getattr(self, attr_name)
        if isinstance(value, dict):
            return value
        return {attr_name: value}


def _get_dict_if_none(param: Any) -> dict:
    """A fresh dict: the given dict copied, anything else (``None``) as ``{}``."""
    return dict(param) if isinstance(param, dict) else {}


class BaseModuleClass(nn.Module):
    """Abstract torch module of a model.

    A subclass maps a minibatch (a dict keyed by registry keys) to keyword arguments of
    ``inference`` (``_get_inference_input``), then those outputs to keyword arguments of
    ``generative`` (``_get_generative_input``), and scores both in ``loss``.
    As in the reference the abstract methods are not enforced at instantiation.
    """

    def __init__(self) -> None:
        super().__init__()

    @property
    def device(self) -> torch.device:
        """The device of the module's parameters (CPU for a module without any)."""
        device = _module_device(self)
        return torch.device("cpu") if device is None else device

    def on_load(self, model, **kwargs) -> None:
        """Hook called by ``BaseModelClass.load`` before the state dict is loaded."""

    @auto_move_data
    def forward(
        self,
        tensors: dict[str, torch.Tensor],
        get_inference_input_kwargs: dict | None = None,
        get_generative_input_kwargs: dict | None = None,
        inference_kwargs: dict | None = None,
        generative_kwargs: dict | None = None,
        loss_kwargs: dict | None = None,
        compute_loss: bool = True,
    ) -> tuple[dict[str, Any], dict[str, Any]] | tuple[dict[str, Any], dict[str, Any], LossOutput]:
        """Inference, generative pass and (by default) loss on one minibatch.

        Returns ``(inference_outputs, generative_outputs, loss_output)``, or the first two
        when ``compute_loss=False``.
        """
        return _generic_forward(
            self,
            tensors,
            inference_kwargs,
            generative_kwargs,
            loss_kwargs,
            get_inference_input_kwargs,
            get_generative_input_kwargs,
            compute_loss,
        )

    @abstractmethod
    def _get_inference_input(self, tensors: dict[str, torch.Tensor], **kwargs) -> dict:
        """Keyword arguments of ``inference`` taken from the minibatch."""

    @abstractmethod
    def _get_generative_input(
        self,
        tensors: dict[str, torch.Tensor],
        inference_outputs: dict[str, torch.Tensor],
        **kwargs,
    ) -> dict:
        """Keyword arguments of ``generative`` from the minibatch and inference outputs."""

    @abstractmethod
    def inference(self, *args, **kwargs) -> dict[str, torch.Tensor | Distribution]:
        """Encoder pass (posterior parameters and samples)."""

    @abstractmethod
    def generative(self, *args, **kwargs) -> dict[str, torch.Tensor | Distribution]:
        """Decoder pass (likelihood and priors)."""

    @abstractmethod
    def loss(self, *args, **kwargs) -> LossOutput:
        """Loss of the minibatch."""

    @abstractmethod
    def sample(self, *args, **kwargs):
        """Samples from the posterior predictive distribution."""


def _generic_forward(
    module: BaseModuleClass,
    tensors: dict[str, torch.Tensor],
    inference_kwargs: dict | None,
    generative_kwargs: dict | None,
    loss_kwargs: dict | None,
    get_inference_input_kwargs: dict | None,
    get_generative_input_kwargs: dict | None,
    compute_loss: bool,
):
    inference_kwargs = _get_dict_if_none(inference_kwargs)
    generative_kwargs = _get_dict_if_none(generative_kwargs)
    loss_kwargs = _get_dict_if_none(loss_kwargs)
    get_inference_input_kwargs = _get_dict_if_none(get_inference_input_kwargs)
    get_generative_input_kwargs = _get_dict_if_none(get_generative_input_kwargs)

    # `full_forward_pass` only means something for minibatches of minified data.
    if not ("latent_qzm" in tensors and "latent_qzv" in tensors):
        get_inference_input_kwargs.pop("full_forward_pass", None)

    inference_inputs = module._get_inference_input(tensors, **get_inference_input_kwargs)
    inference_outputs = module.inference(**inference_inputs, **inference_kwargs)
    generative_inputs = module._get_generative_input(
        tensors, inference_outputs, **get_generative_input_kwargs
    )
    generative_outputs = module.generative(**generative_inputs, **generative_kwargs)
    if compute_loss:
        losses = module.loss(tensors, inference_outputs, generative_outputs, **loss_kwargs)
        return inference_outputs, generative_outputs, losses
    return inference_outputs, generative_outputs


class BaseMinifiedModeModuleClass(BaseModuleClass):
    """A module that can also run on minified data (stored latent posteriors).

    ``inference`` dispatches to ``_cached_inference`` when both ``qzm`` and ``qzv`` are
    given as keyword arguments, else to ``_regular_inference``.
    """

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._minified_data_type = None

    @property
    def minified_data_type(self) -> str | None:
        """Minification type of the data the module works on (``None``: full data)."""
        return self._minified_data_type

    @minified_data_type.setter
    def minified_data_type(self, minified_data_type: str | None) -> None:
        self._minified_data_type = minified_data_type

    @abstractmethod
    def _cached_inference(self, *args, **kwargs) -> dict[str, torch.Tensor | Distribution]:
        """Inference from stored posterior parameters."""

    @abstractmethod
    def _regular_inference(self, *args, **kwargs) -> dict[str, torch.Tensor | Distribution]:
        """Inference from the data."""

    @auto_move_data
    def inference(self, *args, **kwargs) -> dict[str, torch.Tensor | Distribution]:
        if MODULE_KEYS.QZM_KEY in kwargs and MODULE_KEYS.QZV_KEY in kwargs:
            return self._cached_inference(*args, **kwargs)
        return self._regular_inference(*args, **kwargs)


# scvi-tools defines these in this module; code written for it imports them from here.
from ._pyro import PyroBaseModuleClass  # noqa: E402, F401


def __getattr__(name: str) -> Any:
    if name == "AutoMoveDataPredictive":  # built on first use: it needs Pyro
        from . import _pyro

        return _pyro.AutoMoveDataPredictive
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
