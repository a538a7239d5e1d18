"""``AnnTorchDataset``: minibatches of the registered AnnData fields, one call per batch.

Every registered field gets a *reader*, built once per dataset: sparse X is gathered by the
Rust core straight into the output buffer (no scipy slice, no ``toarray``), obs columns and
obsm frames are materialised once in their output dtype and indexed with numpy, and
backed (h5py) matrices are read in sorted, coalesced slices. The output buffers come from an
allocator: plain numpy arrays for ``__getitem__``, torch tensors (optionally pinned) for the
loaders in :mod:`scvi_rs.dataloaders`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
from torch.utils.data import Dataset

from .. import _core
from .._constants import REGISTRY_KEYS
from ._row_source import RowSource

if TYPE_CHECKING:
    import torch

    from ._manager import AnnDataManager

logger = logging.getLogger("scvi_rs")

_INT64_KEYS = (
    REGISTRY_KEYS.BATCH_KEY,
    REGISTRY_KEYS.LABELS_KEY,
    REGISTRY_KEYS.CAT_COVS_KEY,
    REGISTRY_KEYS.INDICES_KEY,
)
# dtypes the Rust gathers read without a copy (anything else is converted once)
_RUST_INDEX_DTYPES = (np.dtype(np.int32), np.dtype(np.int64))
_RUST_VALUE_DTYPES = tuple(
    np.dtype(t)
    for t in (
        np.float32,
        np.float64,
        np.int8,
        np.int16,
        np.int32,
        np.int64,
        np.uint8,
        np.uint16,
        np.uint32,
        np.uint64,
        np.bool_,
    )
)
# Dense arrays at most this wide are converted once to their output dtype.
_PRECAST_MAX_COLS = 64
# Backed reads: rows closer than this many stored entries are read in one slice.
_BACKED_GAP = 1 << 15

Allocator = Callable[[tuple, np.dtype], tuple[Any, np.ndarray]]


def registry_key_to_default_dtype(key: str) -> type:
    """``np.int64`` for batch, labels, categorical covariates and indices; else ``np.float32``."""
    return np.int64 if key in _INT64_KEYS else np.float32


def numpy_allocator(shape: tuple, dtype: np.dtype) -> tuple[np.ndarray, np.ndarray]:
    """Allocate a plain numpy output buffer (returned twice: result and fill view)."""
    out = np.empty(shape, dtype=dtype)
    return out, out


# -- helpers -------------------------------------------------------------------------------
def _native(arr: np.ndarray) -> np.ndarray:
    """``arr`` as a C-contiguous, native byte order array (no copy when it already is)."""
    if not arr.dtype.isnative:
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return np.ascontiguousarray(arr)


def _csr_parts(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR arrays in dtypes the Rust gather reads; converted once (never per batch)."""
    indptr, indices, data = _native(indptr), _native(indices), _native(data)
    if indptr.dtype not in _RUST_INDEX_DTYPES:
        indptr = indptr.astype(np.int64)
    if indices.dtype not in _RUST_INDEX_DTYPES:
        indices = indices.astype(np.int64)
    if data.dtype not in _RUST_VALUE_DTYPES:
        data = data.astype(np.float32)
    return indptr, indices, data


