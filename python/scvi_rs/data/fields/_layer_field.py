"""``LayerField``: ``adata.X`` or one of ``adata.layers``."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from ..._constants import REGISTRY_KEYS
from ..._settings import settings
from .. import _constants
from .._utils import (
    _check_fragment_counts,
    _check_nonnegative_integers,
    _verify_and_correct_data_format,
)
from .._value_checks import check_count_values
from ._base_field import BaseAnnDataField

if TYPE_CHECKING:
    from anndata import AnnData


class LayerField(BaseAnnDataField):
    """A count (or other) matrix stored in ``adata.X`` or ``adata.layers[layer]``.

    Parameters
    ----------
    registry_key
        Key to register the field under.
    layer
        Key in ``adata.layers``; ``None`` means ``adata.X``.
    is_count_data
        Warn when the data do not look like non-negative integer counts.
    correct_data_format
        Replace a dense matrix that is not C-contiguous by a C-contiguous copy.
    check_fragment_counts
        Warn when the data do not look like fragment counts.
    """

    N_OBS_KEY = "n_obs"
    N_CELLS_KEY = "n_cells"
    N_VARS_KEY = "n_vars"
    COLUMN_NAMES_KEY = "column_names"

    def __init__(
        self,
        registry_key: str,
        layer: str | None,
        is_count_data: bool = True,
        correct_data_format: bool = True,
        check_fragment_counts: bool = False,
    ) -> None:
        super().__init__()
        self._registry_key = registry_key
        self._attr_name = (
            _constants._ADATA_ATTRS.X if layer is None else _constants._ADATA_ATTRS.LAYERS
        )
        self._attr_key = layer
        self.is_count_data = is_count_data
        self.correct_data_format = correct_data_format
        self.check_fragment_counts = check_fragment_counts
        self.count_stat_key = (
            self.N_VARS_KEY if registry_key == REGISTRY_KEYS.X_KEY else f"n_{registry_key}"
        )

    @property
    def registry_key(self) -> str:
        return self._registry_key

    @property
    def attr_name(self) -> str:
        return self._attr_name

    @property
    def attr_key(self) -> str | None:
        return self._attr_key

    @property
    def is_empty(self) -> bool:
        return False

    def _location(self) -> str:
        if self.attr_key is None:
            return f"adata.{self.attr_name}"
        return f"adata.{self.attr_name}[{self.attr_key}]"

    def validate_field(self, adata: AnnData) -> None:
        super().validate_field(adata)
        if self.attr_key is not None and self.attr_key not in getattr(adata, self.attr_name):
            raise ValueError(f"{self.attr_key} is not a valid key in adata.{self.attr_name}.")
        data = self.get_field_data(adata)
        if self.is_count_data and not _check_nonnegative_integers(data):
            warnings.warn(
                f"{self._location()} does not contain unnormalized count data. "
                "Are you sure this is what you want?",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        if self.check_fragment_counts and not _check_fragment_counts(data):
            warnings.warn(
                f"{self._location()} does not contain fragment count data. "
                "Are you sure this is what you want?",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )

    def register_field(self, adata: AnnData) -> dict:
        super().register_field(adata)
        if self.correct_data_format:
            _verify_and_correct_data_format(adata, self.attr_name, self.attr_key)
        if self.is_count_data:
            check_count_values(
                self.get_field_data(adata),
                self._location(),
                allow_nan=getattr(self, "ALLOWS_MISSING_COUNTS", False),
            )
        return {
            self.N_OBS_KEY: adata.n_obs,
            self.N_VARS_KEY: adata.n_vars,
            self.COLUMN_NAMES_KEY: np.asarray(adata.var_names),
        }

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs: Any) -> dict:
        super().transfer_field(state_registry, adata_target, **kwargs)
        n_vars = state_registry[self.N_VARS_KEY]
        target_n_vars = adata_target.n_vars
        if target_n_vars != n_vars:
            raise ValueError(
                "Number of vars in `adata_target` not the same as source. "
                f"Expected: {n_vars} Received: {target_n_vars}"
            )
        return self.register_field(adata_target)

    def get_summary_stats(self, state_registry: dict) -> dict:
        summary_stats = {self.count_stat_key: state_registry[self.N_VARS_KEY]}
        if self.registry_key == REGISTRY_KEYS.X_KEY:
            summary_stats[self.N_CELLS_KEY] = state_registry[self.N_OBS_KEY]
        return summary_stats

    def view_state_registry(self, state_registry: dict) -> None:
        return None
