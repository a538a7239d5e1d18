"""Reading the setup dictionaries of scvi-tools < 0.15 (before ``AnnDataManager`` existed).

Such models were saved with ``attr_dict["scvi_setup_dict_"]``: one flat dictionary of
categorical mappings, extra covariates, a data registry keyed by the old names (``batch_indices``,
``cat_covs``, ...) and the summary statistics. ``registry_from_setup_dict`` turns it into
today's registry (one entry per field), which ``AnnDataManager`` can transfer and validate.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from .._constants import REGISTRY_KEYS
from . import _constants
from .fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LabelsWithUnlabeledObsField,
    LayerField,
    NumericalJointObsField,
    ProteinObsmField,
)

# old data-registry key -> today's registry key
LEGACY_REGISTRY_KEY_MAP = {
    "X": REGISTRY_KEYS.X_KEY,
    "batch_indices": REGISTRY_KEYS.BATCH_KEY,
    "labels": REGISTRY_KEYS.LABELS_KEY,
    "cat_covs": REGISTRY_KEYS.CAT_COVS_KEY,
    "cont_covs": REGISTRY_KEYS.CONT_COVS_KEY,
    "protein_expression": REGISTRY_KEYS.PROTEIN_EXP_KEY,
    "ind_x": REGISTRY_KEYS.INDICES_KEY,
}

_ATTRS = _constants._ADATA_ATTRS


def _legacy_entries(setup_dict: dict):
    """(new key, attr_name, attr_key, the old data-registry entry) for each known entry."""
    try:
        data_registry = setup_dict[_constants._DATA_REGISTRY_KEY]
    except KeyError:
        raise ValueError(
            f"Not a legacy scvi-tools setup dictionary: no {_constants._DATA_REGISTRY_KEY!r}."
        ) from None
    for old_key, entry in data_registry.items():
        new_key = LEGACY_REGISTRY_KEY_MAP.get(old_key)
        if new_key is None:
            continue
        yield new_key, entry[_constants._DR_ATTR_NAME], entry[_constants._DR_ATTR_KEY], entry


def _is_totalvi_labels(model_cls: type, new_key: str) -> bool:
    # TOTALVI never registered labels; its legacy setup dicts carry a placeholder column.
    return model_cls.__name__ == "TOTALVI" and new_key == REGISTRY_KEYS.LABELS_KEY


def _setup_args_from_setup_dict(
    model_cls: type, setup_dict: dict, unlabeled_category: str | None
) -> dict[str, Any]:
    """The ``setup_anndata`` arguments that would register an AnnData as ``setup_dict`` says."""
    mappings = setup_dict.get("categorical_mappings", {})
    args: dict[str, Any] = {}
    for new_key, attr_name, attr_key, _ in _legacy_entries(setup_dict):
        if attr_name == _ATTRS.X:
            args["layer"] = None
        elif attr_name == _ATTRS.LAYERS:
            args["layer"] = attr_key
        elif attr_name == _ATTRS.OBS:
            if new_key in (REGISTRY_KEYS.BATCH_KEY, REGISTRY_KEYS.LABELS_KEY):
                if not _is_totalvi_labels(model_cls, new_key):
                    args[f"{new_key}_key"] = mappings[attr_key]["original_key"]
        elif attr_name == _ATTRS.OBSM:
            if new_key == REGISTRY_KEYS.CONT_COVS_KEY:
                args["continuous_covariate_keys"] = setup_dict["extra_continuous_keys"]
            elif new_key == REGISTRY_KEYS.CAT_COVS_KEY:
                args["categorical_covariate_keys"] = setup_dict["extra_categoricals"]["keys"]
            elif new_key == REGISTRY_KEYS.PROTEIN_EXP_KEY:
                args["protein_expression_obsm_key"] = attr_key
                args["protein_names_uns_key"] = "_protein_names"
    if unlabeled_category is not None:
        args["unlabeled_category"] = unlabeled_category
    return {_constants._MODEL_NAME_KEY: model_cls.__name__, _constants._SETUP_ARGS_KEY: args}


def _field_registry(
    model_cls: type,
    setup_dict: dict,
    new_key: str,
    attr_name: str,
    attr_key: str | None,
    unlabeled_category: str | None,
) -> tuple[dict, dict]:
    """(state registry, summary stats) of one field."""
    stats = setup_dict[_constants._SUMMARY_STATS_KEY]
    state: dict[str, Any] = {}
    summary: dict[str, Any] = {}
    if attr_name in (_ATTRS.X, _ATTRS.LAYERS):
        state[LayerField.N_VARS_KEY] = stats["n_vars"]
        summary.update(state)
    elif attr_name == _ATTRS.OBS:
        legacy = setup_dict["categorical_mappings"][attr_key]
        if _is_totalvi_labels(model_cls, new_key):
            state[CategoricalObsField.CATEGORICAL_MAPPING_KEY] = np.zeros(1, dtype=np.int64)
        else:
            state[CategoricalObsField.CATEGORICAL_MAPPING_KEY] = legacy["mapping"]
        state[CategoricalObsField.ORIGINAL_ATTR_KEY] = legacy["original_key"]
        if new_key == REGISTRY_KEYS.BATCH_KEY:
            summary[f"n_{new_key}"] = stats["n_batch"]
        elif new_key == REGISTRY_KEYS.LABELS_KEY:
            summary[f"n_{new_key}"] = stats["n_labels"]
            if unlabeled_category is not None:
                state[LabelsWithUnlabeledObsField.UNLABELED_CATEGORY] = unlabeled_category
    elif attr_name == _ATTRS.OBSM:
        if new_key == REGISTRY_KEYS.CONT_COVS_KEY:
            columns = np.asarray(setup_dict["extra_continuous_keys"]).copy()
            state[NumericalJointObsField.COLUMNS_KEY] = columns
            summary[f"n_{new_key}"] = columns.shape[0]
        elif new_key == REGISTRY_KEYS.CAT_COVS_KEY:
            legacy = copy.deepcopy(setup_dict["extra_categoricals"])
            keys = legacy.pop("keys")
            state.update(legacy)
            state[CategoricalJointObsField.FIELD_KEYS_KEY] = keys
            summary[f"n_{new_key}"] = len(keys)
        elif new_key == REGISTRY_KEYS.PROTEIN_EXP_KEY:
            names = setup_dict["protein_names"]
            state[ProteinObsmField.COLUMN_NAMES_KEY] = np.asarray(names).copy()
            if "totalvi_batch_mask" in setup_dict:
                state[ProteinObsmField.PROTEIN_BATCH_MASK] = copy.copy(
                    setup_dict["totalvi_batch_mask"]
                )
            summary[f"n_{new_key}"] = len(names)
    return state, summary


def registry_from_setup_dict(
    model_cls: type, setup_dict: dict, unlabeled_category: str | None = None
) -> dict:
    """Convert a setup dictionary of scvi-tools < 0.15 into a registry.

    Only meant for loading models saved in that format.

    Parameters
    ----------
    model_cls
        Model class the setup dictionary was made for.
    setup_dict
        Setup dictionary written by the former ``setup_anndata``.
    unlabeled_category
        Unlabeled category of :class:`~scvi.model.SCANVI` models.

    Returns
    -------
    The registry: ``scvi_version``, ``model_name``, ``setup_args`` and one
    ``field_registries`` entry per registered field. Legacy ``_scvi_*`` column names in the
    setup dictionary's data registry are renamed in place to today's (``_scvi_batch``, ...).
    """
    field_registries: dict[str, dict] = {}
    for new_key, attr_name, attr_key, entry in _legacy_entries(setup_dict):
        if attr_key is not None and attr_key.startswith("_scvi"):
            entry[_constants._DR_ATTR_KEY] = f"_scvi_{new_key}"
        state, summary = _field_registry(
            model_cls, setup_dict, new_key, attr_name, attr_key, unlabeled_category
        )
        field_registries[new_key] = {
            _constants._DATA_REGISTRY_KEY: entry,
            _constants._STATE_REGISTRY_KEY: state,
            _constants._SUMMARY_STATS_KEY: summary,
        }
    registry = {
        _constants._SCVI_VERSION_KEY: setup_dict[_constants._SCVI_VERSION_KEY],
        _constants._FIELD_REGISTRIES_KEY: field_registries,
    }
    registry.update(_setup_args_from_setup_dict(model_cls, setup_dict, unlabeled_category))
    return registry
