"""Refusing values no model can train on, before training starts.

A NaN, an infinity or a negative count in X, or a non-finite continuous covariate, trains to
an all-NaN latent space without any error. These are found at registration: counts in one
pass over the stored values in Rust (the CSR ``data`` array, never a dense copy), covariates
with numpy (they are a few columns).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _core
from ._utils import _is_backed_matrix

_KIND_NAMES = {
    "nan": "NaN",
    "inf": "infinite (inf)",
    "-inf": "infinite (-inf)",
    "negative": "negative",
}


def _stored_values(data: Any) -> tuple[np.ndarray, Any] | None:
    """(the array of stored values, the matrix) of in-memory data, None for other kinds."""
    if isinstance(data, pd.DataFrame):
        data = data.to_numpy()
    if sp.issparse(data):
        return np.ascontiguousarray(data.data), data
    if isinstance(data, np.ndarray):
        return np.ascontiguousarray(data), data
    return None


def _position(data: Any, flat: int) -> str:
    if sp.issparse(data):
        if data.format == "csr":
            row = int(np.searchsorted(data.indptr, flat, side="right") - 1)
            return f"cell {row}, gene {int(data.indices[flat])}"
        if data.format == "csc":
            col = int(np.searchsorted(data.indptr, flat, side="right") - 1)
            return f"cell {int(data.indices[flat])}, gene {col}"
        return f"stored value {flat}"
    if data.ndim == 2:
        row, col = np.unravel_index(flat, data.shape)
        return f"cell {int(row)}, gene {int(col)}"
    return f"position {flat}"


def check_count_values(data: Any, location: str, allow_nan: bool = False) -> None:
    """Raise ``ValueError`` if in-memory count data hold a NaN, infinite or negative value.

    Backed and lazily read matrices are not scanned (that would read the whole file);
    their sampled rows are checked by the count-data warning as in the reference.

    Parameters
    ----------
    data
        The registered matrix (numpy, scipy sparse or DataFrame).
    location
        Where it lives, for the message (``"adata.X"``, ``"adata.layers['counts']"``).
    allow_nan
        NaN marks a value that was not measured (protein panels after an outer join): only
        infinite and negative values are refused.
    """
    if _is_backed_matrix(data):
        return
    stored = _stored_values(data)
    if stored is None or stored[0].dtype.kind not in "fiub":
        return
    values = stored[0]
    if allow_nan and values.dtype.kind == "f":
        values = np.where(np.isnan(values), 0, values)
    found = _core.find_invalid_value(values)
    if found is None:
        return
    flat, kind = found
    value = stored[0].reshape(-1)[flat].item()
    raise ValueError(
        f"{location} holds a {_KIND_NAMES[kind]} value ({value!r} at {_position(stored[1], flat)}); "
        "count models train to NaN on such values. Fix or drop these cells or genes first."
    )


def check_finite_covariates(frame: pd.DataFrame, keys: list[str], location: str) -> None:
    """Raise ``ValueError`` naming the first column of ``frame[keys]`` with NaN or inf.

    Parameters
    ----------
    frame
        ``adata.obs`` (or ``adata.var``).
    keys
        The numeric columns being registered.
    location
        ``"adata.obs"``, for the message.
    """
    for key in keys:
        values = pd.to_numeric(frame[key], errors="coerce").to_numpy(dtype=np.float64)
        bad = ~np.isfinite(values)
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"{location}['{key}'] holds {int(bad.sum())} non-finite value(s) (NaN or inf; "
                f"the first in row {first}, {frame.index[first]!r}); continuous covariates "
                "must be finite."
            )
