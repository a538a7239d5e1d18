"""The Rust kernels stay memory-safe whatever Python does to their arrays meanwhile."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import scipy.sparse as sp

from scvi_rs import _core


def _build_mapping(values):
    """The categories ``pd.Categorical(values)`` has, as ``_core.factorize`` gives them."""
    return _core.factorize(values)[0]


def _csr(n_rows=2_000, n_vars=300, density=0.1, seed=0, dtype=np.float32):
    return sp.random(n_rows, n_vars, density=density, format="csr", dtype=dtype, random_state=seed)


def test_out_aliasing_indices_through_frombuffer_is_refused():
    x = _csr()
    # `out` and `indices` are views of one buffer with different base objects
    raw = bytearray(max(x.indices.nbytes, 4 * 8 * x.shape[1]))
    indices = np.frombuffer(raw, dtype=x.indices.dtype, count=x.indices.size)
    indices[:] = x.indices
    out = np.frombuffer(raw, dtype=np.float32, count=8 * x.shape[1]).reshape(8, x.shape[1])
    with pytest.raises(ValueError, match="out shares memory with indices"):
        _core.gather_csr_rows(x.indptr, indices, x.data, np.arange(8), out)


def test_out_aliasing_data_through_as_strided_is_refused():
    x = _csr()
    data = x.data.copy()
    out = np.lib.stride_tricks.as_strided(data[: 4 * x.shape[1]], shape=(4, x.shape[1]))
    with pytest.raises(ValueError, match="out shares memory with data"):
        _core.gather_csr_rows(x.indptr, x.indices, data, np.arange(4), out)


def test_out_aliasing_dense_input_is_refused():
    x = np.zeros((10, 5), dtype=np.float32)
    out = np.lib.stride_tricks.as_strided(x[2:], shape=(4, 5), strides=x.strides)
    with pytest.raises(ValueError, match="out shares memory with X"):
        _core.gather_dense_rows(x, np.arange(4), out)


def test_adjacent_but_disjoint_buffers_are_accepted():
    x = _csr(n_rows=20, n_vars=10)
    raw = np.zeros(x.nnz + 4 * 10, dtype=np.float32)
    data, out = raw[: x.nnz], raw[x.nnz :].reshape(4, 10)
    data[:] = x.data
    _core.gather_csr_rows(x.indptr, x.indices, data, np.arange(4), out)
    np.testing.assert_array_equal(out, x[:4].toarray())


def test_indices_rewritten_by_another_thread_never_crash():
    x = _csr(n_rows=20_000, n_vars=2_000, density=0.05)
    indices = x.indices.copy()
    rows = np.random.default_rng(0).integers(0, x.shape[0], size=1_024)
    out = np.empty((rows.size, x.shape[1]), dtype=np.float32)
    stop = threading.Event()

    def vandal():
        bad = np.array([-5, 10**6, x.shape[1]], dtype=indices.dtype)
        rng = np.random.default_rng(1)
        while not stop.is_set():
            pos = rng.integers(0, indices.size, size=256)
            indices[pos] = bad[rng.integers(0, 3, size=256)]
            indices[pos] = x.indices[pos]

    thread = threading.Thread(target=vandal)
    thread.start()
    outcomes = set()
    try:
        for _ in range(200):
            try:
                _core.gather_csr_rows(x.indptr, indices, x.data, rows, out, n_threads=2)
                outcomes.add("ok")
            except ValueError:  # a column out of range, seen mid-rewrite
                outcomes.add("error")
    finally:
        stop.set()
        thread.join()
    assert outcomes <= {"ok", "error"}


def test_float64_duplicate_entries_sum_in_float64():
    eps = float(np.finfo(np.float32).eps)
    data = np.array([1.0 + 0.6 * eps, -1.0, 3.0])
    x = sp.csr_matrix((data, np.array([1, 1, 0]), np.array([0, 3])), shape=(1, 2))
    out = np.empty((1, 2), dtype=np.float32)
    _core.gather_csr_rows(x.indptr, x.indices, x.data, np.array([0]), out)
    np.testing.assert_array_equal(out, x.toarray().astype(np.float32))
    assert out[0, 1] != np.float32(eps)  # what summing after the cast would give


def test_strings_freed_by_another_thread_never_crash():
    n = 400_000
    values = np.array([f"cell-type-{i % 5_000}-{'x' * (i % 7)}" for i in range(n)], dtype=object)
    stop = threading.Event()

    def vandal():
        rng = np.random.default_rng(2)
        while not stop.is_set():
            pos = rng.integers(0, n, size=512)
            # new str objects replace the old ones, whose last reference is dropped
            values[pos] = np.array([f"other-{p}" for p in pos], dtype=object)

    thread = threading.Thread(target=vandal)
    thread.start()
    try:
        for _ in range(5):
            mapping, codes = _core.factorize(values)
            assert codes.shape == (n,)
            assert codes.max() < len(mapping)
            _core.encode_categorical(values, mapping)
            _build_mapping(values)
    except ValueError:
        pass  # a value unknown to a mapping taken a moment before: an error, not a crash
    finally:
        stop.set()
        thread.join()
