"""``scvi_rs.model.SCANVI``: single-cell ANnotation using Variational Inference."""

from __future__ import annotations

import copy
import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._constants import REGISTRY_KEYS
from .._settings import settings
from ..data import AnnDataManager
from ..data._utils import _get_adata_minify_type, _is_minified
from ..data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LabelsWithUnlabeledObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from ..module import SCANVAE
from ..train._semisupervised_trainingplan import SemiSupervisedTrainingPlan
from ._scvi import _init_library_size, register_mudata_fields, rna_mudata_fields
from .base import (
    ArchesMixin,
    BaseMinifiedModeModelClass,
    RNASeqMixin,
    VAEMixin,
)
from .base._semisupervised_training_mixin import SemisupervisedTrainingMixin

if TYPE_CHECKING:
    from anndata import AnnData

    from ._scvi import SCVI

_SETUP_ARGS_KEY = "setup_args"
_LATENT_POSTERIOR = "latent_posterior_parameters"


def _n_cats_per_cov(registry: dict) -> tuple[int, ...] | None:
    state = (
        registry["field_registries"].get(REGISTRY_KEYS.CAT_COVS_KEY, {}).get("state_registry", {})
    )
    n_cats = state.get("n_cats_per_key")
    return tuple(n_cats) if n_cats is not None else None


def _scvi_init_kwargs(scvi_model: SCVI) -> dict[str, Any]:
    """The ``__init__`` arguments a trained SCVI model was built with, flattened."""
    init_params = scvi_model.init_params_
    params = dict(init_params.get("non_kwargs", {}))
    for group in init_params.get("kwargs", {}).values():
        params.update(group)
    return params


