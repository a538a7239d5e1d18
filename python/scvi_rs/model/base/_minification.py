"""Minified models: the AnnData keeps the latent posterior instead of the counts.

``minify_adata`` replaces a model's AnnData by a copy whose count matrices are empty
(all-zero CSR) and which stores, per cell, the latent posterior mean and variance
(``obsm``), the observed library size (``obs["observed_lib_size"]``) and the minification
type (``uns["_scvi_adata_minify_type"]``); the model's manager registers these as extra
fields, and the module then infers from them instead of encoding counts. With
``"latent_posterior_parameters_with_counts"`` the counts are kept, so queries that need them
(ELBO, reconstruction error, training) still run.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp

from ..._constants import REGISTRY_KEYS
from ...data import _constants as _data_constants
from ...data import fields
from ...data._constants import _ADATA_MINIFY_TYPE_UNS_KEY, _SCVI_UUID_KEY, ADATA_MINIFY_TYPE
from ...data._utils import _is_mudata
from ._base_model import BaseModelClass

if TYPE_CHECKING:
    from anndata import AnnData

    from ...data import AnnDataManager

logger = logging.getLogger("scvi_rs")

# obsm keys that mark an AnnData as carrying latent posteriors (the cellxgene census layout)
_CENSUS_LATENT_QZM_KEY = "_scvi_latent_qzm"
_CENSUS_LATENT_QZV_KEY = "_scvi_latent_qzv"


def _check_minify_type(minified_data_type: str) -> None:
    if minified_data_type not in ADATA_MINIFY_TYPE:
        raise NotImplementedError(
            f"Minification method {minified_data_type} is not supported (supported: "
            f"{', '.join(ADATA_MINIFY_TYPE)})."
        )


def _empty_like(shape: tuple[int, int]) -> sp.csr_matrix:
    return sp.csr_matrix(shape, dtype=np.float32)


def get_minified_adata_scrna(adata_manager: AnnDataManager, keep_count_data: bool = False) -> Any:
    """A copy of the manager's AnnData whose counts are dropped unless ``keep_count_data``.

    Parameters
    ----------
    adata_manager
        Manager of the AnnData to minify.
    keep_count_data
        Keep ``X`` and the layers as they are.

    Returns
    -------
    AnnData
        The copy: without counts, ``X`` and every layer are all-zero CSR matrices of the
        registered count matrix's shape and ``raw`` is removed.
    """
    adata = adata_manager.adata.copy()
    if keep_count_data:
        return adata
    del adata.raw
    shape = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY).shape
    adata.X = _empty_like(shape)
    adata.layers = {layer: _empty_like(shape) for layer in adata_manager.adata.layers}
    return adata


def get_minified_mudata(adata_manager: AnnDataManager, keep_count_data: bool = False) -> Any:
    """A copy of the manager's MuData whose modalities' counts are dropped unless kept.

    Parameters
    ----------
    adata_manager
        Manager of the MuData to minify.
    keep_count_data
        Keep every modality's ``X`` and layers.

    Returns
    -------
    MuData
        The copy: without counts, each modality's ``X`` and layers are all-zero CSR
        matrices of its own shape and its ``raw`` is removed.
    """
    mdata = adata_manager.adata.copy()
    if keep_count_data:
        return mdata
    for name in mdata.mod.keys():
        modality = mdata.mod[name]
        del modality.raw
        shape = modality.X.shape
        modality.X = _empty_like(shape)
        if len(modality.layers) > 0:
            modality.layers = {layer: _empty_like(shape) for layer in modality.layers}
    return mdata


def minification_fields(
    minified_data_type: str, qzm_key: str, qzv_key: str, observed_lib_size_key: str
) -> list:
    """The fields a minified AnnData registers on top of the model's setup fields.

    Parameters
    ----------
    minified_data_type
        One of ``ADATA_MINIFY_TYPE``.
    qzm_key, qzv_key
        ``obsm`` keys of the latent posterior mean and variance.
    observed_lib_size_key
        ``obs`` column of the observed library size.

    Returns
    -------
    list
        ``ObsmField`` (mean), ``ObsmField`` (variance), ``NumericalObsField`` (library size)
        and ``StringUnsField`` (the minification type), in the reference's order.
    """
    _check_minify_type(minified_data_type)
    return [
        fields.ObsmField(REGISTRY_KEYS.LATENT_QZM_KEY, qzm_key),
        fields.ObsmField(REGISTRY_KEYS.LATENT_QZV_KEY, qzv_key),
        fields.NumericalObsField(REGISTRY_KEYS.OBSERVED_LIB_SIZE, observed_lib_size_key),
        fields.StringUnsField(REGISTRY_KEYS.MINIFY_TYPE_KEY, _ADATA_MINIFY_TYPE_UNS_KEY),
    ]


def _registry_supports_minified(registry: dict) -> bool:
    field_registries = registry.get(_data_constants._FIELD_REGISTRIES_KEY, {})
    return REGISTRY_KEYS.MINIFY_TYPE_KEY in field_registries


def _has_census_latent_params(adata: Any) -> bool:
    obsm = getattr(adata, "obsm", None)
    if obsm is None:
        return False
    return _CENSUS_LATENT_QZM_KEY in obsm and _CENSUS_LATENT_QZV_KEY in obsm


def _looks_minified(adata: Any) -> bool:
    """An all-empty sparse ``X``: what minification leaves in place of the counts."""
    matrix = getattr(adata, "X", None)
    return sp.issparse(matrix) and matrix.nnz == 0


def check_minified_adata_at_load(registry: dict, adata: Any) -> None:
    """Refuse loading a model saved without minification onto minified-looking data.

    A model saved before minification has no way to check that a minified AnnData was set
    up like its own data. Data carrying the census latent parameters
    (``obsm["_scvi_latent_qzm"]``/``["_scvi_latent_qzv"]``) are allowed: ``minify_adata``
    can be called on the loaded model.

    Parameters
    ----------
    registry
        The saved model's registry.
    adata
        The AnnData (or MuData: its first modality is checked) the model is loaded with.

    Raises
    ------
    ValueError
        If ``adata`` has an empty sparse ``X``, the registry has no minification field
        and ``adata`` carries no latent parameters.
    """
    if _registry_supports_minified(registry):
        return
    if _is_mudata(adata):
        first = next(iter(adata.mod.values()))
        if _looks_minified(first) and not _has_census_latent_params(first):
            raise ValueError(
                "It appears you are trying to load a non-minified model with minified mudata"
            )
        return
    if _looks_minified(adata) and not _has_census_latent_params(adata):
        raise ValueError(
            "It appears you are trying to load a non-minified model with minified adata"
        )


def refuse_minified_data_without_support(model: Any, adata: Any) -> None:
    """Raise ``NotImplementedError`` when a model class without minified mode gets minified data.

    Parameters
    ----------
    model
        The model being built.
    adata
        Its AnnData (or None).
    """
    if adata is None or getattr(adata, "uns", None) is None:
        return
    if _ADATA_MINIFY_TYPE_UNS_KEY in adata.uns and not isinstance(
        model, (BaseMinifiedModeModelClass, BaseMudataMinifiedModeModelClass)
    ):
        raise NotImplementedError(
            f"The {type(model).__name__} model currently does not support minified data."
        )


class BaseMinifiedModeModelClass(BaseModelClass):
    """Base of models that can run on a minified AnnData (see :meth:`minify_adata`)."""

    _OBSERVED_LIB_SIZE_KEY = "observed_lib_size"
    _LATENT_QZM_KEY = "latent_qzm"
    _LATENT_QZV_KEY = "latent_qzv"

    @property
    def minified_data_type(self) -> str | None:
        """The minification type registered with the model's AnnData, or None."""
        manager = self.adata_manager
        if manager is None or manager.adata is None:
            return None
        if REGISTRY_KEYS.MINIFY_TYPE_KEY not in manager.data_registry:
            return None
        return manager.get_from_registry(REGISTRY_KEYS.MINIFY_TYPE_KEY)

    @classmethod
    def _minification_fields(cls, minified_data_type: str) -> list:
        return minification_fields(
            minified_data_type,
            cls._LATENT_QZM_KEY,
            cls._LATENT_QZV_KEY,
            cls._OBSERVED_LIB_SIZE_KEY,
        )

    def _check_can_minify(self, minified_data_type: str) -> None:
        _check_minify_type(minified_data_type)
        if not getattr(self.module, "use_observed_lib_size", True):
            raise ValueError(
                "Minification is not supported for models that do not use observed library size."
            )

    def _store_minified_values(
        self, minified: Any, minified_data_type: str, qzm_key: str, qzv_key: str
    ) -> None:
        """Write the posterior, library size and type onto ``minified`` (a fresh copy)."""
        obsm = self.adata.obsm
        for key in (qzm_key, qzv_key):
            if key not in obsm:
                raise KeyError(
                    f"adata.obsm has no '{key}': store the latent posterior first, e.g. "
                    "`qzm, qzv = model.get_latent_representation(give_mean=False, "
                    f"return_dist=True)` then `model.adata.obsm['{key}'] = ...`."
                )
        # a new object: it gets its own _scvi_uuid when the model registers it
        del minified.uns[_SCVI_UUID_KEY]
        minified.uns[_ADATA_MINIFY_TYPE_UNS_KEY] = minified_data_type
        minified.obsm[self._LATENT_QZM_KEY] = obsm[qzm_key]
        minified.obsm[self._LATENT_QZV_KEY] = obsm[qzv_key]
        counts = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        minified.obs[self._OBSERVED_LIB_SIZE_KEY] = np.squeeze(np.asarray(counts.sum(axis=-1)))

    @property
    def summary_string(self) -> str:
        """The model's summary with its training and minification status."""
        return (
            f"{super().summary_string}\nModel's adata is minified?: "
            f"{self.minified_data_type is not None}"
        )

    def minify_adata(
        self,
        minified_data_type: str = ADATA_MINIFY_TYPE.LATENT_POSTERIOR,
        use_latent_qzm_key: str = "X_latent_qzm",
        use_latent_qzv_key: str = "X_latent_qzv",
    ) -> None:
        """Replace the model's AnnData by a minified copy.

        The copy keeps ``obs``, ``var``, ``obsm``, ``varm`` and ``uns``; without counts its
        ``X`` and layers are empty. The latent posterior mean and variance (read from
        ``adata.obsm[use_latent_qzm_key]`` and ``[use_latent_qzv_key]``) go to
        ``obsm[cls._LATENT_QZM_KEY]`` and ``[cls._LATENT_QZV_KEY]``, the observed library
        size to ``obs["observed_lib_size"]`` and the type to
        ``uns["_scvi_adata_minify_type"]``. The original AnnData is left unchanged.

        Parameters
        ----------
        minified_data_type
            ``"latent_posterior_parameters"`` (drop the counts) or
            ``"latent_posterior_parameters_with_counts"`` (keep them).
        use_latent_qzm_key
            ``obsm`` key of the latent posterior mean.
        use_latent_qzv_key
            ``obsm`` key of the latent posterior variance.

        Raises
        ------
        NotImplementedError
            For an unknown ``minified_data_type``.
        ValueError
            If the module learns the library size (``use_observed_lib_size=False``).
        KeyError
            If the posterior keys are not in ``adata.obsm``.
        """
        self._check_can_minify(minified_data_type)
        keep_counts = minified_data_type == ADATA_MINIFY_TYPE.LATENT_POSTERIOR_WITH_COUNTS
        is_mudata = _is_mudata(self.adata)  # a model set up with setup_mudata
        minify = get_minified_mudata if is_mudata else get_minified_adata_scrna
        minified = minify(self.adata_manager, keep_count_data=keep_counts)
        self._store_minified_values(
            minified, minified_data_type, use_latent_qzm_key, use_latent_qzv_key
        )
        self._update_adata_and_manager_post_minification(minified, minified_data_type)
        if is_mudata:  # the transferred registry must still load through setup_mudata
            self.adata_manager.registry[_data_constants._SETUP_METHOD_NAME] = "setup_mudata"
        self.module.minified_data_type = minified_data_type

    @classmethod
    def _get_fields_for_adata_minification(cls, minified_data_type: str) -> list:
        """The extra fields registered for a minified AnnData of ``minified_data_type``."""
        return cls._minification_fields(minified_data_type)

    def _update_adata_and_manager_post_minification(
        self, minified_adata: AnnData, minified_data_type: str
    ) -> None:
        """Register ``minified_adata`` (setup transferred, minification fields added) as the
        model's AnnData.

        Parameters
        ----------
        minified_adata
            The minified copy of :attr:`adata`.
        minified_data_type
            Its minification type.
        """
        self._validate_anndata(minified_adata)
        manager = self.get_anndata_manager(minified_adata, required=True)
        manager.register_new_fields(self._get_fields_for_adata_minification(minified_data_type))
        self.adata = minified_adata


