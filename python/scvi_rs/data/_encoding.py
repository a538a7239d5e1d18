"""Category encoding for the categorical fields, through the Rust core.

A fresh registration makes one pass, ``_core.factorize(values)``: the categories in
pandas' order and the int32 codes together. A transfer encodes against an existing mapping
with ``_core.encode_categorical(values, mapping)``. A pandas ``Categorical``
column keeps its own categories (and their order) as the mapping, like the reference, and
its codes are translated with a per-category lookup table, so no cell is hashed twice.
Unknown values and missing values come back as code ``-1``; the callers turn those into
the reference's errors.
"""

from __future__ import annotations

import functools
import warnings
from typing import Any

import numpy as np
import pandas as pd

from .._settings import settings

_INT8_MAX = np.iinfo(np.int8).max
_INT16_MAX = np.iinfo(np.int16).max
_INT32_MAX = np.iinfo(np.int32).max


@functools.cache
def _rust():
    from .. import _core

    return _core


_COUNT_SLICE = 1 << 20


def codes_dtype(n_categories: int) -> np.dtype:
    """Smallest signed integer dtype pandas would use for ``n_categories`` codes."""
    if n_categories < _INT8_MAX:
        return np.dtype(np.int8)
    if n_categories < _INT16_MAX:
        return np.dtype(np.int16)
    if n_categories < _INT32_MAX:
        return np.dtype(np.int32)
    return np.dtype(np.int64)


def _as_values(column: Any) -> np.ndarray:
    """A 1-D numpy array of a column's values (``object`` for strings and extension dtypes)."""
    if isinstance(column, (pd.Series, pd.Index)):
        if isinstance(column.dtype, np.dtype):
            return column.to_numpy()
        return column.to_numpy(dtype=object, na_value=np.nan)
    return np.asarray(column).reshape(-1)


def _normalize_mapping(mapping: Any, values: np.ndarray) -> np.ndarray:
    """Categories as the reference stores them: pandas' category array, NaN dropped."""
    mapping = np.asarray(mapping, dtype=object if values.dtype.kind == "O" else None)
    if mapping.dtype.kind == "O" or mapping.dtype.kind in "fc":
        mapping = mapping[~pd.isna(mapping)]
    if values.dtype.kind != "O" and mapping.dtype != values.dtype:
        mapping = mapping.astype(values.dtype)
    if mapping.dtype.kind in "US":
        mapping = mapping.astype(object)
    if mapping.dtype.kind == "O":
        # pandas infers int/float/bool categories from object input; keep strings as object
        inferred = pd.Index(list(mapping))
        mapping = inferred.to_numpy() if inferred.dtype.kind in "biuf" else mapping
    return mapping


def _pandas_codes(values: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Fallback and error-path encoder: index of each value in ``mapping`` or -1."""
    return pd.Index(mapping).get_indexer(pd.Index(values)).astype(np.int64, copy=False)


def _categorical_parts(column: Any) -> tuple[pd.Index, np.ndarray]:
    """Categories and codes of a categorical column, without building a Series.

    ``Series.cat.codes`` makes a new Series on the column's index, and pandas then builds
    the index's hash table (about 25 bytes per cell for string obs names, kept for the
    life of ``adata.obs``); the Categorical underneath holds both parts directly.
    """
    values = column.array if isinstance(column, pd.Series) else column
    return values.categories, np.asarray(values.codes)


def encode(column: Any, mapping: np.ndarray) -> np.ndarray:
    """Codes of ``column`` against ``mapping``; unknown or missing values give ``-1``."""
    mapping = np.asarray(mapping)
    if isinstance(getattr(column, "dtype", None), pd.CategoricalDtype):
        categories, codes = _categorical_parts(column)
        lut = encode(_as_values(categories), mapping)
        # position -1 of the extended table turns pandas' NaN code into -1 again
        lut = np.append(lut, -1)
        return lut[codes]
    values = _as_values(column)
    try:
        codes = _rust().encode_categorical(values, mapping)
    except (ValueError, TypeError, OverflowError):
        return _pandas_codes(values, mapping)
    return np.asarray(codes)


def build(column: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mapping and codes for a fresh registration (codes ``-1`` where values are missing)."""
    if isinstance(getattr(column, "dtype", None), pd.CategoricalDtype):
        categories, codes = _categorical_parts(column)
        return categories.to_numpy(copy=True), codes
    values = _as_values(column)
    try:
        mapping, codes = _rust().factorize(values)
        mapping = _normalize_mapping(mapping, values)
    except (ValueError, TypeError, OverflowError):
        categories = pd.Categorical(values).categories
        return categories.to_numpy(copy=True), np.asarray(pd.Categorical(values).codes)
    return mapping, np.asarray(codes)


def unknown_values(column: Any, codes: np.ndarray) -> list[Any]:
    """Values with code -1 that are not missing, in order of first appearance."""
    values = _as_values(column)
    bad = values[np.asarray(codes) < 0]
    bad = bad[~pd.isna(bad)] if bad.dtype.kind == "O" or bad.dtype.kind in "fc" else bad
    return list(pd.unique(bad))


def categorical_failure(
    column_key: str, mapping: np.ndarray, column: Any, codes: np.ndarray
) -> ValueError:
    """The reference's error for a column that could not be encoded (names the key)."""
    values = _as_values(column)
    bad = values[np.asarray(codes) < 0]
    received = pd.Index(pd.unique(bad))
    message = (
        f'Making .obs["{column_key}"] categorical failed. Expected categories: {mapping}. '
        f"Received categories: {received}. "
    )
    if pd.isna(bad).any():
        message += f'Column "{column_key}" contains missing values (NaN), which cannot be encoded.'
    return ValueError(message)


def _category_counts(codes: np.ndarray, n_categories: int) -> np.ndarray:
    """Cells per code, counted in slices so no int64 copy of all the codes is made."""
    counts = np.zeros(n_categories, dtype=np.int64)
    for start in range(0, codes.size, _COUNT_SLICE):
        part = codes[start : start + _COUNT_SLICE].astype(np.intp, copy=False)
        counts += np.bincount(part, minlength=n_categories)
    return counts


def store_codes(
    frame: pd.DataFrame,
    column_key: str,
    target_key: str,
    mapping: np.ndarray,
    codes: np.ndarray,
    column: Any,
) -> None:
    """Check ``codes``, write them (smallest int dtype) to ``frame[target_key]``, warn on tiny
    categories like the reference (by code number)."""
    codes = np.asarray(codes)
    n = len(mapping)
    if codes.size and codes.min() < 0:
        raise categorical_failure(column_key, mapping, column, codes)
    frame[target_key] = codes.astype(codes_dtype(n), copy=False)
    if codes.size:
        counts = _category_counts(codes, n)
        present = np.flatnonzero(counts)
        least = present[np.argmin(counts[present])]
        if counts[least] < 3:
            warnings.warn(
                f"Category {least} in adata.obs['{target_key}'] has fewer than 3 cells. "
                "Models may not train properly.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
