"""scvi-tools' ``scvi.model.base._save_load`` helpers, with the reference's signatures.

Model code outside scvi-tools imports these private helpers by this path. They are thin
layers over the loaders of :mod:`._base_model`, which read files with the allow-list
unpickler; the behaviour follows the reference's (a ``var_names`` mismatch warns here,
where :meth:`BaseModelClass.load` refuses it for the modalities a model reads).
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ..._settings import settings
from ._base_model import _get_var_names, _load_legacy_files, _load_saved_files
from ._base_model import _initialize_model as _build_model
from ._constants import SAVE_KEYS

_MISMATCH = (
    "`var_names` for the loaded `model` does not match those used to train the model. For "
    "valid results, the former should match the latter."
)


def _load_legacy_saved_files(
    dir_path: str, file_name_prefix: str, load_adata: bool
) -> tuple[dict, np.ndarray, dict, Any]:
    """``(state dict, var names, attributes, adata)`` of a model saved by scvi-tools < 0.15.

    ``adata`` is None unless ``load_adata``, and False when no data was saved beside it.
    """
    state_dict, var_names, attr_dict = _load_legacy_files(dir_path, file_name_prefix)
    adata: Any = None
    if load_adata:
        path = os.path.join(dir_path, f"{file_name_prefix}{SAVE_KEYS.ADATA_FNAME}")
        if os.path.exists(path):
            import anndata

            adata = anndata.read_h5ad(path)
        else:
            warnings.warn(
                "Save path contains no saved anndata and no adata was passed. Model will be "
                "loaded without anndata.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            adata = False
    return state_dict, var_names, attr_dict, adata


def _initialize_model(
    cls: type, adata: Any, registry: dict, attr_dict: dict, datamodule: Any = None
) -> Any:
    """Build ``cls`` from saved ``init_params_`` (and a ``datamodule``, when given)."""
    if datamodule:
        init_params = dict(attr_dict.get("init_params_", {}))
        non_kwargs = dict(init_params.get("non_kwargs", {}))
        non_kwargs["datamodule"] = datamodule
        init_params["non_kwargs"] = non_kwargs
        attr_dict = {**attr_dict, "init_params_": init_params}
    return _build_model(cls, adata or None, registry, attr_dict)


def _validate_var_names(
    adata: Any,
    source_var_names: np.ndarray | dict,
    load_var_names: np.ndarray | dict | None = None,
) -> None:
    """Warn when the variables of ``adata`` (or ``load_var_names``) are not the saved ones.

    Parameters
    ----------
    adata
        AnnData or MuData the model is loaded with.
    source_var_names
        Variable names saved with the model: an array, or per modality a dict.
    load_var_names
        Names to compare instead of those of ``adata``.
    """
    per_modality = isinstance(source_var_names, dict)
    if load_var_names is None:
        from ...data._utils import _is_mudata

        legacy = _is_mudata(adata) and not per_modality
        load_var_names = _get_var_names(adata, legacy_mudata_format=legacy)
    if per_modality:
        loaded = load_var_names if isinstance(load_var_names, dict) else {}
        same = all(
            loaded.get(mod) is not None and np.array_equal(names, loaded[mod])
            for mod, names in source_var_names.items()
        )
    else:
        same = not isinstance(load_var_names, dict) and np.array_equal(
            source_var_names, load_var_names
        )
    if not same:
        warnings.warn(_MISMATCH, UserWarning, stacklevel=settings.warnings_stacklevel)


__all__ = [
    "_get_var_names",
    "_initialize_model",
    "_load_legacy_saved_files",
    "_load_saved_files",
    "_validate_var_names",
]
