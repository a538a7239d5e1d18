"""Private Rust core of scvi_rs, built from ``rust/``; not public API.

Signatures mirror ``rust/bindings/*.rs``. Array arguments are numpy arrays and are never
cast: a wrong dtype is a ``TypeError``; a wrong ndim, shape or a non-C-contiguous array
where one is required is a ``ValueError``; a requested row out of range is an
``IndexError``. Gathers release the GIL while they run.
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

__all__ = [
    "__version__",
    "debug_build",
    "encode_categorical",
    "factorize",
    "find_invalid_value",
    "gather_csc_rows",
    "gather_csr_rows",
    "gather_dense_rows",
    "legacy_permutation",
    "new_uuid",
    "parallel_work_threshold",
    "registry_fingerprint",
    "split_sizes",
    "validate_external_indexing",
    "validate_uuid",
]

__version__: str
debug_build: bool
parallel_work_threshold: int

_Index = NDArray[np.int32] | NDArray[np.int64]
_Rows = NDArray[np.integer[Any]]
_Values = NDArray[np.floating[Any]] | NDArray[np.integer[Any]] | NDArray[np.bool_]

def gather_csr_rows(
    indptr: _Index,
    indices: _Index,
    data: _Values,
    rows: _Rows,
    out: NDArray[np.float32],
    *,
    n_threads: int | None = None,
) -> None:
    """Overwrite C-contiguous float32 ``out`` (len(rows), n_vars) with CSR rows ``rows`` (any order, repeats ok; duplicate entries sum); n_vars = out.shape[1]; indptr checked only at touched rows; threads only for large batches unless ``n_threads`` is given."""

def gather_csc_rows(
    indptr: _Index,
    indices: _Index,
    data: _Values,
    rows: _Rows,
    out: NDArray[np.float32],
    n_rows: int,
) -> None:
    """Overwrite ``out`` (len(rows), len(indptr) - 1) with rows ``rows`` of a CSC matrix with ``n_rows`` rows; scans all nnz (single thread), so convert to CSR for repeated gathers."""

def gather_dense_rows(
    X: _Values,
    rows: _Rows,
    out: NDArray[np.float32],
    *,
    n_threads: int | None = None,
) -> None:
    """Overwrite ``out`` (len(rows), X.shape[1]) with rows ``rows`` of the C-contiguous 2-D array ``X``, converted to float32."""

def encode_categorical(values: Any, mapping: Any) -> NDArray[np.int32]:
    """int32 codes of 1-D ``values`` (str/object, int, float or bool array; lists are passed through numpy.asarray) in ``mapping``; ValueError names unknown values, None/NaN or duplicate categories."""

def factorize(values: Any) -> tuple[NDArray[Any], NDArray[np.int32]]:
    """``(categories, codes)`` of ``pd.Categorical(values)`` in one pass: the sorted distinct values as an object (str), int64, float64 or bool array, and the int32 codes; ValueError on None/NaN, TypeError on mixed str and numbers."""

def registry_fingerprint(json_text: str) -> str:
    """64-char lower-case hex SHA-256 of the canonical JSON (sorted keys, no whitespace, one string escaping; numbers as written); ValueError if invalid JSON."""

def find_invalid_value(data: NDArray[Any]) -> tuple[int, str] | None:
    """``(flat position, kind)`` of the first NaN (``"nan"``), infinite (``"inf"``, ``"-inf"``) or negative (``"negative"``) value of the C-contiguous array ``data``, or None."""

def validate_uuid(text: str) -> bool:
    """Whether ``text`` is a UUID in canonical 8-4-4-4-12 hex form (any case)."""

def new_uuid() -> str:
    """A new random UUID4 string, lower case, like ``str(uuid.uuid4())``."""

def split_sizes(
    n_samples: int,
    train_size: float,
    validation_size: float | None = None,
    batch_size: int | None = None,
    drop_last: bool | int = False,
    train_size_is_none: bool = True,
    *,
    stacklevel: int = 2,
) -> tuple[int, int]:
    """``(n_train, n_val)`` exactly as scvi's ``validate_data_split`` (same ValueErrors, same UserWarnings emitted at ``stacklevel``)."""

def legacy_permutation(n: int, seed: int | None) -> NDArray[np.int64]:
    """``numpy.random.RandomState(seed).permutation(n)`` bit for bit; seed in [0, 2**32 - 1] (ValueError otherwise), None for an OS-random seed."""

def validate_external_indexing(
    n_samples: int,
    external_indexing: list[NDArray[Any] | None],
    batch_size: int | None = None,
    drop_last: bool | int = False,
    *,
    stacklevel: int = 2,
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """``(train, valid, test)`` int64 copies after scvi's external-indexing checks (ValueError / ``Warning`` raised as in the reference, IndexError outside [0, n_samples)); does not modify the list."""
