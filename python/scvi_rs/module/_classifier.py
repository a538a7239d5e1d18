"""``Classifier`` and the classification methods of supervised modules (``scvi.module``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from .._constants import REGISTRY_KEYS
from ..nn import FCLayers
from .base import auto_move_data

if TYPE_CHECKING:
    from ..model.base import BaseModelClass

# Keys of an inference input that are covariates, not data, for ``classify``.
_COVARIATE_INPUT_KEYS = ("batch_index", "cont_covs", "cat_covs", "panel_index")
# Classifiers of models saved before this scvi-tools version output probabilities.
_LOGITS_SINCE_VERSION = (1, 1)


class Classifier(nn.Module):
    """Fully connected classifier.

    Parameters
    ----------
    n_input
        Input width.
    n_hidden
        Width of the hidden layers; with 0 (or ``n_layers=0``) the classifier is one linear
        layer.
    n_labels
        Number of classes.
    n_layers
        Number of hidden layers.
    dropout_rate
        Dropout of the hidden layers.
    logits
        Output logits; otherwise a softmax layer ends the network (probabilities).
    use_batch_norm
        Batch norm in the hidden layers.
    use_layer_norm
        Layer norm in the hidden layers.
    activation_fn
        Activation module class of the hidden layers.
    **kwargs
        Further arguments of :class:`~scvi_rs.nn.FCLayers`.
    """

    def __init__(
        self,
        n_input: int,
        n_hidden: int = 128,
        n_labels: int = 5,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        logits: bool = False,
        use_batch_norm: bool = True,
        use_layer_norm: bool = False,
        activation_fn: type[nn.Module] = nn.ReLU,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        self.logits = logits
        layers: list[nn.Module] = []
        head_input = n_input
        if n_hidden > 0 and n_layers > 0:
            layers.append(
                FCLayers(
                    n_in=n_input,
                    n_out=n_hidden,
                    n_layers=n_layers,
                    n_hidden=n_hidden,
                    dropout_rate=dropout_rate,
                    use_batch_norm=use_batch_norm,
                    use_layer_norm=use_layer_norm,
                    activation_fn=activation_fn,
                    **kwargs,
                )
            )
            head_input = n_hidden
        layers.append(nn.Linear(head_input, n_labels))
        if not logits:
            layers.append(nn.Softmax(dim=-1))
        self.classifier = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class scores of ``x``: logits, or probabilities when ``logits=False``."""
        return self.classifier(x)


def _version_tuple(version: Any) -> tuple[int, ...]:
    parts = []
    for piece in str(version).split(".")[:2]:
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


def _user_asked_for_logits(init_params: dict | None) -> bool:
    """Whether a saved model's ``classifier_parameters`` asked for ``logits=True``."""
    kwargs = (init_params or {}).get("kwargs", {}) or {}
    for group in kwargs.values():
        if isinstance(group, dict):
            params = group.get("classifier_parameters") or {}
            if isinstance(params, dict) and "logits" in params:
                return bool(params["logits"])
    return False


