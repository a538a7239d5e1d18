"""Fields on single ``obs``/``var`` columns: numerical and categorical."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ..._settings import settings
from ...utils._table import Table
from .. import _constants, _encoding
from .._digest import array_digest
from ._base_field import BaseAnnDataField

if TYPE_CHECKING:
    from anndata import AnnData


def _extend_mapping(mapping: np.ndarray, new_values: list[Any]) -> np.ndarray:
    """``mapping`` followed by ``new_values`` (pandas' dtype inference; strings as object)."""
    combined = pd.Index([*mapping.tolist(), *new_values]).to_numpy()
    if combined.dtype.kind in "US":
        combined = combined.astype(object)
    return combined


def _is_numeric_column(column: pd.Series) -> bool:
    dtype = column.dtype
    if isinstance(dtype, pd.CategoricalDtype):
        dtype = column.cat.categories.dtype
    if pd.api.types.is_bool_dtype(dtype) or pd.api.types.is_numeric_dtype(dtype):
        return True
    if dtype.kind == "O":
        try:
            pd.to_numeric(column.to_numpy(), errors="raise")
        except (TypeError, ValueError):
            return False
        return True
    return False


class BaseDataFrameField(BaseAnnDataField):
    """A field on one column of ``adata.obs`` (``field_type="obs"``) or ``adata.var``."""

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None,
        field_type: Literal["obs", "var"] | None = None,
        required: bool = True,
    ) -> None:
        super().__init__()
        if required and attr_key is None:
            raise ValueError(
                "`attr_key` cannot be `None` if `required=True`. Please provide an `attr_key`."
            )
        if field_type == "obs":
            self._attr_name = _constants._ADATA_ATTRS.OBS
        elif field_type == "var":
            self._attr_name = _constants._ADATA_ATTRS.VAR
        else:
            raise ValueError("`field_type` must be either 'obs' or 'var'.")
        self._registry_key = registry_key
        self._attr_key = attr_key
        self._is_empty = attr_key is None

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
        return self._is_empty


class NumericalDataFrameField(BaseDataFrameField):
    """A numeric ``obs``/``var`` column used as is (no ``_scvi_`` copy)."""

    def validate_field(self, adata: AnnData) -> None:
        super().validate_field(adata)
        frame = getattr(adata, self.attr_name)
        if self.attr_key not in frame.columns:
            raise KeyError(f"{self.attr_key} not found in adata.{self.attr_name}.")
        if not _is_numeric_column(frame[self.attr_key]):
            raise ValueError(
                f"adata.{self.attr_name}['{self.attr_key}'] must be numeric to be registered "
                f"as '{self.registry_key}', but has dtype {frame[self.attr_key].dtype}."
            )

    def register_field(self, adata: AnnData) -> dict:
        return super().register_field(adata)

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs: Any) -> dict:
        super().transfer_field(state_registry, adata_target, **kwargs)
        return self.register_field(adata_target)

    def get_summary_stats(self, _state_registry: dict) -> dict:
        return {}

    def view_state_registry(self, _state_registry: dict) -> None:
        return None


class NumericalObsField(NumericalDataFrameField):
    """A numeric column of ``adata.obs`` (e.g. size factors).

    Parameters
    ----------
    registry_key
        Key to register the field under.
    attr_key
        Column of ``adata.obs``; ``None`` (with ``required=False``) makes the field empty.
    required
        Whether ``attr_key`` must be given.
    """

    def __init__(self, registry_key: str, attr_key: str | None, required: bool = True) -> None:
        super().__init__(registry_key, attr_key, field_type="obs", required=required)


class NumericalVarField(NumericalDataFrameField):
    """A numeric column of ``adata.var``."""

    def __init__(self, registry_key: str, attr_key: str | None, required: bool = True) -> None:
        super().__init__(registry_key, attr_key, field_type="var", required=required)


