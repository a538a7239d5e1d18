"""Registration benchmark: ``AnnDataManager.register_fields`` on 1,000,000 cells.

A batch column of 64 string categories and a labels column (16 categories) are encoded,
beside the same encoding done with pandas alone (``pd.Categorical(values).codes`` written
back to ``obs``). ``X`` is a tiny sparse matrix (1e6 x 10 CSR, one non-zero per row), so the
figures measure registration, not data copying.

Run as a script for a table (``python benches/bench_register.py``), or through
pytest-benchmark (``pytest benches/bench_register.py --benchmark-enable``).
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np
import pandas as pd
import scipy.sparse as sp
from anndata import AnnData

from scvi_rs.data import AnnDataManager
from scvi_rs.data.fields import CategoricalObsField, LayerField

N_CELLS = 1_000_000
N_GENES = 10
N_BATCHES = 64
N_LABELS = 16


def make_adata(n_cells: int = N_CELLS, categorical: bool = False) -> AnnData:
    rng = np.random.default_rng(0)
    rows = np.arange(n_cells)
    x = sp.csr_matrix(
        (np.ones(n_cells, dtype=np.float32), (rows, rng.integers(0, N_GENES, n_cells))),
        shape=(n_cells, N_GENES),
    )
    batch_names = np.array([f"batch_{i}" for i in range(N_BATCHES)], dtype=object)
    label_names = np.array([f"cell_type_{i}" for i in range(N_LABELS)], dtype=object)
    batch = batch_names[rng.integers(0, N_BATCHES, n_cells)]
    labels = label_names[rng.integers(0, N_LABELS, n_cells)]
    obs = pd.DataFrame(
        {"batch": batch, "labels": labels}, index=pd.RangeIndex(n_cells).astype(str)
    )
    if categorical:
        obs = obs.astype("category")
    return AnnData(X=x, obs=obs)


def register(adata: AnnData) -> AnnDataManager:
    manager = AnnDataManager(
        [
            LayerField("X", None, is_count_data=True),
            CategoricalObsField("batch", "batch"),
            CategoricalObsField("labels", "labels"),
        ]
    )
    manager.register_fields(adata)
    return manager


def pandas_only(adata: AnnData) -> None:
    obs = adata.obs
    for key in ("batch", "labels"):
        obs[f"_pd_{key}"] = pd.Categorical(obs[key]).codes


def interleave(adata: AnnData, other_setup: bool) -> None:
    """Another manager registers ``adata`` (same setup, or batch taken from labels)."""
    second = AnnDataManager(
        [
            LayerField("X", None, is_count_data=True),
            CategoricalObsField("batch", "labels" if other_setup else "batch"),
            CategoricalObsField("labels", "labels"),
        ]
    )
    second.register_fields(adata)


def time_validate(adata: AnnData, first: AnnDataManager, other_setup: bool, rounds=5) -> float:
    """Best time of ``first.validate()`` right after another manager registered ``adata``."""
    best = float("inf")
    for _ in range(rounds):
        interleave(adata, other_setup)
        start = time.perf_counter()
        first.validate()
        best = min(best, time.perf_counter() - start)
    return best


# -- pytest-benchmark entry points -----------------------------------------------------------


def test_register_fields_strings(benchmark):
    adata = make_adata()
    benchmark.pedantic(register, args=(adata,), rounds=5, iterations=1)


def test_pandas_only_strings(benchmark):
    adata = make_adata()
    benchmark.pedantic(pandas_only, args=(adata,), rounds=5, iterations=1)


def test_register_fields_categorical(benchmark):
    adata = make_adata(categorical=True)
    benchmark.pedantic(register, args=(adata,), rounds=5, iterations=1)


# -- script ----------------------------------------------------------------------------------


def _best(fn, *args, rounds: int = 5) -> float:
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn(*args)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    import os

    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    print(f"machine: {cpu}, {os.cpu_count()} cores, {platform.system()} {platform.machine()}")
    print(f"python {sys.version.split()[0]}, numpy {np.__version__}, pandas {pd.__version__}")
    print(f"{N_CELLS:,} cells, batch: {N_BATCHES} categories, labels: {N_LABELS} categories")
    print()
    print("| case | best of 5 (ms) |")
    print("|---|---|")
    strings = make_adata()
    categorical = make_adata(categorical=True)
    rows = [
        ("register_fields, string columns (Rust encoding)", register, strings),
        ("pandas alone, string columns (pd.Categorical codes)", pandas_only, strings),
        ("register_fields, pandas Categorical columns", register, categorical),
        ("pandas alone, pandas Categorical columns", pandas_only, categorical),
    ]
    for name, fn, adata in rows:
        print(f"| {name} | {_best(fn, adata) * 1e3:.1f} |")
    for label, adata in (("string", strings), ("Categorical", categorical)):
        first = register(adata)
        same = time_validate(adata, first, other_setup=False)
        other = time_validate(adata, first, other_setup=True)
        print(f"| validate() after a same-setup manager, {label} columns | {same * 1e3:.1f} |")
        print(f"| validate() after an other-setup manager, {label} columns | {other * 1e3:.1f} |")


if __name__ == "__main__":
    main()