class SCANVI(
    RNASeqMixin,
    SemisupervisedTrainingMixin,
    VAEMixin,
    ArchesMixin,
    BaseMinifiedModeModelClass,
):
    """single-cell ANnotation using Variational Inference (Xu et al., 2021).

    A VAE whose latent code depends on the cell's label, trained on labelled and
    unlabelled cells together (the M1 + M2 model of Kingma et al., 2014); its classifier
    predicts the labels of the unlabelled cells.

    Parameters
    ----------
    adata
        AnnData registered with :meth:`setup_anndata`.
    registry
        A saved registry, to build the model without data.
    n_hidden
        Number of nodes per hidden layer.
    n_latent
        Dimensionality of the latent space.
    n_layers
        Number of hidden layers of the networks.
    dropout_rate
        Dropout rate of the networks.
    dispersion
        ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``.
    gene_likelihood
        ``"zinb"``, ``"nb"`` or ``"poisson"``.
    use_observed_lib_size
        Use the observed library size instead of a learned one.
    linear_classifier
        Classify with a single linear layer instead of a multi-layer perceptron.
    datamodule
        A data module with ``labels``, to build the model without AnnData.
    **model_kwargs
        Further arguments of :class:`~scvi_rs.module.SCANVAE`.

    Examples
    --------
    >>> adata = scvi_rs.data.synthetic_iid()
    >>> scvi_rs.model.SCANVI.setup_anndata(adata, "labels", "label_0", batch_key="batch")
    >>> model = scvi_rs.model.SCANVI(adata)
    >>> model.train(max_epochs=5)
    >>> adata.obs["predicted"] = model.predict()
    """

    _module_cls = SCANVAE
    _training_plan_cls = SemiSupervisedTrainingPlan
    _LATENT_QZM_KEY = "scanvi_latent_qzm"
    _LATENT_QZV_KEY = "scanvi_latent_qzv"

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: Literal["zinb", "nb", "poisson"] = "zinb",
        use_observed_lib_size: bool = True,
        linear_classifier: bool = False,
        datamodule: Any = None,
        **model_kwargs: Any,
    ) -> None:
        if adata is None and registry is None:
            raise ValueError(
                "SCANVI needs `adata` (set up with SCANVI.setup_anndata) or a `registry`."
            )
        super().__init__(adata, registry)
        self._set_indices_and_labels(datamodule)
        n_labels = self._n_labels_without_unlabeled(adata)

        n_batch = self.summary_stats.n_batch
        use_size_factor_key = self.registry_[_SETUP_ARGS_KEY].get("size_factor_key")
        library_log_means, library_log_vars = None, None
        if (
            not use_size_factor_key
            and self.minified_data_type != _LATENT_POSTERIOR
            and not use_observed_lib_size
        ):
            if self.adata_manager is None:
                # placeholders of the right shape, replaced by the loaded weights
                library_log_means, library_log_vars = np.zeros((1, n_batch)), np.ones((1, n_batch))
            else:
                library_log_means, library_log_vars = _init_library_size(
                    self.adata_manager, n_batch
                )

        self.module = self._module_cls(
            n_input=self.summary_stats.n_vars,
            n_batch=n_batch,
            n_labels=n_labels,
            n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
            n_cats_per_cov=_n_cats_per_cov(self.registry_),
            n_hidden=n_hidden,
            n_latent=n_latent,
            n_layers=n_layers,
            dropout_rate=dropout_rate,
            dispersion=dispersion,
            gene_likelihood=gene_likelihood,
            use_size_factor_key=bool(use_size_factor_key),
            use_observed_lib_size=use_observed_lib_size,
            library_log_means=library_log_means,
            library_log_vars=library_log_vars,
            linear_classifier=linear_classifier,
            **model_kwargs,
        )
        self.module.minified_data_type = self.minified_data_type

        self.unsupervised_history_ = None
        self.semisupervised_history_ = None
        self._model_summary_string = (
            "ScanVI Model with the following params: \n"
            f"unlabeled_category: {self.unlabeled_category_}, n_hidden: {n_hidden}, "
            f"n_latent: {n_latent}, n_layers: {n_layers}, dropout_rate: {dropout_rate}, "
            f"dispersion: {dispersion}, gene_likelihood: {gene_likelihood}"
        )
        self.init_params_ = self._get_init_params(locals())
        self.was_pretrained = False
        self.n_labels = n_labels

    def _n_labels_without_unlabeled(self, adata: AnnData | None) -> int:
        """Number of labels the classifier predicts (the unlabelled category left out)."""
        n_registered = self.summary_stats.n_labels
        if self.unlabeled_category_ is not None and self.unlabeled_category_ in set(
            self._label_mapping
        ):
            # the unlabelled category is always registered last, so leaving it out keeps codes
            return n_registered - 1
        if adata is not None and len(set(self.labels_)) == n_registered - 1:
            return n_registered - 1
        return n_registered

    @classmethod
    def from_scvi_model(
        cls,
        scvi_model: SCVI,
        unlabeled_category: str,
        labels_key: str | None = None,
        adata: AnnData | None = None,
        registry: dict | None = None,
        **scanvi_kwargs: Any,
    ) -> SCANVI:
        """Build a SCANVI model initialised with the weights of a (trained) SCVI model.

        Parameters
        ----------
        scvi_model
            The pretrained :class:`~scvi_rs.model.SCVI` model.
        unlabeled_category
            Value of ``labels_key`` marking unlabelled cells.
        labels_key
            ``obs`` column of labels; required when ``scvi_model`` was set up without one
            (otherwise that model's labels column is used).
        adata
            AnnData to set up (with the SCVI model's setup); the SCVI model's own by
            default. Its genes and batches must be those of ``scvi_model``.
        registry
            Registry of a data module (used when no AnnData is available).
        **scanvi_kwargs
            Further :class:`SCANVI` arguments; ones the SCVI model already fixed are
            ignored with a warning.

        Returns
        -------
        SCANVI
            The new model, ``was_pretrained=True`` (fewer default epochs).
        """
        scvi_model._check_if_trained(message="Passed in scvi model hasn't been trained yet.")
        scvi_params = _scvi_init_kwargs(scvi_model)
        scanvi_kwargs = dict(scanvi_kwargs)
        for name in list(scanvi_kwargs):
            if name in scvi_params:
                warnings.warn(
                    f"Ignoring param '{name}' as it was already passed in to pretrained SCVI "
                    f"model with value {scvi_params[name]}.",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
                del scanvi_kwargs[name]
        if scvi_model.minified_data_type == _LATENT_POSTERIOR:
            raise ValueError(
                "We cannot use the given scVI model to initialize scANVI because it has "
                "minified adata. Keep counts when minifying model using "
                "minified_data_type='latent_posterior_parameters_with_counts'."
            )

        if adata is None:
            adata = scvi_model.adata
        else:
            if _is_minified(adata):
                raise ValueError("Please provide a non-minified `adata` to initialize scANVI.")
            # genes and batches must match the pretrained model (a transfer fails otherwise)
            scvi_model._validate_anndata(adata)

        setup_args = copy.deepcopy(scvi_model.registry[_SETUP_ARGS_KEY])
        if setup_args.get("labels_key") is None:
            if labels_key is None:
                raise ValueError(
                    "A `labels_key` is necessary as the scVI model was initialized without one."
                )
            setup_args["labels_key"] = labels_key
        if adata is not None:
            cls.setup_anndata(
                adata, unlabeled_category=unlabeled_category, use_minified=False, **setup_args
            )
        scanvi_model = cls(adata, registry or scvi_model.registry, **scvi_params, **scanvi_kwargs)
        scanvi_model.module.load_state_dict(scvi_model.module.state_dict(), strict=False)
        scanvi_model.was_pretrained = True
        return scanvi_model

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        labels_key: str,
        unlabeled_category: str,
        layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        use_minified: bool = True,
        **kwargs: Any,
    ) -> None:
        """Register ``adata`` for :class:`SCANVI`.

        Parameters
        ----------
        adata
            AnnData with raw counts in ``X`` or in ``layers[layer]``.
        labels_key
            ``obs`` column of cell labels.
        unlabeled_category
            Value of ``labels_key`` marking unlabelled cells (it need not occur: then every
            cell is labelled).
        layer
            Layer holding the counts; ``X`` when None.
        batch_key
            ``obs`` column of batch labels.
        size_factor_key
            ``obs`` column of size factors (used instead of the library size).
        categorical_covariate_keys
            ``obs`` columns of extra categorical covariates.
        continuous_covariate_keys
            ``obs`` columns of extra continuous covariates.
        use_minified
            Register the stored posteriors of a minified ``adata`` (the minification
            fields) when it is minified.
        **kwargs
            Passed to :meth:`AnnDataManager.register_fields` (``source_registry``,
            ``extend_categories``, ``allow_missing_labels``, ...).
        """
        if labels_key is None:
            raise ValueError(
                "SCANVI.setup_anndata needs `labels_key`, the obs column holding the labels."
            )
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            LabelsWithUnlabeledObsField(REGISTRY_KEYS.LABELS_KEY, labels_key, unlabeled_category),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        minify_type = _get_adata_minify_type(adata)
        if use_minified and minify_type is not None:  # a minified AnnData: its posteriors too
            anndata_fields += cls._get_fields_for_adata_minification(minify_type)
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def setup_mudata(
        cls,
        mdata: Any,
        labels_key: str,
        unlabeled_category: str,
        rna_layer: str | None = None,
        batch_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Register a MuData for :class:`SCANVI` (an scvi_rs addition; needs ``mudata``).

        Parameters
        ----------
        mdata
            MuData with raw RNA counts in one modality.
        labels_key
            ``obs`` column of cell labels.
        unlabeled_category
            Value of ``labels_key`` marking unlabelled cells.
        rna_layer
            Layer of the RNA modality holding the counts; its ``X`` when None.
        batch_key, size_factor_key
            ``obs`` columns, as in :meth:`setup_anndata`, of the modality ``modalities``
            names for them (of ``mdata.obs`` when it names none).
        categorical_covariate_keys, continuous_covariate_keys
            ``obs`` columns of extra covariates, read the same way.
        modalities
            ``{argument name: modality}``; ``"rna_layer"`` is required, e.g.
            ``{"rna_layer": "rna", "labels_key": "rna"}``.
        **kwargs
            Passed to :meth:`AnnDataManager.register_fields`.
        """
        if labels_key is None:
            raise ValueError(
                "SCANVI.setup_mudata needs `labels_key`, the obs column holding the labels."
            )
        setup_method_args = cls._get_setup_method_args(**locals())
        from ..data.fields import _mudata_fields as mu
        from ..data.fields._mudata import require_mudata

        require_mudata()
        modalities = cls._create_modalities_attr_dict(modalities, setup_method_args)
        labels_field = mu.MuDataLabelsWithUnlabeledObsField(
            REGISTRY_KEYS.LABELS_KEY,
            labels_key,
            unlabeled_category,
            mod_key=modalities.labels_key,
        )
        fields = rna_mudata_fields(
            modalities,
            labels_field,
            rna_layer,
            batch_key,
            size_factor_key,
            categorical_covariate_keys,
            continuous_covariate_keys,
        )
        register_mudata_fields(cls, mdata, fields, setup_method_args, kwargs)


__all__ = ["SCANVI"]