class CategoricalDataFrameField(BaseDataFrameField):
    """A categorical ``obs``/``var`` column, encoded as integer codes in ``_scvi_{key}``.

    With ``attr_key=None`` every entry gets category ``0``.
    """

    CATEGORICAL_MAPPING_KEY = "categorical_mapping"
    ORIGINAL_ATTR_KEY = "original_key"

    def __init__(
        self,
        registry_key: str,
        attr_key: str | None,
        field_type: Literal["obs", "var"] | None = None,
    ) -> None:
        self.is_default = attr_key is None
        self._original_attr_key = attr_key or registry_key
        super().__init__(registry_key, f"_scvi_{registry_key}", field_type=field_type)
        self.count_stat_key = f"n_{self.registry_key}"

    def _setup_default_attr(self, adata: AnnData) -> None:
        self._original_attr_key = self.attr_key
        frame = getattr(adata, self.attr_name)
        frame[self.attr_key] = np.zeros(frame.shape[0], dtype=np.int64)

    def validate_field(self, adata: AnnData) -> None:
        super().validate_field(adata)
        if self._original_attr_key not in getattr(adata, self.attr_name).columns:
            raise KeyError(f"{self._original_attr_key} not found in adata.{self.attr_name}.")

    def _state(self, mapping: np.ndarray) -> dict:
        return {
            self.CATEGORICAL_MAPPING_KEY: mapping,
            self.ORIGINAL_ATTR_KEY: self._original_attr_key,
        }

    def register_field(self, adata: AnnData) -> dict:
        frame = getattr(adata, self.attr_name)
        if self.is_default:
            # one category, 0, for every cell: its codes are written directly as int8 (the
            # dtype they end in) rather than built from an int64 column of zeros
            self._original_attr_key = self.attr_key
            codes = np.zeros(frame.shape[0], dtype=np.int8)
            frame[self.attr_key] = codes
            super().register_field(adata)
            mapping = np.zeros(1, dtype=np.int64)
            column = frame[self.attr_key]
        else:
            super().register_field(adata)
            column = frame[self._original_attr_key]
            mapping, codes = _encoding.build(column)
        _encoding.store_codes(
            frame, self._original_attr_key, self.attr_key, mapping, codes, column
        )
        return self._state(mapping)

    def transfer_field(
        self,
        state_registry: dict,
        adata_target: AnnData,
        extend_categories: bool = False,
        **kwargs: Any,
    ) -> dict:
        super().transfer_field(state_registry, adata_target, **kwargs)
        if self.is_default:
            self._setup_default_attr(adata_target)
        self.validate_field(adata_target)
        frame = getattr(adata_target, self.attr_name)
        column = frame[self._original_attr_key]
        mapping = np.array(state_registry[self.CATEGORICAL_MAPPING_KEY], copy=True)
        codes = _encoding.encode(column, mapping)
        if codes.size and codes.min() < 0:
            unknown = _encoding.unknown_values(column, codes)
            if unknown:
                if not extend_categories:
                    raise ValueError(
                        f"Category {unknown[0]} not found in source registry. Cannot transfer "
                        "setup without `extend_categories = True`."
                    )
                mapping = _extend_mapping(mapping, unknown)
                codes = _encoding.encode(column, mapping)
        _encoding.store_codes(
            frame, self._original_attr_key, self.attr_key, mapping, codes, column
        )
        return self._state(mapping)

    def get_summary_stats(self, state_registry: dict) -> dict:
        mapping = state_registry[self.CATEGORICAL_MAPPING_KEY]
        return {self.count_stat_key: len(pd.unique(np.asarray(mapping).reshape(-1)))}

    def view_state_registry(self, state_registry: dict) -> Table:
        source_key = state_registry[self.ORIGINAL_ATTR_KEY]
        mapping = state_registry[self.CATEGORICAL_MAPPING_KEY]
        table = Table(title=f"{self.registry_key} State Registry")
        table.add_column("Source Location", justify="center", style="dodger_blue1")
        table.add_column("Categories", justify="center", style="green")
        table.add_column("scvi-tools Encoding", justify="center", style="dark_violet")
        for i, category in enumerate(mapping):
            location = f"adata.{self.attr_name}['{source_key}']" if i == 0 else ""
            table.add_row(location, str(category), str(i))
        return table

    # -- replay shortcut ------------------------------------------------------------------
    def _replay_snapshot(self, adata: AnnData, state_registry: dict, fresh: bool) -> dict | None:
        """What a replay would read and write; equal snapshots mean a replay is a no-op."""
        frame = getattr(adata, self.attr_name)
        if self.attr_key not in frame.columns:
            return None
        output = frame[self.attr_key]
        if not isinstance(output.dtype, np.dtype) or output.dtype.kind != "i":
            return None
        output_digest = array_digest(output.to_numpy())
        mapping = np.asarray(state_registry[self.CATEGORICAL_MAPPING_KEY])
        snapshot: dict[str, Any] = {
            "field": type(self).__name__,
            "registry_key": self.registry_key,
            "state": state_registry,
            "output": output_digest,
        }
        dtype = _encoding.codes_dtype(len(mapping))
        if self.is_default:
            snapshot["source"] = array_digest(np.zeros(frame.shape[0], dtype=dtype))
            return snapshot
        source_key = state_registry[self.ORIGINAL_ATTR_KEY]
        if source_key not in frame.columns:
            return None
        column = frame[source_key]
        is_categorical = isinstance(column.dtype, pd.CategoricalDtype)
        snapshot["source_dtype"] = str(
            column.dtype.categories.dtype if is_categorical else column.dtype
        )
        if is_categorical:
            snapshot["source_categories"] = column.cat.categories.to_numpy()
        if fresh:
            snapshot["source"] = output_digest
        else:
            snapshot["source"] = array_digest(_encoding.encode(column, mapping).astype(dtype))
        return snapshot