def _take_csr_rows(
    indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, rows: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Compact CSR arrays ``(indptr, indices, data)`` of rows ``rows`` (any order, repeats)."""
    starts = indptr[rows].astype(np.int64, copy=False)
    lengths = indptr[rows + 1].astype(np.int64, copy=False) - starts
    new_indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=new_indptr[1:])
    total = int(new_indptr[-1])
    if total == 0:
        return new_indptr, indices[:0], data[:0]
    positions = np.repeat(starts - new_indptr[:-1], lengths)
    positions += np.arange(total, dtype=np.int64)
    return new_indptr, indices[positions], data[positions]


def _torch_sparse(layout: str, indptr, indices, data, shape, dtype) -> torch.Tensor:
    import torch

    indptr = torch.from_numpy(np.asarray(indptr, dtype=np.int64))
    indices = torch.from_numpy(np.asarray(indices, dtype=np.int64))
    values = torch.from_numpy(np.ascontiguousarray(data, dtype=dtype))
    make = torch.sparse_csr_tensor if layout == "csr" else torch.sparse_csc_tensor
    return make(indptr, indices, values, size=shape, check_invariants=False)


def _coalesced_runs(
    starts: np.ndarray, ends: np.ndarray, gap: int
) -> tuple[list[tuple[int, int]], np.ndarray]:
    """Merge sorted ``[start, end)`` spans closer than ``gap`` into runs read as one slice.

    Returns the runs and, for each span, the number of its run.
    """
    if len(starts) == 0:
        return [], np.zeros(0, dtype=np.int64)
    new_run = np.zeros(len(starts), dtype=np.int64)
    new_run[1:] = starts[1:] - ends[:-1] > gap
    run_of_span = np.cumsum(new_run)
    first = np.concatenate(([0], np.flatnonzero(new_run)))
    last = np.concatenate((first[1:], [len(starts)])) - 1
    runs = [(int(starts[a]), int(ends[b])) for a, b in zip(first, last, strict=True)]
    return runs, run_of_span


def _run_offsets(runs: list[tuple[int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """File start of each run and its offset in the concatenation of all runs."""
    run_starts = np.array([a for a, _ in runs], dtype=np.int64)
    sizes = np.array([b - a for a, b in runs], dtype=np.int64)
    offsets = np.zeros(len(runs), dtype=np.int64)
    np.cumsum(sizes[:-1], out=offsets[1:])
    return run_starts, offsets


# -- readers -------------------------------------------------------------------------------
class _Reader:
    """Reads the rows of one registered field into an output buffer."""

    dtype: np.dtype

    def read(self, rows: np.ndarray, alloc: Allocator) -> Any:
        raise NotImplementedError


class _DenseReader(_Reader):
    """In-memory ndarray (or a DataFrame materialised as one)."""

    def __init__(self, arr: np.ndarray, dtype: np.dtype) -> None:
        self.dtype = dtype
        arr = np.asarray(arr)
        width = int(np.prod(arr.shape[1:], dtype=np.int64)) if arr.ndim > 1 else 1
        if arr.dtype != dtype and width <= _PRECAST_MAX_COLS:
            arr = arr.astype(dtype)  # obs columns, covariates: convert once, not per batch
        self.arr = _native(arr)
        # narrow arrays (obs columns): numpy fancy indexing beats any preallocated write
        self.small = self.arr.dtype == dtype and width * dtype.itemsize <= 1024
        self.rust = (
            self.arr.dtype != dtype
            and dtype == np.float32
            and self.arr.ndim == 2
            and self.arr.dtype in _RUST_VALUE_DTYPES
            and self.arr.flags.c_contiguous
        )

    def read(self, rows: np.ndarray, alloc: Allocator) -> Any:
        arr = self.arr
        if self.small and not getattr(alloc, "pinned", False):
            return arr[rows]
        if arr.dtype == self.dtype:
            result, out = alloc((len(rows), *arr.shape[1:]), self.dtype)
            np.take(arr, rows, axis=0, out=out, mode="clip")  # rows are range-checked
            return result
        if self.rust:
            result, out = alloc((len(rows), arr.shape[1]), self.dtype)
            _core.gather_dense_rows(arr, rows, out)
            return result
        return arr[rows].astype(self.dtype, copy=False)


class _CSRReader(_Reader):
    """In-memory CSR matrix: Rust gather into a dense float32 buffer."""

    def __init__(self, X: Any, dtype: np.dtype, as_sparse_tensor: bool) -> None:
        self.dtype = dtype
        self.X = X
        self.shape = X.shape
        self.indptr, self.indices, self.data = _csr_parts(X.indptr, X.indices, X.data)
        self.as_sparse_tensor = as_sparse_tensor

    def read(self, rows: np.ndarray, alloc: Allocator) -> Any:
        if self.as_sparse_tensor:
            indptr, indices, data = _take_csr_rows(self.indptr, self.indices, self.data, rows)
            shape = (len(rows), self.shape[1])
            return _torch_sparse("csr", indptr, indices, data, shape, self.dtype)
        if self.dtype == np.float32:
            result, out = alloc((len(rows), self.shape[1]), self.dtype)
            _core.gather_csr_rows(self.indptr, self.indices, self.data, rows, out)
            return result
        return sp.csr_matrix(self.X)[rows].astype(self.dtype).toarray()


class _CSCReader(_Reader):
    """In-memory CSC matrix: Rust gather (one pass over the stored entries per batch)."""

    def __init__(self, X: Any, dtype: np.dtype, as_sparse_tensor: bool) -> None:
        self.dtype = dtype
        self.X = X
        self.shape = X.shape
        self.indptr, self.indices, self.data = _csr_parts(X.indptr, X.indices, X.data)
        self.as_sparse_tensor = as_sparse_tensor

    def read(self, rows: np.ndarray, alloc: Allocator) -> Any:
        if self.as_sparse_tensor:
            sub = sp.csc_matrix(self.X)[rows].astype(self.dtype)
            return _torch_sparse("csc", sub.indptr, sub.indices, sub.data, sub.shape, self.dtype)
        if self.dtype == np.float32:
            result, out = alloc((len(rows), self.shape[1]), self.dtype)
            _core.gather_csc_rows(
                self.indptr, self.indices, self.data, rows, out, int(self.shape[0])
            )
            return result
        return sp.csc_matrix(self.X)[rows].astype(self.dtype).toarray()


class _BackedCSRReader(_Reader):
    """CSR matrix in an h5ad file (anndata's backed sparse dataset).

    ``indptr`` is read once; each batch reads the stored entries of its (sorted) rows in as
    few slices as possible, then the Rust gather scatters them into the output buffer.
    """

    def __init__(self, dataset: Any, dtype: np.dtype, as_sparse_tensor: bool) -> None:
        self.dtype = dtype
        self.shape = tuple(dataset.shape)
        group = dataset.group
        self.h5_indices = group["indices"]
        self.h5_data = group["data"]
        self.indptr = _native(group["indptr"][...]).astype(np.int64, copy=False)
        self.as_sparse_tensor = as_sparse_tensor

    def _read_rows(
        self, rows: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Compact CSR of the distinct rows of ``rows`` and each row's position in it."""
        uniq, inverse = np.unique(rows, return_inverse=True)
        starts, ends = self.indptr[uniq], self.indptr[uniq + 1]
        lengths = ends - starts
        runs, run_of_row = _coalesced_runs(starts, ends, _BACKED_GAP)
        indptr = np.zeros(len(uniq) + 1, dtype=np.int64)
        np.cumsum(lengths, out=indptr[1:])
        if not runs or indptr[-1] == 0:
            indices, data = np.zeros(0, np.int32), np.zeros(0, np.float32)
        else:
            indices = np.concatenate([self.h5_indices[a:b] for a, b in runs])
            data = np.concatenate([self.h5_data[a:b] for a, b in runs])
            run_starts, offsets = _run_offsets(runs)
            in_buffer = starts - run_starts[run_of_row] + offsets[run_of_row]
            positions = np.repeat(in_buffer - indptr[:-1], lengths)
            positions += np.arange(int(indptr[-1]), dtype=np.int64)
            indices, data = indices[positions], data[positions]
        _, indices, data = _csr_parts(indptr, indices, data)
        return indptr, indices, data, inverse.reshape(-1).astype(np.int64, copy=False)

    def read(self, rows: np.ndarray, alloc: Allocator) -> Any:
        indptr, indices, data, local_rows = self._read_rows(rows)
        if self.as_sparse_tensor:
            indptr, indices, data = _take_csr_rows(indptr, indices, data, local_rows)
            shape = (len(rows), self.shape[1])
            return _torch_sparse("csr", indptr, indices, data, shape, self.dtype)
        if self.dtype == np.float32:
            result, out = alloc((len(rows), self.shape[1]), self.dtype)
            _core.gather_csr_rows(indptr, indices, data, local_rows, out)
            return result
        X = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, self.shape[1]))
        return X[local_rows].astype(self.dtype).toarray()


