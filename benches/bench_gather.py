"""Minibatch gather benchmark: ``_core.gather_csr_rows`` against scipy's ``X[rows].toarray()``.

Two matrices shaped like single-cell counts (float32 data, int32 indices, canonical CSR):
100,000 cells x 2,000 genes at 10% density and 20,000 cells x 30,000 genes at 3%. Batches of
128 and 1,024 random rows. ``rust`` fills a reused float32 buffer (what the loader does),
``rust_alloc`` allocates a fresh one per call (what scipy has to do).

Two row modes:
- ``fixed``: one random batch, repeated (pytest-benchmark's usual loop; the batch's rows stay
  in cache between calls);
- ``fresh``: a new random batch every call (an epoch's access pattern: cold rows).

The script then runs ``examples/gather_limit.rs``: the same gather beside the memset+scatter
limit (zero the batch, write each stored value at a precomputed position), in Rust.

Run through pytest-benchmark (``pytest benches/bench_gather.py --benchmark-enable``), or as
a script for a table of medians (``python benches/bench_gather.py``).
"""

from __future__ import annotations

import platform
import sys
import time
from collections.abc import Callable
from functools import cache

import numpy as np
import pytest
from scipy import sparse

from scvi_rs import _core

CASES = {"2000g_10pct": (100_000, 2_000, 0.10), "30000g_3pct": (20_000, 30_000, 0.03)}
BATCHES = (128, 1024)
IMPLS = ("rust", "rust_alloc", "scipy")


@cache
def make_matrix(case: str) -> sparse.csr_matrix:
    """A canonical CSR matrix with about ``density * n_genes`` non-zeros per row."""
    n_cells, n_genes, density = CASES[case]
    rng = np.random.default_rng(0)
    per_row = int(n_genes * density)
    indptr = np.arange(n_cells + 1, dtype=np.int64) * per_row
    indices = np.sort(rng.integers(0, n_genes, (n_cells, per_row), dtype=np.int32), axis=1)
    data = rng.poisson(1.5, n_cells * per_row).astype(np.float32) + 1
    X = sparse.csr_matrix((data, indices.ravel(), indptr), shape=(n_cells, n_genes))
    X.sum_duplicates()  # canonical: sorted, unique columns (as after AnnData I/O)
    X.indptr = X.indptr.astype(np.int32)
    return X


def gather_fn(X: sparse.csr_matrix, batch: int, impl: str) -> Callable[[np.ndarray], object]:
    out = np.empty((batch, X.shape[1]), dtype=np.float32)
    indptr, indices, data = X.indptr, X.indices, X.data

    def rust(rows: np.ndarray) -> np.ndarray:
        _core.gather_csr_rows(indptr, indices, data, rows, out)
        return out

    def rust_alloc(rows: np.ndarray) -> np.ndarray:
        fresh = np.empty((len(rows), X.shape[1]), dtype=np.float32)
        _core.gather_csr_rows(indptr, indices, data, rows, fresh)
        return fresh

    def scipy_(rows: np.ndarray) -> np.ndarray:
        return X[rows].toarray()

    return {"rust": rust, "rust_alloc": rust_alloc, "scipy": scipy_}[impl]


@pytest.mark.skipif(_core.debug_build, reason="benchmarks need a release build")
@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("rows_mode", ["fixed", "fresh"])
def test_gather(benchmark, case: str, batch: int, impl: str, rows_mode: str) -> None:
    X = make_matrix(case)
    fn = gather_fn(X, batch, impl)
    rng = np.random.default_rng(1)
    benchmark.group = f"{case} batch={batch} rows={rows_mode}"
    if rows_mode == "fixed":
        rows = rng.integers(0, X.shape[0], batch)
        result = benchmark(fn, rows)
    else:
        rounds = 200 if X.shape[1] * batch < 10_000_000 else 30
        result = benchmark.pedantic(
            fn, setup=lambda: ((rng.integers(0, X.shape[0], batch),), {}), rounds=rounds
        )
    assert result.shape == (batch, X.shape[1])


def _median_us(fn: Callable[[np.ndarray], object], n_rows: int, batch: int, fresh: bool) -> float:
    rng = np.random.default_rng(1)
    fixed = rng.integers(0, n_rows, batch)
    reps = 200 if batch * 2000 <= 3_000_000 else 30
    times = []
    for _ in range(reps):
        rows = rng.integers(0, n_rows, batch) if fresh else fixed
        t0 = time.perf_counter()
        fn(rows)
        times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e6)


def main() -> None:
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, {platform.machine()}")
    print("| matrix | batch | rows | rust (us) | rust_alloc (us) | scipy (us) | scipy / rust |")
    print("|---|---|---|---|---|---|---|")
    for case in CASES:
        X = make_matrix(case)
        for batch in BATCHES:
            for fresh in (False, True):
                t = {
                    i: _median_us(gather_fn(X, batch, i), X.shape[0], batch, fresh) for i in IMPLS
                }
                print(
                    f"| {case} | {batch} | {'fresh' if fresh else 'fixed'} | {t['rust']:.0f} | "
                    f"{t['rust_alloc']:.0f} | {t['scipy']:.0f} | {t['scipy'] / t['rust']:.1f}x |"
                )


def limit_table() -> None:
    """The Rust gather beside its memset+scatter limit (examples/gather_limit.rs), same run."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    cmd = ["cargo", "run", "-q", "--release", "--no-default-features", "--example"]
    subprocess.run([*cmd, "gather_limit"], cwd=repo, check=True)


if __name__ == "__main__":
    main()
    limit_table()
