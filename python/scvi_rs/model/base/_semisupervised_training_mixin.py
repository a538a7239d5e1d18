"""``SemisupervisedTrainingMixin``: semi-supervised ``train`` and label prediction."""

from __future__ import annotations

import importlib.util
import logging
import warnings
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch

from ..._constants import REGISTRY_KEYS
from ..._settings import settings
from ...data._utils import get_anndata_attribute
from ...dataloaders import SemiSupervisedDataSplitter
from ...train import TrainRunner
from ...train._config import merge_kwargs
from ...train._distributed import is_ddp_strategy
from ...train._semisupervised_trainingplan import SemiSupervisedTrainingPlan, SubSampleLabels
from ._training_mixin import _trains_on_cuda, get_max_epochs_heuristic

if TYPE_CHECKING:
    from anndata import AnnData

logger = logging.getLogger("scvi_rs")


def _pretrained_max_epochs(max_epochs: int) -> int:
    """Fewer epochs for a model initialised from a trained one: ``clip(round(n / 3), 2, 10)``."""
    return int(min(10, max(2, round(max_epochs / 3.0))))


class SemisupervisedTrainingMixin:
    """``train``, ``predict`` and feature attribution for semi-supervised models."""

    _training_plan_cls = SemiSupervisedTrainingPlan
    _data_splitter_cls = SemiSupervisedDataSplitter
    _train_runner_cls = TrainRunner

    def _set_indices_and_labels(self, datamodule: Any = None) -> None:
        """Record the labels of the cells and which of them are (un)labelled.

        Sets ``original_label_key``, ``unlabeled_category_``, ``labels_``,
        ``_label_mapping``, ``_labeled_indices``, ``_unlabeled_indices`` and
        ``_code_to_label``.
        """
        labels_state = self.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
        self.original_label_key = labels_state.original_key
        self.unlabeled_category_ = labels_state.get("unlabeled_category")
        if datamodule is not None:
            labels = getattr(datamodule, "labels_", None)
            if labels is None:
                labels = datamodule.labels
        elif self.adata is not None:
            entry = self.adata_manager.data_registry[REGISTRY_KEYS.LABELS_KEY]
            labels = get_anndata_attribute(
                self.adata,
                entry.attr_name,
                self.original_label_key,
                mod_key=getattr(entry, "mod_key", None),
            )
        else:
            labels = np.array([], dtype=object)  # built from a registry alone
        self.labels_ = np.asarray(labels).ravel()
        self._label_mapping = labels_state.categorical_mapping
        is_unlabeled = self.labels_ == self.unlabeled_category_
        self._unlabeled_indices = np.flatnonzero(is_unlabeled)
        self._labeled_indices = np.flatnonzero(~is_unlabeled)
        self._code_to_label = dict(enumerate(self._label_mapping))

    # -- prediction ------------------------------------------------------------------------
    def _prediction_batches(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        dataloader: Iterable | None,
    ) -> tuple[AnnData | None, np.ndarray | None, Iterable]:
        if adata is not None and dataloader is not None:
            raise ValueError("Only one of `adata` or `dataloader` can be provided.")
        if dataloader is not None:
            if indices is not None or batch_size is not None:
                warnings.warn(
                    "`indices` and `batch_size` are ignored when a `dataloader` is given.",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
            return None, None, dataloader
        adata = self._validate_anndata(adata)
        indices = np.arange(adata.n_obs) if indices is None else np.asarray(indices)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        return adata, indices, loader

    @torch.inference_mode()
    def _class_probabilities(self, loader: Iterable, use_posterior_mean: bool) -> torch.Tensor:
        parts = []
        for tensors in loader:
            scores = self.module._classify_tensors(tensors, use_posterior_mean=use_posterior_mean)
            if self.module.classifier.logits:
                scores = torch.softmax(scores, dim=-1)
            parts.append(scores.detach().cpu())
        return torch.cat(parts) if parts else torch.zeros(0, self.module.n_labels)

    def predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        soft: bool = False,
        batch_size: int | None = None,
        use_posterior_mean: bool = True,
        ig_interpretability: bool = False,
        ig_args: dict | None = None,
        dataloader: Iterable | None = None,
    ) -> np.ndarray | pd.DataFrame | tuple[Any, pd.DataFrame | None]:
        """Predict the label of each cell.

        Parameters
        ----------
        adata
            AnnData set up like the model's (same genes); the model's own by default.
        indices
            Cells to predict; all by default.
        soft
            Return the probability of every label (a DataFrame indexed by cell name)
            instead of the most likely label.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        use_posterior_mean
            Classify the posterior mean of the latent code; otherwise a posterior sample
            (stochastic predictions).
        ig_interpretability
            Also return integrated-gradients attributions of the genes (needs ``captum``),
            as a DataFrame ranked by :meth:`get_ranked_features`.
        ig_args
            Keyword arguments of ``IntegratedGradients.attribute``.
        dataloader
            A loader of registered minibatches to use instead of ``adata``.

        Returns
        -------
        numpy.ndarray, pandas.DataFrame or tuple
            Labels ``(n_cells,)``, or probabilities ``(n_cells, n_labels)``; with
            ``ig_interpretability`` the pair ``(predictions, attributions)``.
        """
        if getattr(self, "module", None) is None:
            raise ValueError("The model has no module; build it from AnnData first.")
        adata, indices, loader = self._prediction_batches(adata, indices, batch_size, dataloader)
        if indices is not None and len(indices) == 0:
            return ([], None) if ig_interpretability else []
        was_training = self.module.training
        self.module.eval()
        try:
            probabilities = self._class_probabilities(loader, use_posterior_mean)
            attributions = None
            if ig_interpretability:
                attributions = self._integrated_gradients(
                    adata, loader, probabilities.argmax(dim=1), ig_args
                )
        finally:
            self.module.train(was_training)
        predictions = self._format_predictions(probabilities, soft, adata, indices)
        if ig_interpretability:
            return predictions, attributions
        return predictions

    def _format_predictions(
        self,
        probabilities: torch.Tensor,
        soft: bool,
        adata: AnnData | None,
        indices: np.ndarray | None,
    ) -> np.ndarray | pd.DataFrame:
        if not soft:
            codes = probabilities.argmax(dim=1).numpy()
            return np.array([self._code_to_label[int(c)] for c in codes])
        n_labels = probabilities.shape[1]
        columns = list(self._label_mapping[:n_labels])
        index = adata.obs_names[indices] if adata is not None else None
        return pd.DataFrame(probabilities.numpy(), columns=columns, index=index)

    def _integrated_gradients(
        self,
        adata: AnnData | None,
        loader: Iterable,
        hard_predictions: torch.Tensor,
        ig_args: dict | None,
    ) -> pd.DataFrame | None:
        if importlib.util.find_spec("captum") is None:
            raise ModuleNotFoundError("Please install captum to use this functionality.")
        from captum.attr import IntegratedGradients

        module = self.module
        explainer = IntegratedGradients(module.classify)
        attributions, start = [], 0
        for tensors in loader:
            inputs = module._get_inference_input(tensors)
            x = inputs["x"]
            target = hard_predictions[start : start + x.shape[0]].to(x.device)
            start += x.shape[0]
            with torch.inference_mode(False), torch.enable_grad():
                attribution = explainer.attribute(
                    (x.clone(),),
                    target=target,
                    additional_forward_args=(
                        tensors[REGISTRY_KEYS.BATCH_KEY],
                        tensors.get(REGISTRY_KEYS.CONT_COVS_KEY),
                        tensors.get(REGISTRY_KEYS.CAT_COVS_KEY),
                    ),
                    **(ig_args or {}),
                )
            attributions.append(torch.cat(attribution, dim=1).detach().cpu())
        if not attributions:
            return None
        return self.get_ranked_features(adata, torch.cat(attributions).numpy())

    def get_ranked_features(
        self, adata: AnnData | None = None, attrs: np.ndarray | None = None
    ) -> pd.DataFrame | None:
        """Rank the genes by their mean attribution over cells.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        attrs
            ``(n_cells, n_genes)`` attributions (integrated gradients, SHAP values).

        Returns
        -------
        pandas.DataFrame or None
            Columns ``feature``, ``feature_idx``, ``modality``, ``attribution_mean``,
            ``attribution_std`` and ``cells``, by decreasing mean attribution; None
            without ``attrs``.
        """
        if attrs is None:
            warnings.warn(
                "Missing attributions matrix.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            return None
        attrs = np.asarray(attrs)
        mean_attrs = attrs.mean(axis=0)
        std_attrs = attrs.std(axis=0)
        order = np.argsort(mean_attrs)[::-1]
        # the genes of the registered X: for a MuData model those of its RNA modality
        x_state = self.adata_manager.get_state_registry(REGISTRY_KEYS.X_KEY)
        features = np.asarray(x_state["column_names"]).astype(str)
        if len(features) != attrs.shape[1]:
            raise ValueError(
                f"The attributions have {attrs.shape[1]} features but the model has "
                f"{len(features)} genes."
            )
        return pd.DataFrame(
            {
                "feature": features[order],
                "feature_idx": order,
                "modality": "None",
                "attribution_mean": mean_attrs[order],
                "attribution_std": std_attrs[order],
                "cells": attrs.shape[0],
            }
        )

    def shap_adata_predict(self, X: np.ndarray) -> pd.DataFrame:
        """Soft predictions of expression rows ``X`` (the model's cells as covariates)."""
        adata = self._validate_anndata()
        n_rows = len(X)
        rows = np.resize(np.arange(adata.n_obs), n_rows)
        query = adata[rows].copy()
        query.obs_names_make_unique()
        query.X = X
        return self.predict(query, soft=True)

    def shap_predict(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        shap_args: dict | None = None,
    ) -> np.ndarray:
        """SHAP values of the soft predictions (needs ``shap``).

        Parameters
        ----------
        adata
            Cells to explain; the model's own by default.
        indices
            A subset of those cells.
        shap_args
            Arguments of ``shap.KernelExplainer`` and its ``shap_values``.

        Returns
        -------
        numpy.ndarray
            SHAP values ``(n_cells, n_genes, n_labels)``.
        """
        if importlib.util.find_spec("shap") is None:
            raise ModuleNotFoundError("Please install shap to use this functionality.")
        import shap

        shap_args = shap_args or {}
        reference = self._validate_anndata()
        adata = self._validate_anndata(adata)
        if indices is not None:
            adata = self._validate_anndata(adata[indices].copy())
        names = reference.var_names

        def frame(data: AnnData) -> pd.DataFrame:
            matrix = data.X.toarray() if hasattr(data.X, "toarray") else np.asarray(data.X)
            return pd.DataFrame(matrix, columns=names)

        explainer = shap.KernelExplainer(self.shap_adata_predict, frame(reference), **shap_args)
        return explainer.shap_values(frame(adata), **shap_args)

    # -- training --------------------------------------------------------------------------
    def train(
        self,
        max_epochs: int | None = None,
        n_samples_per_label: float | None = None,
        check_val_every_n_epoch: int | None = None,
        train_size: float = 0.9,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        batch_size: int = 128,
        accelerator: str = "auto",
        devices: int | list[int] | str = "auto",
        adversarial_classifier: bool | None = None,
        datasplitter_kwargs: dict | None = None,
        plan_config: Any = None,
        plan_kwargs: Any = None,
        datamodule: Any = None,
        trainer_config: Any = None,
        **trainer_kwargs: Any,
    ) -> None:
        """Train the model on labelled and unlabelled cells.

        Parameters
        ----------
        max_epochs
            Number of epochs; by default from :func:`get_max_epochs_heuristic`, and for a
            model built by ``from_scvi_model`` a third of that, between 2 and 10.
        n_samples_per_label
            Labelled cells drawn per label for each epoch (all labelled cells when None).
        check_val_every_n_epoch
            Validate every this many epochs (no validation when None unless early
            stopping or a plateau scheduler needs it).
        train_size
            Fraction of the labelled and of the unlabelled cells for training.
        validation_size
            Fraction for validation; the rest when None.
        shuffle_set_split
            Shuffle cells before splitting.
        batch_size
            Minibatch size.
        accelerator
            ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"``.
        devices
            Device selection.
        adversarial_classifier
            Not supported for this model (must be None or False).
        datasplitter_kwargs
            Extra :class:`~scvi_rs.dataloaders.SemiSupervisedDataSplitter` arguments.
        plan_config
            Config of training-plan arguments.
        plan_kwargs
            :class:`~scvi_rs.train.SemiSupervisedTrainingPlan` arguments (e.g.
            ``classification_ratio``).
        datamodule
            A data module to use instead of the model's AnnData (no label resampling).
        trainer_config
            Config of trainer arguments.
        **trainer_kwargs
            :class:`~scvi_rs.train.Trainer` arguments (``early_stopping``, ``callbacks``,
            ...).
        """
        if adversarial_classifier:
            raise NotImplementedError(
                f"`adversarial_classifier` is not supported by {type(self).__name__}."
            )
        plan_kwargs = merge_kwargs(plan_config, plan_kwargs, name="plan")
        if max_epochs is None:
            n_obs = self.adata.n_obs if datamodule is None else getattr(datamodule, "n_obs", None)
            if n_obs is None:
                raise ValueError(
                    "If `datamodule` does not have `n_obs` attribute, `max_epochs` must be "
                    "passed in."
                )
            max_epochs = get_max_epochs_heuristic(n_obs)
            if getattr(self, "was_pretrained", False):
                max_epochs = _pretrained_max_epochs(max_epochs)
        logger.info("Training for %s epochs.", max_epochs)

        callbacks = list(trainer_kwargs.pop("callbacks", None) or [])
        if datamodule is None and self.adata_manager is None:
            raise ValueError(
                "The model has no AnnData to train on (it was built from a registry); load it "
                "with `adata=` or pass a `datamodule`."
            )
        if datamodule is None:
            datasplitter_kwargs = dict(datasplitter_kwargs or {})
            if is_ddp_strategy(trainer_kwargs.get("strategy")):
                datasplitter_kwargs.setdefault("distributed_sampler", True)
            if _trains_on_cuda(accelerator):
                datasplitter_kwargs.setdefault("pin_memory", True)
            datamodule = self._data_splitter_cls(
                adata_manager=self.adata_manager,
                datamodule=None,
                train_size=train_size,
                validation_size=validation_size,
                shuffle_set_split=shuffle_set_split,
                n_samples_per_label=n_samples_per_label,
                batch_size=batch_size or settings.batch_size,
                **datasplitter_kwargs,
            )
            if len(self._labeled_indices) != 0:
                callbacks.append(SubSampleLabels(datamodule))
        else:
            self._datamodule = datamodule

        if getattr(self, "module", None) is None:
            raise ValueError("The model has no module; build it from AnnData before train().")
        plan = self._training_plan_cls(self.module, self.n_labels, **plan_kwargs)
        runner = self._train_runner_cls(
            self,
            training_plan=plan,
            data_splitter=datamodule,
            max_epochs=max_epochs,
            accelerator=accelerator,
            devices=devices,
            check_val_every_n_epoch=check_val_every_n_epoch,
            trainer_config=trainer_config,
            callbacks=callbacks,
            **trainer_kwargs,
        )
        return runner()


__all__ = ["SemisupervisedTrainingMixin"]
