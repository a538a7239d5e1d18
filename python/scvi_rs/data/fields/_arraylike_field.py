"""Fields on ``obsm``/``varm`` entries and on groups of ``obs``/``var`` columns."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from ..._settings import settings
from ...utils._table import Table
from .. import _constants, _encoding
from .._digest import array_digest
from .._utils import _check_nonnegative_integers, _verify_and_correct_data_format
from .._value_checks import check_finite_covariates
from ._base_field import BaseAnnDataField
from ._dataframe_field import _extend_mapping, _is_numeric_column

if TYPE_CHECKING:
    from anndata import AnnData


class BaseArrayLikeField(BaseAnnDataField):
    """A field whose data is a 2-D array or DataFrame in ``obsm``/``varm``."""

    def __init__(self, registry_key: str) -> None:
        super().__init__()
        self._registry_key = registry_key
        self._attr_name: str | None = None

    @property
    def registry_key(self) -> str:
        return self._registry_key

    @property
    def attr_name(self) -> str:
        return self._attr_name


def _n_columns(data: Any) -> int:
    shape = getattr(data, "shape", None)
    if shape is None or len(shape) < 2:
        return 1
    return int(shape[1])


class ArrayLikeField(BaseArrayLikeField):
    """An entry of ``adata.obsm`` (``field_type="obsm"``) or ``adata.varm``."""

    COLUMN_NAMES_KEY = "column_names"

    def __init__(
        self,
        registry_key: str,
        attr_key: str,
        field_type: Literal["obsm", "varm"] | None = None,
        colnames_uns_key: str | None = None,
        is_count_data: bool = False,
        correct_data_format: bool = True,
    ) -> None:
        super().__init__(registry_key)
        if field_type == "obsm":
            self._attr_name = _constants._ADATA_ATTRS.OBSM
        elif field_type == "varm":
            self._attr_name = _constants._ADATA_ATTRS.VARM
        else:
            raise ValueError("`field_type` must be either 'obsm' or 'varm'.")
        self._attr_key = attr_key
        self.colnames_uns_key = colnames_uns_key
        self.is_count_data = is_count_data
        self.correct_data_format = correct_data_format
        self.count_stat_key = f"n_{self.registry_key}"

    @property
    def attr_key(self) -> str:
        return self._attr_key

    @property
    def is_empty(self) -> bool:
        return False

    def validate_field(self, adata: AnnData) -> None:
        super().validate_field(adata)
        if self.attr_key not in getattr(adata, self.attr_name):
            raise KeyError(f"{self.attr_key} not found in adata.{self.attr_name}.")
        data = self.get_field_data(adata)
        if self.is_count_data and not _check_nonnegative_integers(data):
            warnings.warn(
                f"adata.{self.attr_name}['{self.attr_key}'] does not contain unnormalized "
                "count data. Are you sure this is what you want?",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )

    def _get_original_column_names(self, adata: AnnData) -> np.ndarray | list:
        data = self.get_field_data(adata)
        if isinstance(data, pd.DataFrame) and self.colnames_uns_key is None:
            return list(data.columns)
        if self.colnames_uns_key is not None:
            return adata.uns[self.colnames_uns_key]
        return np.arange(_n_columns(data))

    def register_field(self, adata: AnnData) -> dict:
        super().register_field(adata)
        if self.correct_data_format:
            _verify_and_correct_data_format(adata, self.attr_name, self.attr_key)
        return {self.COLUMN_NAMES_KEY: self._get_original_column_names(adata)}

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs: Any) -> dict:
        super().transfer_field(state_registry, adata_target, **kwargs)
        self.validate_field(adata_target)
        source_cols = state_registry[self.COLUMN_NAMES_KEY]
        target_data = self.get_field_data(adata_target)
        location = f"adata.{self.attr_name}['{self.attr_key}']"
        if len(source_cols) != _n_columns(target_data):
            raise ValueError(
                f"Target {location} has {_n_columns(target_data)} which does not match the "
                f"source {location} column count of {len(source_cols)}."
            )
        if isinstance(target_data, pd.DataFrame) and list(source_cols) != list(
            target_data.columns
        ):
            raise ValueError(
                f"Target {location} column names do not match the source {location} column names."
            )
        if self.correct_data_format:
            _verify_and_correct_data_format(adata_target, self.attr_name, self.attr_key)
        return {self.COLUMN_NAMES_KEY: np.array(source_cols, copy=True)}

    def get_summary_stats(self, state_registry: dict) -> dict:
        return {self.count_stat_key: len(state_registry[self.COLUMN_NAMES_KEY])}

    def view_state_registry(self, _state_registry: dict) -> None:
        return None


class ObsmField(ArrayLikeField):
    """An entry of ``adata.obsm`` (cells x columns).

    Parameters
    ----------
    registry_key
        Key to register the field under.
    attr_key
        Key in ``adata.obsm``.
    colnames_uns_key
        Key in ``adata.uns`` holding the column names; else the DataFrame's columns or
        ``arange(n_columns)``.
    is_count_data
        Warn when the data do not look like non-negative integer counts.
    correct_data_format
        Replace a dense array that is not C-contiguous by a C-contiguous copy.
    """

    def __init__(
        self,
        registry_key: str,
        attr_key: str,
        colnames_uns_key: str | None = None,
        is_count_data: bool = False,
        correct_data_format: bool = True,
    ) -> None:
        super().__init__(
            registry_key,
            attr_key,
            field_type="obsm",
            colnames_uns_key=colnames_uns_key,
            is_count_data=is_count_data,
            correct_data_format=correct_data_format,
        )


class VarmField(ArrayLikeField):
    """An entry of ``adata.varm`` (genes x columns)."""

    def __init__(
        self,
        registry_key: str,
        attr_key: str,
        colnames_uns_key: str | None = None,
        is_count_data: bool = False,
        correct_data_format: bool = True,
    ) -> None:
        super().__init__(
            registry_key,
            attr_key,
            field_type="varm",
            colnames_uns_key=colnames_uns_key,
            is_count_data=is_count_data,
            correct_data_format=correct_data_format,
        )


class ProteinFieldMixin:
    """Adds ``protein_batch_mask``: which proteins each batch measured (non-zero somewhere)."""

    PROTEIN_BATCH_MASK = "protein_batch_mask"
    # proteins a batch did not measure are NaN (after an outer join), as the reference allows
    ALLOWS_MISSING_COUNTS = True

    def __init__(
        self, *args: Any, use_batch_mask: bool = True, batch_field: Any = None, **kwargs: Any
    ) -> None:
        if use_batch_mask and batch_field is None:
            raise ValueError("`use_batch_mask = True` requires that `batch_field is not None`.")
        self.use_batch_mask = use_batch_mask
        self.batch_field = batch_field
        super().__init__(*args, **kwargs)

    def _get_batch_mask_protein_data(self, adata: AnnData) -> dict | None:
        import logging

        import scipy.sparse as sp

        data = self.get_field_data(adata)
        if isinstance(data, pd.DataFrame):
            data = data.to_numpy()
        batch = np.asarray(self.batch_field.get_field_data(adata)).reshape(-1)
        masks: dict[str, np.ndarray] = {}
        missing = False
        for b in np.unique(batch):
            rows = data[batch == b]
            totals = np.asarray(rows.sum(axis=0)).reshape(-1) if sp.issparse(rows) else rows.sum(0)
            masks[str(b)] = np.asarray(totals != 0)
            missing = missing or not masks[str(b)].all()
        if missing:
            logging.getLogger("scvi_rs").info("Found batches with missing protein expression")
            return masks
        return None

    def register_field(self, adata: AnnData) -> dict:
        state = super().register_field(adata)
        if self.use_batch_mask:
            mask = self._get_batch_mask_protein_data(adata)
            if mask is not None:
                state[self.PROTEIN_BATCH_MASK] = mask
        return state

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs: Any) -> dict:
        state = super().transfer_field(state_registry, adata_target, **kwargs)
        if self.use_batch_mask:
            mask = self._get_batch_mask_protein_data(adata_target)
            if mask is not None:
                state[self.PROTEIN_BATCH_MASK] = mask
        return state


class ProteinObsmField(ProteinFieldMixin, ObsmField):
    """Protein counts in ``adata.obsm`` with a per-batch mask of measured proteins.

    ``batch_field`` is the batch field *instance* (a :class:`CategoricalObsField`), needed
    when ``use_batch_mask=True``; the remaining arguments are those of :class:`ObsmField`.
    """


class BaseJointField(BaseArrayLikeField):
    """Several ``obs``/``var`` columns combined into one DataFrame in ``obsm``/``varm``."""

    def __init__(
        self,
        registry_key: str,
        attr_keys: list[str] | None,
        field_type: Literal["obsm", "varm"] | None = None,
        required: bool = True,
    ) -> None:
        super().__init__(registry_key)
        if field_type == "obsm":
            self._source_attr_name = _constants._ADATA_ATTRS.OBS
            self._attr_name = _constants._ADATA_ATTRS.OBSM
        elif field_type == "varm":
            self._source_attr_name = _constants._ADATA_ATTRS.VAR
            self._attr_name = _constants._ADATA_ATTRS.VARM
        else:
            raise ValueError("`field_type` must be either 'obsm' or 'varm'.")
        self._attr_key = f"_scvi_{registry_key}"
        self._attr_keys = list(attr_keys) if attr_keys is not None else []
        self._is_empty = len(self._attr_keys) == 0
        self.required = required

    @property
    def attr_key(self) -> str:
        return self._attr_key

    @property
    def attr_keys(self) -> list[str]:
        """The source columns, in order."""
        return self._attr_keys

    @property
    def source_attr_name(self) -> str:
        return self._source_attr_name

    @property
    def is_empty(self) -> bool:
        return self._is_empty

    def validate_field(self, adata: AnnData) -> None:
        super().validate_field(adata)
        frame = getattr(adata, self.source_attr_name)
        for key in self.attr_keys:
            if key not in frame.columns:
                raise KeyError(f"{key} not found in adata.{self.source_attr_name}.")

    def _combine_fields(self, adata: AnnData) -> None:
        source = getattr(adata, self.source_attr_name)
        getattr(adata, self.attr_name)[self.attr_key] = source[self.attr_keys].copy()


class NumericalJointField(BaseJointField):
    """Numeric columns stacked into ``obsm[_scvi_{key}]``."""

    COLUMNS_KEY = "columns"

    def __init__(
        self,
        registry_key: str,
        attr_keys: list[str] | None,
        field_type: Literal["obsm", "varm"] | None = None,
        required: bool = True,
    ) -> None:
        super().__init__(registry_key, attr_keys, field_type=field_type, required=required)
        self.count_stat_key = f"n_{self.registry_key}"

    def validate_field(self, adata: AnnData) -> None:
        super().validate_field(adata)
        frame = getattr(adata, self.source_attr_name)
        for key in self.attr_keys:
            if not _is_numeric_column(frame[key]):
                raise ValueError(
                    f"adata.{self.source_attr_name}['{key}'] must be numeric to be registered "
                    f"as '{self.registry_key}', but has dtype {frame[key].dtype}."
                )

    def register_field(self, adata: AnnData) -> dict:
        super().register_field(adata)
        check_finite_covariates(
            getattr(adata, self.source_attr_name), self.attr_keys, f"adata.{self.source_attr_name}"
        )
        self._combine_fields(adata)
        columns = getattr(adata, self.attr_name)[self.attr_key].columns.to_numpy()
        return {self.COLUMNS_KEY: columns}

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs: Any) -> dict:
        super().transfer_field(state_registry, adata_target, **kwargs)
        return self.register_field(adata_target)

    def get_summary_stats(self, _state_registry: dict) -> dict:
        return {self.count_stat_key: len(self.attr_keys)}

    def view_state_registry(self, state_registry: dict) -> Table | None:
        if self.is_empty:
            return None
        table = Table(title=f"{self.registry_key} State Registry")
        table.add_column("Source Location", justify="center", style="dodger_blue1")
        for key in state_registry[self.COLUMNS_KEY]:
            table.add_row(f"adata.{self.source_attr_name}['{key}']")
        return table


class NumericalJointObsField(NumericalJointField):
    """Numeric ``obs`` columns (continuous covariates) stacked into ``obsm``.

    Parameters
    ----------
    registry_key
        Key to register the field under; data go to ``adata.obsm[f"_scvi_{registry_key}"]``.
    attr_keys
        Columns of ``adata.obs``; ``None`` or empty makes the field empty.
    """

    def __init__(
        self, registry_key: str, attr_keys: list[str] | None, required: bool = True
    ) -> None:
        super().__init__(registry_key, attr_keys, field_type="obsm", required=required)


class NumericalJointVarField(NumericalJointField):
    """Numeric ``var`` columns stacked into ``varm``."""

    def __init__(
        self, registry_key: str, attr_keys: list[str] | None, required: bool = True
    ) -> None:
        super().__init__(registry_key, attr_keys, field_type="varm", required=required)


class CategoricalJointField(BaseJointField):
    """Categorical columns, each encoded to integer codes inside ``obsm[_scvi_{key}]``."""

    MAPPINGS_KEY = "mappings"
    FIELD_KEYS_KEY = "field_keys"
    N_CATS_PER_KEY = "n_cats_per_key"

    def __init__(
        self,
        registry_key: str,
        attr_keys: list[str] | None,
        field_type: Literal["obsm", "varm"] | None = None,
        required: bool = True,
    ) -> None:
        super().__init__(registry_key, attr_keys, field_type=field_type, required=required)
        self.count_stat_key = f"n_{self.registry_key}"

    def _default_mappings_dict(self) -> dict:
        return {
            self.MAPPINGS_KEY: {},
            self.FIELD_KEYS_KEY: [],
            self.N_CATS_PER_KEY: [],
        }

    def _encode(self, adata: AnnData, mappings: dict | None) -> dict:
        """Combine the columns and encode each (fresh mappings when ``mappings`` is None)."""
        self._combine_fields(adata)
        frame = getattr(adata, self.attr_name)[self.attr_key]
        if list(frame.columns) != list(self.attr_keys):
            raise ValueError(
                f"Column names of adata.{self.attr_name}['{self.attr_key}'] do not match the "
                f"registered keys {self.attr_keys}."
            )
        out: dict[str, np.ndarray] = {}
        for key in self.attr_keys:
            column = frame[key]
            if mappings is None:
                mapping, codes = _encoding.build(column)
            else:
                mapping = np.asarray(mappings[key])
                codes = _encoding.encode(column, mapping)
            _encoding.store_codes(frame, key, key, mapping, codes, column)
            out[key] = mapping
        return {
            self.MAPPINGS_KEY: out,
            self.FIELD_KEYS_KEY: list(self.attr_keys),
            self.N_CATS_PER_KEY: [len(out[key]) for key in self.attr_keys],
        }

    def register_field(self, adata: AnnData) -> dict:
        super().register_field(adata)
        return self._encode(adata, None)

    def transfer_field(
        self,
        state_registry: dict,
        adata_target: AnnData,
        extend_categories: bool = False,
        **kwargs: Any,
    ) -> dict:
        super().transfer_field(state_registry, adata_target, **kwargs)
        if self.is_empty:
            return {}
        source_mappings = state_registry[self.MAPPINGS_KEY]
        self.validate_field(adata_target)
        source = getattr(adata_target, self.source_attr_name)
        mappings: dict[str, np.ndarray] = {}
        for key in self.attr_keys:
            if key not in source_mappings:
                raise ValueError(f"{key} was not registered as a categorical covariate.")
            mapping = np.array(source_mappings[key], copy=True)
            if extend_categories:
                codes = _encoding.encode(source[key], mapping)
                unknown = _encoding.unknown_values(source[key], codes)
                if unknown:
                    mapping = _extend_mapping(mapping, sorted(unknown, key=_sort_any))
            mappings[key] = mapping
        return self._encode(adata_target, mappings)

    def get_summary_stats(self, _state_registry: dict) -> dict:
        return {self.count_stat_key: len(self.attr_keys)}

    def view_state_registry(self, state_registry: dict) -> Table | None:
        if self.is_empty:
            return None
        table = Table(title=f"{self.registry_key} State Registry")
        table.add_column("Source Location", justify="center", style="dodger_blue1")
        table.add_column("Categories", justify="center", style="green")
        table.add_column("scvi-tools Encoding", justify="center", style="dark_violet")
        for key, mapping in state_registry[self.MAPPINGS_KEY].items():
            for i, category in enumerate(mapping):
                location = f"adata.{self.source_attr_name}['{key}']" if i == 0 else ""
                table.add_row(location, str(category), str(i))
            table.add_row("", "")
        return table

    def _replay_snapshot(self, adata: AnnData, state_registry: dict, fresh: bool) -> dict | None:
        """What a replay would read and write; equal snapshots mean a replay is a no-op."""
        target = getattr(adata, self.attr_name)
        source = getattr(adata, self.source_attr_name)
        if self.attr_key not in target or any(k not in source.columns for k in self.attr_keys):
            return None
        frame = target[self.attr_key]
        if not isinstance(frame, pd.DataFrame) or list(frame.columns) != list(self.attr_keys):
            return None
        snapshot: dict[str, Any] = {
            "field": type(self).__name__,
            "registry_key": self.registry_key,
            "state": state_registry,
            "index_matches": bool(frame.index.equals(source.index)),
            "output": {},
            "source": {},
            "source_dtype": {},
            "source_categories": {},
        }
        for key in self.attr_keys:
            out = frame[key]
            if not isinstance(out.dtype, np.dtype) or out.dtype.kind != "i":
                return None
            digest = array_digest(out.to_numpy())
            snapshot["output"][key] = digest
            column = source[key]
            mapping = np.asarray(state_registry[self.MAPPINGS_KEY][key])
            is_categorical = isinstance(column.dtype, pd.CategoricalDtype)
            snapshot["source_dtype"][key] = str(
                column.dtype.categories.dtype if is_categorical else column.dtype
            )
            if is_categorical:
                snapshot["source_categories"][key] = column.cat.categories.to_numpy()
            if fresh:
                snapshot["source"][key] = digest
            else:
                codes = _encoding.encode(column, mapping)
                dtype = _encoding.codes_dtype(len(mapping))
                snapshot["source"][key] = array_digest(codes.astype(dtype))
        return snapshot


def _sort_any(value: Any) -> tuple[str, Any]:
    return (type(value).__name__, value)


class CategoricalJointObsField(CategoricalJointField):
    """Categorical ``obs`` columns (categorical covariates) encoded into ``obsm``.

    Parameters
    ----------
    registry_key
        Key to register the field under; codes go to ``adata.obsm[f"_scvi_{registry_key}"]``.
    attr_keys
        Columns of ``adata.obs``; ``None`` or empty makes the field empty.
    """

    def __init__(
        self, registry_key: str, attr_keys: list[str] | None, required: bool = True
    ) -> None:
        super().__init__(registry_key, attr_keys, field_type="obsm", required=required)


class CategoricalJointVarField(CategoricalJointField):
    """Categorical ``var`` columns encoded into ``varm``."""

    def __init__(
        self, registry_key: str, attr_keys: list[str] | None, required: bool = True
    ) -> None:
        super().__init__(registry_key, attr_keys, field_type="varm", required=required)