class _H5DenseReader(_Reader):
    """Dense h5py dataset (backed X): coalesced slice reads of the sorted rows."""

    def __init__(self, dataset: Any, dtype: np.dtype) -> None:
        self.dtype = dtype
        self.dataset = dataset

    def read(self, rows: np.ndarray, alloc: Allocator) -> Any:
        shape = (len(rows), *self.dataset.shape[1:])
        result, out = alloc(shape, self.dtype)
        if len(rows) == 0:
            return result
        uniq, inverse = np.unique(rows, return_inverse=True)
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * self.dataset.dtype.itemsize)
        runs, run_of_row = _coalesced_runs(uniq, uniq + 1, max(0, (1 << 18) // row_bytes))
        blocks = [self.dataset[a:b] for a, b in runs]
        block = np.concatenate(blocks, axis=0) if len(blocks) > 1 else blocks[0]
        run_starts, offsets = _run_offsets(runs)
        local = (uniq - run_starts[run_of_row] + offsets[run_of_row])[inverse.reshape(-1)]
        if block.dtype == self.dtype:
            np.take(block, local, axis=0, out=out, mode="clip")
        else:
            out[...] = block[local]
        return result


class _GenericReader(_Reader):
    """Anything else that supports row indexing (dask arrays, backed CSC, ``RowSource``)."""

    def __init__(self, obj: Any, dtype: np.dtype, as_sparse_tensor: bool) -> None:
        self.dtype = dtype
        self.obj = obj
        self.as_sparse_tensor = as_sparse_tensor

    def read(self, rows: np.ndarray, alloc: Allocator) -> Any:
        sliced = self.obj[rows]
        if hasattr(sliced, "compute"):
            sliced = sliced.compute()
        if sliced.shape[0] != len(rows):
            raise ValueError(
                f"{type(self.obj).__name__} returned {sliced.shape[0]} rows for "
                f"{len(rows)} requested."
            )
        if sp.issparse(sliced):
            if sliced.format == "csr" and self.dtype == np.float32 and not self.as_sparse_tensor:
                indptr, indices, data = _csr_parts(sliced.indptr, sliced.indices, sliced.data)
                result, out = alloc(sliced.shape, self.dtype)
                _core.gather_csr_rows(indptr, indices, data, np.arange(len(rows)), out)
                return result
            sliced = sliced.astype(self.dtype)
            if self.as_sparse_tensor:
                layout = "csc" if sliced.format == "csc" else "csr"
                sliced = sp.csc_matrix(sliced) if layout == "csc" else sp.csr_matrix(sliced)
                return _torch_sparse(
                    layout, sliced.indptr, sliced.indices, sliced.data, sliced.shape, self.dtype
                )
            return sliced.toarray()
        return np.asarray(sliced).astype(self.dtype, copy=False)


def _is_backed_sparse(obj: Any) -> bool:
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # pragma: no cover - anndata < 0.10.8
        from anndata.experimental import CSCDataset, CSRDataset
    return isinstance(obj, (CSRDataset, CSCDataset))


def _is_dask(obj: Any) -> bool:
    return type(obj).__module__.startswith("dask.")


def _make_reader(key: str, obj: Any, dtype: np.dtype, load_sparse_tensor: bool) -> _Reader:
    import h5py

    if isinstance(obj, np.ndarray):
        return _DenseReader(obj, dtype)
    if isinstance(obj, pd.DataFrame):
        return _DenseReader(obj.to_numpy(), dtype)
    if sp.issparse(obj):
        if obj.format == "csr":
            return _CSRReader(obj, dtype, load_sparse_tensor)
        if obj.format == "csc":
            return _CSCReader(obj, dtype, load_sparse_tensor)
        return _CSRReader(sp.csr_matrix(obj), dtype, load_sparse_tensor)
    if _is_backed_sparse(obj):
        if obj.format == "csr":
            return _BackedCSRReader(obj, dtype, load_sparse_tensor)
        return _GenericReader(obj, dtype, load_sparse_tensor)
    if isinstance(obj, h5py.Dataset):
        return _H5DenseReader(obj, dtype)
    if _is_dask(obj) or isinstance(obj, RowSource):
        return _GenericReader(obj, dtype, load_sparse_tensor)
    raise TypeError(f"{key} is not a supported type")


class AnnTorchDataset(Dataset):
    """A torch ``Dataset`` over the fields registered by an :class:`~scvi_rs.data.AnnDataManager`.

    Parameters
    ----------
    adata_manager
        Manager with a registered AnnData.
    getitem_tensors
        Registry keys to load: a ``list`` (default dtypes: ``np.int64`` for batch, labels,
        categorical covariates and indices, ``np.float32`` otherwise), a ``dict`` of key to
        numpy dtype, or ``None`` for every key of the data registry.
    load_sparse_tensor
        Return sparse matrices (X) as torch sparse CSR/CSC tensors instead of dense arrays.

    Notes
    -----
    ``dataset[idx]`` takes an int, a list or array of ints, or a slice, and returns a dict
    of registry key to an array with ``len(idx)`` rows (obs columns are ``(n, 1)``). With a
    backed AnnData the rows come back sorted, as in scvi-tools.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        getitem_tensors: list | dict[str, type] | None = None,
        load_sparse_tensor: bool = False,
    ) -> None:
        super().__init__()
        if adata_manager.adata is None:
            raise ValueError("Please run ``register_fields`` on ``adata_manager`` first.")
        self.adata_manager = adata_manager
        self.load_sparse_tensor = load_sparse_tensor
        self._lock = threading.Lock()
        self._readers: dict[str, _Reader | None] | None = None
        self.keys_and_dtypes = getitem_tensors

    # -- reference properties --------------------------------------------------------------
    @property
    def registered_keys(self):
        """Keys of the manager's data registry."""
        return self.adata_manager.data_registry.keys()

    @property
    def keys_and_dtypes(self) -> dict:
        """Registry keys loaded by ``__getitem__`` and their numpy dtypes."""
        return self._keys_and_dtypes

    @keys_and_dtypes.setter
    def keys_and_dtypes(self, getitem_tensors: list | dict | None) -> None:
        if isinstance(getitem_tensors, list):
            keys_to_dtypes = {k: registry_key_to_default_dtype(k) for k in getitem_tensors}
        elif isinstance(getitem_tensors, dict):
            keys_to_dtypes = getitem_tensors
        elif getitem_tensors is None:
            keys_to_dtypes = {k: registry_key_to_default_dtype(k) for k in self.registered_keys}
        else:
            raise ValueError("`getitem_tensors` must be a `list`, `dict`, or `None`")
        registered = self.registered_keys
        for key in keys_to_dtypes:
            if key not in registered:
                raise KeyError(f"{key} not found in the data registry.")
        self._keys_and_dtypes = keys_to_dtypes
        self._readers = None

    @property
    def data(self) -> dict:
        """Registry key -> the registered object (array, sparse matrix, DataFrame); cached."""
        if not hasattr(self, "_data"):
            self._data = {
                key: self.adata_manager.get_from_registry(key) for key in self.keys_and_dtypes
            }
        return self._data

    def __len__(self) -> int:
        return self.adata_manager.adata.shape[0]

    def __getstate__(self) -> dict:
        # worker processes rebuild the lock and readers (`spawn`/`forkserver` pickle this)
        state = self.__dict__.copy()
        state["_lock"] = None
        state["_readers"] = None
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- loading ---------------------------------------------------------------------------
    @property
    def is_backed(self) -> bool:
        """Whether the AnnData is backed by a file (rows are then loaded in sorted order)."""
        return bool(getattr(self.adata_manager.adata, "isbacked", False))

    def _prepare(self) -> dict[str, _Reader | None]:
        """Build the per-field readers once (thread safe; dtype conversions happen here)."""
        readers = self._readers
        if readers is not None:
            return readers
        with self._lock:
            if self._readers is None:
                built: dict[str, _Reader | None] = {}
                for key, dtype in self.keys_and_dtypes.items():
                    obj = self.data[key]
                    if isinstance(obj, str) and key == REGISTRY_KEYS.MINIFY_TYPE_KEY:
                        built[key] = None  # the minification type, not per-cell data
                        continue
                    built[key] = _make_reader(key, obj, np.dtype(dtype), self.load_sparse_tensor)
                self._n_obs = len(self)
                self._backed = self.is_backed
                self._readers = built
            return self._readers

    def _rows(self, indexes: Any) -> np.ndarray:
        """``indexes`` as checked int64 rows (negative ones wrapped; sorted when backed)."""
        self._prepare()
        n = self._n_obs
        if isinstance(indexes, np.ndarray) and indexes.dtype == np.int64 and indexes.ndim == 1:
            rows = indexes
        elif isinstance(indexes, (int, np.integer)):
            rows = np.array([indexes], dtype=np.int64)
        elif isinstance(indexes, slice):
            rows = np.arange(n, dtype=np.int64)[indexes]
        else:
            rows = np.asarray(indexes)
            if rows.dtype == np.bool_:
                rows = np.flatnonzero(rows)
            elif rows.size == 0:
                rows = rows.astype(np.int64).reshape(-1)
            elif rows.dtype.kind not in "iu":
                raise IndexError(
                    "arrays used as indices must be of integer (or boolean) type, "
                    f"got {rows.dtype}"
                )
            rows = rows.reshape(-1).astype(np.int64, copy=False)
        if rows.size:
            lo, hi = int(rows.min()), int(rows.max())
            if lo < 0:
                rows = np.where(rows < 0, rows + n, rows)
                lo = int(rows.min())
            if lo < 0 or hi >= n:
                bad = lo if lo < 0 else hi
                raise IndexError(f"index {bad} is out of bounds for axis 0 with size {n}")
        if self._backed:
            rows = np.sort(rows)
        return rows

    def _load(self, rows: np.ndarray, alloc: Allocator = numpy_allocator) -> dict[str, Any]:
        """Read ``rows`` (checked, int64) of every field; buffers come from ``alloc``."""
        readers = self._prepare()
        out: dict[str, Any] = {}
        for key, reader in readers.items():
            if reader is not None:
                out[key] = reader.read(rows, alloc)
        return out

    def __getitem__(self, indexes: int | list[int] | slice | np.ndarray) -> dict[str, Any]:
        """Rows ``indexes`` of every loaded field: registry key -> array of ``len(indexes)`` rows."""
        return self._load(self._rows(indexes))


__all__ = ["AnnTorchDataset", "registry_key_to_default_dtype"]
