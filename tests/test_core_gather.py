"""Boundary tests of the gather kernels: parity with scipy/numpy and every bad input."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import sparse

from scvi_rs import _core

INDEX_DTYPES = [np.int32, np.int64]
DATA_DTYPES = [
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
]
ROW_DTYPES = [np.int32, np.int64, np.uint32, np.int16]


def _raw_csr(rng: np.random.Generator, n_rows: int, n_vars: int, max_per_row: int = 6):
    """A CSR triple with unsorted and duplicate column entries (scipy sums duplicates)."""
    counts = rng.integers(0, max_per_row + 1, n_rows) if n_vars else np.zeros(n_rows, int)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    indices = rng.integers(0, max(n_vars, 1), int(indptr[-1]))
    data = rng.integers(1, 50, int(indptr[-1])).astype(np.float64)
    return indptr, indices, data


def _reference(indptr, indices, data, shape, rows, fmt="csr"):
    cls = sparse.csr_matrix if fmt == "csr" else sparse.csc_matrix
    X = cls((data.astype(np.float64), indices, indptr), shape=shape)
    return X.toarray()[np.asarray(rows, dtype=np.int64)].astype(np.float32)


def _out(n, m):
    return np.full((n, m), np.nan, dtype=np.float32)  # NaN: must be fully overwritten


@pytest.mark.parametrize("indptr_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("indices_dtype", INDEX_DTYPES)
@pytest.mark.parametrize("data_dtype", DATA_DTYPES)
def test_csr_dtype_matrix(indptr_dtype, indices_dtype, data_dtype):
    rng = np.random.default_rng(0)
    indptr, indices, data = _raw_csr(rng, 40, 9)
    data = (data > 25) if data_dtype is np.bool_ else data
    rows = np.array([3, 3, 0, 39, 17, 3], dtype=np.int64)
    out = _out(len(rows), 9)
    args = (indptr.astype(indptr_dtype), indices.astype(indices_dtype), data.astype(data_dtype))
    _core.gather_csr_rows(*args, rows, out)
    np.testing.assert_array_equal(out, _reference(*args, (40, 9), rows))


@pytest.mark.parametrize("rows_dtype", ROW_DTYPES)
def test_row_dtypes(rows_dtype):
    X = sparse.random(30, 5, density=0.4, format="csr", dtype=np.float32, random_state=1)
    rows = np.array([29, 0, 7, 7], dtype=rows_dtype)
    out = _out(4, 5)
    _core.gather_csr_rows(X.indptr, X.indices, X.data, rows, out)
    np.testing.assert_array_equal(out, X[rows.astype(np.int64)].toarray())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n_rows=st.integers(0, 25),
    n_vars=st.integers(0, 12),
    seed=st.integers(0, 2**32 - 1),
    n_req=st.integers(0, 40),
    fmt=st.sampled_from(["csr", "csc"]),
    index_dtypes=st.tuples(st.sampled_from(INDEX_DTYPES), st.sampled_from(INDEX_DTYPES)),
    data_dtype=st.sampled_from([np.float32, np.float64, np.int32, np.int64, np.uint16]),
    n_threads=st.sampled_from([None, 1, 2, 3]),
)
def test_gather_matches_scipy(
    n_rows, n_vars, seed, n_req, fmt, index_dtypes, data_dtype, n_threads
):
    """Random matrices with empty rows, duplicates, unsorted entries; repeated requested rows."""
    rng = np.random.default_rng(seed)
    major, minor = (n_rows, n_vars) if fmt == "csr" else (n_vars, n_rows)
    indptr, indices, data = _raw_csr(rng, major, minor)
    indptr, indices = indptr.astype(index_dtypes[0]), indices.astype(index_dtypes[1])
    data = data.astype(data_dtype)
    rows = rng.integers(0, n_rows, n_req if n_rows else 0)
    out = _out(len(rows), n_vars)
    if fmt == "csr":
        _core.gather_csr_rows(indptr, indices, data, rows, out, n_threads=n_threads)
    else:
        _core.gather_csc_rows(indptr, indices, data, rows, out, n_rows)
    np.testing.assert_array_equal(
        out, _reference(indptr, indices, data, (n_rows, n_vars), rows, fmt)
    )


@settings(max_examples=30, deadline=None)
@given(
    n_rows=st.integers(1, 20),
    n_vars=st.integers(0, 8),
    seed=st.integers(0, 2**32 - 1),
    dtype=st.sampled_from([np.float32, np.float64, np.int64, np.uint8, np.bool_]),
)
def test_dense_matches_numpy(n_rows, n_vars, seed, dtype):
    rng = np.random.default_rng(seed)
    X = (rng.random((n_rows, n_vars)) * 100).astype(dtype)
    rows = rng.integers(0, n_rows, 15)
    out = _out(len(rows), n_vars)
    _core.gather_dense_rows(X, rows, out)
    np.testing.assert_array_equal(out, X[rows].astype(np.float32))


def test_empty_cases():
    empty = sparse.csr_matrix((0, 0), dtype=np.float32)
    _core.gather_csr_rows(
        empty.indptr, empty.indices, empty.data, np.array([], np.int64), _out(0, 0)
    )
    X = sparse.csr_matrix((5, 3), dtype=np.float32)  # all rows empty
    out = _out(2, 3)
    _core.gather_csr_rows(X.indptr, X.indices, X.data, np.array([4, 0]), out)
    assert (out == 0).all()
    out = _out(0, 3)
    _core.gather_csr_rows(X.indptr, X.indices, X.data, np.array([], np.int32), out)
    C = X.tocsc()
    _core.gather_csc_rows(C.indptr, C.indices, C.data, np.array([], np.int64), _out(0, 3), 5)
    _core.gather_dense_rows(np.zeros((0, 3), np.float32), np.array([], np.int64), _out(0, 3))


def test_large_batch_threads_match_sequential():
    X = sparse.random(3000, 700, density=0.3, format="csr", dtype=np.float32, random_state=2)
    rows = np.random.default_rng(3).integers(0, 3000, 1024)
    ref = X[rows].toarray()
    for n_threads in (None, 1, 2, 5):
        out = _out(len(rows), 700)
        _core.gather_csr_rows(X.indptr, X.indices, X.data, rows, out, n_threads=n_threads)
        np.testing.assert_array_equal(out, ref)
    out = _out(len(rows), 700)
    _core.gather_dense_rows(X.toarray(), rows, out, n_threads=2)
    np.testing.assert_array_equal(out, ref)


def test_concurrent_callers_from_python_threads():
    """The GIL is released: calls from several Python threads give correct results."""
    X = sparse.random(2000, 300, density=0.2, format="csr", dtype=np.float32, random_state=4)
    errors = []

    def work(seed):
        rng = np.random.default_rng(seed)
        for _ in range(20):
            rows = rng.integers(0, 2000, 256)
            out = _out(256, 300)
            _core.gather_csr_rows(X.indptr, X.indices, X.data, rows, out)
            if not np.array_equal(out, X[rows].toarray()):
                errors.append(seed)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors


# ---------------------------------------------------------------- bad input


@pytest.fixture
def csr():
    """10 x 4, every row holding two entries."""
    dense = np.zeros((10, 4), np.float32)
    for r in range(10):
        dense[r, [r % 4, (r + 1) % 4]] = [r + 1, r + 2]
    return sparse.csr_matrix(dense)


def _gather(X, rows=(0, 1), out=None, **kw):
    rows = np.asarray(rows, dtype=np.int64)
    out = _out(len(rows), X.shape[1]) if out is None else out
    _core.gather_csr_rows(
        kw.get("indptr", X.indptr), kw.get("indices", X.indices), kw.get("data", X.data), rows, out
    )


@pytest.mark.parametrize("row", [10, 11, -1, -(2**62), 2**62])
def test_row_out_of_range_is_index_error(csr, row):
    with pytest.raises(IndexError, match=f"row index {row} is out of range .* 10 rows"):
        _gather(csr, rows=[0, row])


def test_row_out_of_range_csc_and_dense(csr):
    C = csr.tocsc()
    with pytest.raises(IndexError, match=r"row index 10"):
        _core.gather_csc_rows(C.indptr, C.indices, C.data, np.array([10]), _out(1, 4), 10)
    with pytest.raises(IndexError, match=r"row index -1"):
        _core.gather_csc_rows(C.indptr, C.indices, C.data, np.array([-1]), _out(1, 4), 10)
    with pytest.raises(IndexError, match=r"row index 10"):
        _core.gather_dense_rows(csr.toarray(), np.array([10]), _out(1, 4))
    with pytest.raises(IndexError, match=r"row index -3"):
        _core.gather_dense_rows(csr.toarray(), np.array([-3]), _out(1, 4))


def test_column_out_of_range_is_value_error(csr):
    indices = csr.indices.copy()
    indices[csr.indptr[1]] = 4
    with pytest.raises(ValueError, match=r"column index 4 in row 1 .* n_vars=4"):
        _gather(csr, rows=[0, 1], indices=indices)
    indices[csr.indptr[1]] = -2
    with pytest.raises(ValueError, match=r"column index -2 in row 1"):
        _gather(csr, rows=[1], indices=indices)
    _gather(csr, rows=[0, 2], indices=indices)  # the bad row is not touched: fine
    C = csr.tocsc()
    bad = C.indices.copy()
    bad[0] = 10
    with pytest.raises(ValueError, match=r"stored row index 10"):
        _core.gather_csc_rows(C.indptr, bad, C.data, np.array([0]), _out(1, 4), 10)


def test_bad_indptr_is_value_error(csr):
    indptr = csr.indptr.copy()
    indptr[3] = indptr[4] + 1  # indptr decreases between rows 3 and 4
    with pytest.raises(ValueError, match=r"non-decreasing"):
        _gather(csr, rows=[3], indptr=indptr)
    bad0 = csr.indptr.copy()
    bad0[0] = 1
    with pytest.raises(ValueError, match=r"indptr\[0\] must be 0"):
        _gather(csr, indptr=bad0)
    big = csr.indptr.copy()
    big[-1] = len(csr.indices) + 1
    with pytest.raises(ValueError, match=r"indptr\[-1\]"):
        _gather(csr, indptr=big)
    with pytest.raises(ValueError, match=r"at least one entry"):
        _gather(csr, rows=[], indptr=np.array([], np.int32))
    with pytest.raises(ValueError, match=r"same length"):
        _gather(csr, data=csr.data[:-1])
    C = csr.tocsc()
    cp = C.indptr.copy()
    cp[2] = cp[3] + 1
    with pytest.raises(ValueError, match=r"non-decreasing"):
        _core.gather_csc_rows(cp, C.indices, C.data, np.array([0]), _out(1, 4), 10)


def test_bad_out(csr):
    with pytest.raises(ValueError, match=r"out.shape\[0\] = 3 must equal len\(rows\) = 2"):
        _gather(csr, out=_out(3, 4))
    with pytest.raises(ValueError, match=r"2-dimensional"):
        _gather(csr, out=np.zeros(8, np.float32))
    with pytest.raises(TypeError, match=r"out must have dtype float32"):
        _gather(csr, out=np.zeros((2, 4), np.float64))
    with pytest.raises(ValueError, match=r"C-contiguous"):
        _gather(csr, out=np.zeros((2, 4), np.float32, order="F"))
    with pytest.raises(ValueError, match=r"C-contiguous"):
        _gather(csr, out=np.zeros((2, 8), np.float32)[:, ::2])
    ro = np.zeros((2, 4), np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"read-only"):
        _gather(csr, out=ro)
    with pytest.raises(TypeError, match=r"out must be a numpy.ndarray, got list"):
        _gather(csr, out=[[0.0] * 4] * 2)
    with pytest.raises(ValueError, match=r"out.shape\[1\] = 5 must equal X.shape\[1\] = 4"):
        _core.gather_dense_rows(csr.toarray(), np.array([0]), _out(1, 5))
    C = csr.tocsc()
    with pytest.raises(ValueError, match=r"number of columns"):
        _core.gather_csc_rows(C.indptr, C.indices, C.data, np.array([0]), _out(1, 5), 10)
    # A wrong, huge n_rows costs nothing: the lookup table is sized by the rows asked for.
    out = _out(1, 4)
    _core.gather_csc_rows(C.indptr, C.indices, C.data, np.array([2]), out, 2**62)
    np.testing.assert_array_equal(out, csr[[2]].toarray())
    with pytest.raises(ValueError, match=r"n_rows must be >= 0"):
        _core.gather_csc_rows(C.indptr, C.indices, C.data, np.array([0]), _out(1, 4), -1)


def test_out_aliasing_an_input_is_rejected():
    data = np.ones(4, np.float32)
    out = data.reshape(1, 4)
    with pytest.raises(ValueError, match=r"overlaps"):
        _core.gather_csr_rows(np.array([0, 4]), np.arange(4), data, np.array([0]), out)


def test_bad_inputs(csr):
    with pytest.raises(ValueError, match=r"indices must be C-contiguous"):
        _gather(csr, indices=np.repeat(csr.indices, 2)[::2])
    with pytest.raises(ValueError, match=r"data must be C-contiguous"):
        _gather(csr, data=np.repeat(csr.data, 2)[::2])
    with pytest.raises(ValueError, match=r"rows must be C-contiguous"):
        _core.gather_csr_rows(csr.indptr, csr.indices, csr.data, np.arange(4)[::2], _out(2, 4))
    with pytest.raises(TypeError, match=r"indices must have dtype int32 or int64, got float64"):
        _gather(csr, indices=csr.indices.astype(np.float64))
    with pytest.raises(TypeError, match=r"indptr must have dtype int32 or int64"):
        _gather(csr, indptr=csr.indptr.astype(np.uint8))
    with pytest.raises(TypeError, match=r"data must have dtype"):
        _gather(csr, data=csr.data.astype(np.complex64))
    with pytest.raises(TypeError, match=r"data must have dtype"):
        _gather(csr, data=csr.data.astype(">f4"))
    with pytest.raises(TypeError, match=r"rows must have dtype"):
        _core.gather_csr_rows(csr.indptr, csr.indices, csr.data, np.array([0.0]), _out(1, 4))
    with pytest.raises(TypeError, match=r"indptr must be a numpy.ndarray"):
        _gather(csr, indptr=list(csr.indptr))
    with pytest.raises(ValueError, match=r"1-dimensional"):
        _gather(csr, data=csr.data.reshape(1, -1))
    with pytest.raises(ValueError, match=r"X must be C-contiguous"):
        _core.gather_dense_rows(np.asfortranarray(csr.toarray()), np.array([0]), _out(1, 4))
    with pytest.raises(ValueError, match=r"n_threads must be >= 1"):
        _core.gather_csr_rows(
            csr.indptr, csr.indices, csr.data, np.array([0]), _out(1, 4), n_threads=0
        )