class CategoricalObsField(CategoricalDataFrameField):
    """A categorical column of ``adata.obs`` (batch, labels, ...).

    Parameters
    ----------
    registry_key
        Key to register the field under; codes go to ``adata.obs[f"_scvi_{registry_key}"]``.
    attr_key
        Column of ``adata.obs`` holding the categories; ``None`` means one category ``0``.
    """

    def __init__(self, registry_key: str, attr_key: str | None) -> None:
        super().__init__(registry_key, attr_key, field_type="obs")


class CategoricalVarField(CategoricalDataFrameField):
    """A categorical column of ``adata.var``."""

    def __init__(self, registry_key: str, attr_key: str | None) -> None:
        super().__init__(registry_key, attr_key, field_type="var")


class LabelsWithUnlabeledObsField(CategoricalObsField):
    """Labels with a designated *unlabeled* category, kept last in the mapping.

    Parameters
    ----------
    registry_key
        Key to register the field under.
    obs_key
        Column of ``adata.obs`` holding the labels.
    unlabeled_category
        The value marking unlabeled cells; appended to the mapping if absent.
    """

    UNLABELED_CATEGORY = "unlabeled_category"

    def __init__(
        self, registry_key: str, obs_key: str | None, unlabeled_category: str | int | float
    ) -> None:
        super().__init__(registry_key, obs_key)
        self._unlabeled_category = unlabeled_category

    def _remap_unlabeled_to_final_category(self, adata: AnnData, mapping: np.ndarray) -> dict:
        # the unlabeled category swaps places with the last category (appended if absent)
        mapping = np.array(mapping, copy=True)
        hits = [i for i, m in enumerate(mapping.tolist()) if m == self._unlabeled_category]
        if hits:
            last = len(mapping) - 1
            mapping[hits[0]], mapping[last] = mapping[last], mapping[hits[0]]
        else:
            mapping = _extend_mapping(mapping, [self._unlabeled_category])
        frame = getattr(adata, self.attr_name)
        column = frame[self._original_attr_key]
        codes = _encoding.encode(column, mapping)
        _encoding.store_codes(
            frame, self._original_attr_key, self.attr_key, mapping, codes, column
        )
        return {
            self.CATEGORICAL_MAPPING_KEY: mapping,
            self.ORIGINAL_ATTR_KEY: self._original_attr_key,
            self.UNLABELED_CATEGORY: self._unlabeled_category,
        }

    def register_field(self, adata: AnnData) -> dict:
        state = super().register_field(adata)
        return self._remap_unlabeled_to_final_category(adata, state[self.CATEGORICAL_MAPPING_KEY])

    def transfer_field(
        self,
        state_registry: dict,
        adata_target: AnnData,
        allow_missing_labels: bool = False,
        **kwargs: Any,
    ) -> dict:
        frame = getattr(adata_target, self.attr_name)
        if allow_missing_labels and self._original_attr_key not in frame.columns:
            warnings.warn(
                f"Missing labels key {self._original_attr_key}. Filling in with unlabeled "
                f"category {self._unlabeled_category}.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            frame[self._original_attr_key] = self._unlabeled_category
        state = super().transfer_field(state_registry, adata_target, **kwargs)
        return self._remap_unlabeled_to_final_category(
            adata_target, state[self.CATEGORICAL_MAPPING_KEY]
        )