class SupervisedModuleClass:
    """Classification through the latent encoder, for modules with a ``classifier``.

    The host module provides ``z_encoder``, ``classifier``, ``log_variational``,
    ``encode_covariates``, ``use_labels_groups`` and ``_get_inference_input`` (as
    :class:`~scvi_rs.module.SCANVAE` does).
    """

    @auto_move_data
    def classify_helper(self, z: torch.Tensor) -> torch.Tensor:
        """Class scores of latent codes ``z``, weighted by label groups when they are used."""
        if not getattr(self, "use_labels_groups", False):
            return self.classifier(z)
        group_weights = self.classifier_groups(z)
        scores = self.classifier(z)
        weighted = torch.zeros_like(scores)
        for i, in_group in enumerate(self.groups_index):
            members = in_group.bool()
            group_scores = scores[:, members]
            weighted[:, members] = (
                group_scores / (group_scores.sum(dim=-1, keepdim=True) + 1e-8)
            ) * group_weights[:, [i]]
        return weighted

    @auto_move_data
    def classify(
        self,
        x: torch.Tensor,
        batch_index: torch.Tensor | None = None,
        cont_covs: torch.Tensor | None = None,
        cat_covs: torch.Tensor | None = None,
        use_posterior_mean: bool = True,
    ) -> torch.Tensor:
        """Encode ``x`` and classify its latent code.

        Parameters
        ----------
        x
            Counts, ``(n_obs, n_vars)``.
        batch_index
            Batch codes, ``(n_obs, 1)``.
        cont_covs
            Continuous covariates, ``(n_obs, n_cont)``.
        cat_covs
            Categorical covariate codes, ``(n_obs, n_cat)``.
        use_posterior_mean
            Classify the posterior mean; otherwise a sample of the posterior.

        Returns
        -------
        torch.Tensor
            ``(n_obs, n_labels)`` logits (probabilities for a ``logits=False`` classifier).
        """
        if self.log_variational:
            x = torch.log1p(x)
        if cont_covs is not None and self.encode_covariates:
            encoder_input = torch.cat((x, cont_covs), dim=-1)
        else:
            encoder_input = x
        if cat_covs is not None and self.encode_covariates:
            categorical_input = torch.split(cat_covs, 1, dim=1)
        else:
            categorical_input = ()
        qz, z = self._encode(self.z_encoder, encoder_input, batch_index, categorical_input)
        return self.classify_helper(qz.loc if use_posterior_mean else z)

    def _classify_tensors(
        self, tensors: dict[str, torch.Tensor], use_posterior_mean: bool = True
    ) -> torch.Tensor:
        """:meth:`classify` of a minibatch of registered tensors."""
        inference_inputs = self._get_inference_input(tensors)
        data_inputs = {
            key: value
            for key, value in inference_inputs.items()
            if key not in _COVARIATE_INPUT_KEYS
        }
        return self.classify(
            **data_inputs,
            batch_index=tensors[REGISTRY_KEYS.BATCH_KEY],
            cont_covs=tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
            cat_covs=tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
            use_posterior_mean=use_posterior_mean,
        )

    @auto_move_data
    def classification_loss(
        self, labelled_dataset: dict[str, torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Cross-entropy of the classifier on labelled cells.

        Parameters
        ----------
        labelled_dataset
            A minibatch of labelled cells (registered tensors).

        Returns
        -------
        tuple of torch.Tensor
            ``(loss, true_labels (n, 1), logits (n, n_labels))``.
        """
        labels = labelled_dataset[REGISTRY_KEYS.LABELS_KEY]
        logits = self._classify_tensors(labelled_dataset)
        loss = F.cross_entropy(logits, labels.view(-1).long())
        return loss, labels, logits

    def on_load(self, model: BaseModelClass, **kwargs: Any) -> None:
        """Give classifiers of files saved before scvi-tools 1.1 their softmax output back.

        Until 1.1 the classifier returned probabilities; such files load with
        ``logits=False`` and a final softmax, unless the saved ``classifier_parameters``
        asked for logits.
        """
        manager = model.adata_manager
        source = getattr(manager, "_source_registry", None) if manager is not None else None
        registry = source if source is not None else (model.registry_ or {})
        source_version = registry.get("scvi_version")
        if source_version is None or _version_tuple(source_version) >= _LOGITS_SINCE_VERSION:
            return
        if manager is not None:
            # a re-save keeps the old version, so the file keeps loading this way
            manager.registry["scvi_version"] = source_version
        if (
            not _user_asked_for_logits(getattr(model, "init_params_", None))
            and self.classifier.logits
        ):
            self.classifier.logits = False
            self.classifier.classifier.append(nn.Softmax(dim=-1))


__all__ = ["Classifier", "SupervisedModuleClass"]
