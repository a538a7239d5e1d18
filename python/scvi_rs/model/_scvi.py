"""``scvi_rs.model.SCVI``: single-cell Variational Inference."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .._constants import REGISTRY_KEYS
from .._settings import settings
from ..data import AnnDataManager
from ..data._utils import _get_adata_minify_type
from ..data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from ..module import VAE
from .base import (
    ArchesMixin,
    BaseMinifiedModeModelClass,
    EmbeddingMixin,
    RNASeqMixin,
    UnsupervisedTrainingMixin,
    VAEMixin,
)

if TYPE_CHECKING:
    from anndata import AnnData


def _init_library_size(
    adata_manager: AnnDataManager, n_batch: int
) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of the log library size per batch (priors of the library encoder).

    Parameters
    ----------
    adata_manager
        Manager of the training AnnData.
    n_batch
        Number of batches.

    Returns
    -------
    tuple of numpy.ndarray
        ``(library_log_means, library_log_vars)``, each of shape ``(1, n_batch)``;
        batches without cells keep mean 0 and variance 1.
    """
    data = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    batch = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.BATCH_KEY)).reshape(-1)
    library = np.asarray(data.sum(axis=1)).reshape(-1).astype(np.float64)
    if (library == 0).any():
        warnings.warn(
            "This dataset has some empty cells, this might fail inference."
            "Data should be filtered with `scanpy.pp.filter_cells()`",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
    # Empty cells count as log-library 0, as in the reference (masked log filled with 0).
    with np.errstate(divide="ignore"):
        log_library = np.where(library > 0, np.log(np.where(library > 0, library, 1.0)), 0.0)
    means = np.zeros(n_batch)
    variances = np.ones(n_batch)
    for code in np.unique(batch):
        values = log_library[batch == code]
        means[int(code)] = values.mean()
        variances[int(code)] = values.var()
    return means.reshape(1, -1), variances.reshape(1, -1)


class SCVI(
    EmbeddingMixin,
    RNASeqMixin,
    VAEMixin,
    ArchesMixin,
    UnsupervisedTrainingMixin,
    BaseMinifiedModeModelClass,
):
    """single-cell Variational Inference (Lopez et al., 2018).

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
        Number of hidden layers of the encoder and decoder.
    dropout_rate
        Dropout rate of the networks.
    dispersion
        ``"gene"``, ``"gene-batch"``, ``"gene-label"`` or ``"gene-cell"``.
    gene_likelihood
        ``"zinb"``, ``"nb"``, ``"poisson"`` or ``"normal"``.
    use_observed_lib_size
        Use the observed library size instead of a learned one.
    latent_distribution
        ``"normal"`` or ``"ln"`` (logistic normal).
    **kwargs
        Further arguments of :class:`~scvi_rs.module.VAE`.

    Notes
    -----
    Built from a ``registry`` alone (loading without data) with
    ``use_observed_lib_size=False``, the library priors are placeholders (mean 0, variance 1
    per batch) that the loaded weights replace; the reference cannot build such a model.

    Examples
    --------
    >>> adata = scvi_rs.data.synthetic_iid()
    >>> scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
    >>> model = scvi_rs.model.SCVI(adata)
    >>> model.train(max_epochs=5)
    >>> latent = model.get_latent_representation()
    """

    _module_cls = VAE
    _LATENT_QZM_KEY = "scvi_latent_qzm"
    _LATENT_QZV_KEY = "scvi_latent_qzv"

    def __init__(
        self,
        adata: AnnData | None = None,
        registry: dict | None = None,
        n_hidden: int = 128,
        n_latent: int = 10,
        n_layers: int = 1,
        dropout_rate: float = 0.1,
        dispersion: Literal["gene", "gene-batch", "gene-label", "gene-cell"] = "gene",
        gene_likelihood: Literal["zinb", "nb", "poisson", "normal"] = "zinb",
        use_observed_lib_size: bool = True,
        latent_distribution: Literal["normal", "ln"] = "normal",
        **kwargs: Any,
    ) -> None:
        super().__init__(adata, registry)
        self._module_kwargs = {
            "n_hidden": n_hidden,
            "n_latent": n_latent,
            "n_layers": n_layers,
            "dropout_rate": dropout_rate,
            "dispersion": dispersion,
            "gene_likelihood": gene_likelihood,
            "latent_distribution": latent_distribution,
            **kwargs,
        }
        self._model_summary_string = (
            "SCVI model with the following parameters: \n"
            f"n_hidden: {n_hidden}, n_latent: {n_latent}, n_layers: {n_layers}, "
            f"dropout_rate: {dropout_rate}, dispersion: {dispersion}, "
            f"gene_likelihood: {gene_likelihood}, latent_distribution: {latent_distribution}."
        )
        if self._module_init_on_train:
            self.module = None
            warnings.warn(
                "Model was initialized without `adata`. The module will be initialized when "
                "calling `train`. This behavior is experimental and may change in the future.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        else:
            field_registries = self.registry_["field_registries"]
            n_cats_per_cov = None
            cat_state = field_registries.get(REGISTRY_KEYS.CAT_COVS_KEY, {}).get(
                "state_registry", {}
            )
            if cat_state.get("n_cats_per_key") is not None:
                n_cats_per_cov = tuple(cat_state["n_cats_per_key"])
            n_batch = self.summary_stats.n_batch
            use_size_factor_key = self.registry_["setup_args"].get("size_factor_key")
            library_log_means, library_log_vars = None, None
            if (
                not use_size_factor_key
                and self.minified_data_type is None
                and not use_observed_lib_size
            ):
                if self.adata_manager is None:
                    # Built from a registry alone (loading without data): placeholders of the
                    # right shape, replaced by the saved buffers when the weights are loaded.
                    library_log_means = np.zeros((1, n_batch))
                    library_log_vars = np.ones((1, n_batch))
                else:
                    library_log_means, library_log_vars = _init_library_size(
                        self.adata_manager, n_batch
                    )
            self.module = self._module_cls(
                n_input=self.summary_stats.n_vars,
                n_batch=n_batch,
                n_labels=self.summary_stats.n_labels,
                n_continuous_cov=self.summary_stats.get("n_extra_continuous_covs", 0),
                n_cats_per_cov=n_cats_per_cov,
                n_hidden=n_hidden,
                n_latent=n_latent,
                n_layers=n_layers,
                dropout_rate=dropout_rate,
                dispersion=dispersion,
                gene_likelihood=gene_likelihood,
                use_observed_lib_size=use_observed_lib_size,
                latent_distribution=latent_distribution,
                use_size_factor_key=bool(use_size_factor_key),
                library_log_means=library_log_means,
                library_log_vars=library_log_vars,
                **kwargs,
            )
            self.module.minified_data_type = self.minified_data_type
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Register ``adata`` for :class:`SCVI`.

        Parameters
        ----------
        adata
            AnnData with raw counts in ``X`` or in ``layers[layer]``.
        layer
            Layer holding the counts; ``X`` when None.
        batch_key
            ``obs`` column of batch labels.
        labels_key
            ``obs`` column of cell labels.
        size_factor_key
            ``obs`` column of size factors (used instead of the library size).
        categorical_covariate_keys
            ``obs`` columns of extra categorical covariates.
        continuous_covariate_keys
            ``obs`` columns of extra continuous covariates.
        **kwargs
            Passed to :meth:`AnnDataManager.register_fields` (``source_registry``,
            ``extend_categories``, ...).
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
        ]
        minify_type = _get_adata_minify_type(adata)
        if minify_type is not None:  # a minified AnnData: its stored posteriors too
            anndata_fields += cls._get_fields_for_adata_minification(minify_type)
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)

    @classmethod
    def setup_mudata(
        cls,
        mdata: Any,
        rna_layer: str | None = None,
        batch_key: str | None = None,
        labels_key: str | None = None,
        size_factor_key: str | None = None,
        categorical_covariate_keys: list[str] | None = None,
        continuous_covariate_keys: list[str] | None = None,
        modalities: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> None:
        """Register a MuData for :class:`SCVI` (an scvi_rs addition; needs ``mudata``).

        Parameters
        ----------
        mdata
            MuData with raw RNA counts in one modality.
        rna_layer
            Layer of the RNA modality holding the counts; its ``X`` when None.
        batch_key, labels_key, size_factor_key
            ``obs`` columns, as in :meth:`setup_anndata`, of the modality ``modalities``
            names for them (of ``mdata.obs`` when it names none).
        categorical_covariate_keys, continuous_covariate_keys
            ``obs`` columns of extra covariates, read the same way.
        modalities
            ``{argument name: modality}``; ``"rna_layer"`` is required, e.g.
            ``{"rna_layer": "rna", "batch_key": "rna"}``.
        **kwargs
            Passed to :meth:`AnnDataManager.register_fields`.
        """
        setup_method_args = cls._get_setup_method_args(**locals())
        from ..data.fields import _mudata_fields as mu
        from ..data.fields._mudata import require_mudata

        require_mudata()
        modalities = cls._create_modalities_attr_dict(modalities, setup_method_args)
        labels_field = mu.MuDataCategoricalObsField(
            REGISTRY_KEYS.LABELS_KEY, labels_key, mod_key=modalities.labels_key
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


def rna_mudata_fields(
    modalities: Any,
    labels_field: Any,
    rna_layer: str | None,
    batch_key: str | None,
    size_factor_key: str | None,
    categorical_covariate_keys: list[str] | None,
    continuous_covariate_keys: list[str] | None,
) -> list:
    """The MuData fields of an RNA model (counts, batch, ``labels_field``, covariates)."""
    from ..data.fields import _mudata_fields as mu

    return [
        mu.MuDataLayerField(
            REGISTRY_KEYS.X_KEY,
            rna_layer,
            mod_key=modalities.rna_layer,
            is_count_data=True,
            mod_required=True,
        ),
        mu.MuDataCategoricalObsField(
            REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key=modalities.batch_key
        ),
        labels_field,
        mu.MuDataNumericalObsField(
            REGISTRY_KEYS.SIZE_FACTOR_KEY,
            size_factor_key,
            mod_key=modalities.size_factor_key,
            required=False,
        ),
        mu.MuDataCategoricalJointObsField(
            REGISTRY_KEYS.CAT_COVS_KEY,
            categorical_covariate_keys,
            mod_key=modalities.categorical_covariate_keys,
        ),
        mu.MuDataNumericalJointObsField(
            REGISTRY_KEYS.CONT_COVS_KEY,
            continuous_covariate_keys,
            mod_key=modalities.continuous_covariate_keys,
        ),
    ]


def register_mudata_fields(
    cls: Any, mdata: Any, fields: list, setup_method_args: dict, kwargs: dict
) -> None:
    """Register ``fields`` (and a minified MuData's posteriors) on ``mdata`` for ``cls``."""
    minify_type = _get_adata_minify_type(mdata)
    if minify_type is not None:  # stored on the MuData itself (mdata.obsm, mdata.obs)
        fields = fields + cls._get_fields_for_adata_minification(minify_type)
    adata_manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
    adata_manager.register_fields(mdata, **kwargs)
    cls.register_manager(adata_manager)


__all__ = ["SCVI", "_init_library_size"]