class BaseMudataMinifiedModeModelClass(BaseModelClass):
    """Base of MuData models that can run on a minified MuData (see :meth:`minify_mudata`)."""

    # shared with the AnnData version (the reference's class hierarchy has no common base)
    _OBSERVED_LIB_SIZE_KEY = BaseMinifiedModeModelClass._OBSERVED_LIB_SIZE_KEY
    _LATENT_QZM_KEY = BaseMinifiedModeModelClass._LATENT_QZM_KEY
    _LATENT_QZV_KEY = BaseMinifiedModeModelClass._LATENT_QZV_KEY
    minified_data_type = BaseMinifiedModeModelClass.minified_data_type
    _minification_fields = BaseMinifiedModeModelClass.__dict__["_minification_fields"]
    _check_can_minify = BaseMinifiedModeModelClass._check_can_minify
    _store_minified_values = BaseMinifiedModeModelClass._store_minified_values

    @property
    def summary_string(self) -> str:
        """The model's summary with its training and minification status."""
        return (
            f"{super().summary_string}\nModel's adata is minified?: "
            f"{self.minified_data_type is not None}"
        )

    def minify_mudata(
        self,
        minified_data_type: str = ADATA_MINIFY_TYPE.LATENT_POSTERIOR,
        use_latent_qzm_key: str = "X_latent_qzm",
        use_latent_qzv_key: str = "X_latent_qzv",
    ) -> None:
        """Replace the model's MuData by a minified copy (see ``minify_adata``).

        The latent posterior and library size are stored on the MuData itself
        (``mdata.obsm``, ``mdata.obs``); without counts every modality's ``X`` and layers
        are emptied.

        Parameters
        ----------
        minified_data_type
            ``"latent_posterior_parameters"`` or
            ``"latent_posterior_parameters_with_counts"``.
        use_latent_qzm_key
            ``mdata.obsm`` key of the latent posterior mean.
        use_latent_qzv_key
            ``mdata.obsm`` key of the latent posterior variance.

        Raises
        ------
        ValueError
            If the model's data were not set up with ``setup_mudata``, or the module learns
            the library size.
        NotImplementedError
            For an unknown ``minified_data_type``.
        """
        method = self.adata_manager.registry.get(_data_constants._SETUP_METHOD_NAME)
        if method != "setup_mudata":
            raise ValueError(
                f"MuData must be registered with {type(self).__name__}.setup_mudata to use "
                f"this method (the data were set up with {method})."
            )
        self._check_can_minify(minified_data_type)
        keep_counts = minified_data_type == ADATA_MINIFY_TYPE.LATENT_POSTERIOR_WITH_COUNTS
        minified = get_minified_mudata(self.adata_manager, keep_count_data=keep_counts)
        self._store_minified_values(
            minified, minified_data_type, use_latent_qzm_key, use_latent_qzv_key
        )
        self._update_mudata_and_manager_post_minification(minified, minified_data_type)
        self.module.minified_data_type = minified_data_type

    @classmethod
    def _get_fields_for_mudata_minification(cls, minified_data_type: str) -> list:
        """The extra fields registered for a minified MuData (on the MuData itself)."""
        return cls._minification_fields(minified_data_type)

    def _update_mudata_and_manager_post_minification(
        self, minified_adata: Any, minified_data_type: str
    ) -> None:
        """Register the minified MuData as the model's data (see the AnnData version)."""
        self._validate_anndata(minified_adata)
        manager = self.get_anndata_manager(minified_adata, required=True)
        manager.register_new_fields(self._get_fields_for_mudata_minification(minified_data_type))
        manager.registry[_data_constants._SETUP_METHOD_NAME] = "setup_mudata"
        self.adata = minified_adata


__all__ = [
    "BaseMinifiedModeModelClass",
    "BaseMudataMinifiedModeModelClass",
    "check_minified_adata_at_load",
    "get_minified_adata_scrna",
    "get_minified_mudata",
    "minification_fields",
    "refuse_minified_data_without_support",
]
