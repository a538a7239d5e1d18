"""One-epoch loader benchmark: ``AnnDataLoader`` against what scvi-tools does, and the limit.

Matrices shaped like single-cell counts (float32 data, int32 indices, canonical CSR):
100,000 cells x 2,000 genes at 10% density and 20,000 cells x 30,000 genes at 3%, set up
like ``SCVI.setup_anndata(adata, batch_key=..., labels_key=...)`` (X, batch, labels).
Shuffled epochs (the training loader), batches of 128 and 1,024.

- ``ours``: ``scvi_rs.dataloaders.AnnDataLoader(manager, batch_size, shuffle=True)``;
- ``baseline``: what scvi-tools' loader does per minibatch: a torch ``DataLoader`` with
  ``batch_size=None`` over ``BatchSampler(RandomSampler(Subset))``, the dataset slicing
  ``X[rows]`` with scipy, ``.astype(float32).toarray()``, obs columns ``[rows].astype``,
  then torch's conversion of numpy arrays to tensors;
- ``dense_limit``: the memory-bound floor for writing the same dense minibatches:
  ``np.take`` of random rows of a dense float32 matrix (256 MB, same width) into one
  preallocated buffer; no obs columns, no sampler, no tensors.
- overlap: 100 minibatches (at most an epoch), each followed by as much "work" as reading
  one minibatch inline takes, spent waiting (``time.sleep``, which releases the GIL as
  waiting on a GPU does): reads inline then work (serial) vs the prefetching loader.

Run as a script for the table (``python benches/bench_loader.py``), or through
pytest-benchmark (``pytest benches/bench_loader.py --benchmark-enable``).
"""

from __future__ import annotations

import gc
import platform
import subprocess
import sys
import time
import warnings
from functools import cache

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Subset

from scvi_rs import _core
from scvi_rs.data import AnnDataManager
from scvi_rs.data.fields import CategoricalObsField, LayerField
from scvi_rs.dataloaders import AnnDataLoader

CASES = {"2000g_10pct": (100_000, 2_000, 0.10), "30000g_3pct": (20_000, 30_000, 0.03)}
BATCHES = (128, 1024)
DENSE_BYTES = 256 << 20
OVERLAP_BATCHES = 100


@cache
def make_matrix(case: str) -> sparse.csr_matrix:
    """Canonical CSR with ``density * n_genes`` non-zeros per row (sorted unique columns)."""
    n_cells, n_genes, density = CASES[case]
    rng = np.random.default_rng(0)
    per_row = int(n_genes * density)
    indptr = np.arange(n_cells + 1, dtype=np.int64) * per_row
    indices = np.sort(rng.integers(0, n_genes, (n_cells, per_row), dtype=np.int32), axis=1)
    data = rng.poisson(1.5, n_cells * per_row).astype(np.float32) + 1
    X = sparse.csr_matrix((data, indices.ravel(), indptr), shape=(n_cells, n_genes))
    X.sum_duplicates()
    X.indptr = X.indptr.astype(np.int32)
    return X


@cache
def make_manager(case: str) -> AnnDataManager:
    X = make_matrix(case)
    rng = np.random.default_rng(1)
    adata = AnnData(X)
    adata.obs["batch"] = pd.Categorical(rng.choice(["a", "b", "c"], X.shape[0]))
    adata.obs["labels"] = pd.Categorical(rng.choice(["x", "y"], X.shape[0]))
    manager = AnnDataManager(
        fields=[
            LayerField("X", None, is_count_data=True),
            CategoricalObsField("batch", "batch"),
            CategoricalObsField("labels", "labels"),
        ],
        setup_method_args={"model_name": "SCVI", "setup_method_name": "setup_anndata"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager.register_fields(adata)
    return manager


@cache
def make_dense(case: str) -> np.ndarray:
    n_genes = CASES[case][1]
    rows = DENSE_BYTES // (4 * n_genes)
    X = make_matrix(case)
    return np.ascontiguousarray(X[: min(rows, X.shape[0])].toarray())


class ScviToolsLikeDataset(Dataset):
    """The per-minibatch work of scvi-tools' ``AnnTorchDataset.__getitem__`` (CSR X)."""

    def __init__(self, manager: AnnDataManager) -> None:
        self.data = {k: manager.get_from_registry(k) for k in ("X", "batch", "labels")}
        self.dtypes = {"X": np.float32, "batch": np.int64, "labels": np.int64}

    def __len__(self) -> int:
        return self.data["X"].shape[0]

    def __getitem__(self, rows):
        out = {}
        for key, dtype in self.dtypes.items():
            data = self.data[key]
            if sparse.issparse(data):
                out[key] = data[rows].astype(dtype, copy=False).toarray()
            else:
                out[key] = data[rows].astype(dtype, copy=False)
        return out


def loader_epoch(case: str, batch: int, impl: str) -> int:
    """Run one shuffled epoch; returns the number of cells loaded."""
    manager = make_manager(case)
    n = manager.adata.n_obs
    if impl == "ours":
        loader = AnnDataLoader(manager, batch_size=batch, shuffle=True)
    elif impl == "baseline":
        ds = Subset(ScviToolsLikeDataset(manager), np.arange(n))
        sampler = BatchSampler(RandomSampler(ds), batch_size=batch, drop_last=False)
        loader = DataLoader(ds, batch_size=None, shuffle=False, sampler=sampler)
    elif impl == "dense_limit":
        D = make_dense(case)
        out = np.empty((batch, D.shape[1]), dtype=np.float32)
        order = np.random.default_rng(2).permutation(n) % D.shape[0]
        for start in range(0, n, batch):
            rows = order[start : start + batch]
            np.take(D, rows, axis=0, out=out[: len(rows)], mode="clip")
        return n
    else:
        raise ValueError(impl)
    seen = 0
    for b in loader:
        seen += b["X"].shape[0]
    return seen


def overlap_epoch(case: str, batch: int, mode: str, work_s: float, n_batches: int) -> int:
    """``n_batches`` shuffled minibatches, each followed by ``work_s`` of GIL-free waiting.

    ``mode``: ``"prefetched"`` (the loader), ``"serial"`` (the same reads done inline on
    the consumer's thread), ``"load"`` (inline reads, no work) or ``"work"`` (work only).
    """
    manager = make_manager(case)
    loader = AnnDataLoader(manager, batch_size=batch, shuffle=True)
    seen = 0
    if mode == "prefetched":
        for i, b in enumerate(loader):
            if i == n_batches:
                break
            seen += b["X"].shape[0]
            time.sleep(work_s)
        return seen
    dataset = loader.dataset.dataset
    dataset._prepare()
    perm = np.random.default_rng(3).permutation(manager.adata.n_obs)
    from scvi_rs.dataloaders._prefetch import torch_allocator

    alloc = torch_allocator(False, loader._buffer_pool)
    for i in range(n_batches):
        if mode != "work":
            b = dataset._load(perm[i * batch : (i + 1) * batch], alloc)
            seen += b["X"].shape[0]
            del b
        if mode != "load":
            time.sleep(work_s)
    return seen


def _time(fn, *args, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        gc.collect()
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_model() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


@pytest.mark.skipif(_core.debug_build, reason="benchmarks need a release build")
@pytest.mark.parametrize("impl", ["ours", "baseline", "dense_limit"])
@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("case", list(CASES))
def test_epoch(benchmark, case: str, batch: int, impl: str) -> None:
    make_manager(case)
    if impl == "dense_limit":
        make_dense(case)
    benchmark.group = f"{case} batch={batch}"
    n = benchmark.pedantic(loader_epoch, args=(case, batch, impl), rounds=3, warmup_rounds=1)
    assert n == CASES[case][0]


def main() -> None:
    print(f"{cpu_model()}, {torch.get_num_threads()} torch threads")
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, torch {torch.__version__}, "
        f"{platform.machine()}"
    )
    print(
        "| matrix | batch | ours (s) | baseline (s) | dense limit (s) | ours cells/s | "
        "baseline / ours | ours / limit |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for case in CASES:
        make_manager(case)
        make_dense(case)
        n = CASES[case][0]
        for batch in BATCHES:
            t = {
                impl: _time(loader_epoch, case, batch, impl, repeats=3)
                for impl in ("ours", "baseline", "dense_limit")
            }
            print(
                f"| {case} | {batch} | {t['ours']:.3f} | {t['baseline']:.3f} | "
                f"{t['dense_limit']:.3f} | {n / t['ours']:,.0f} | "
                f"{t['baseline'] / t['ours']:.1f}x | {t['ours'] / t['dense_limit']:.2f}x |"
            )
        make_dense.cache_clear()
    print()
    print(
        f"| matrix | batch | {OVERLAP_BATCHES} reads inline (s) | work alone (s) | "
        "serial: read then work (s) | prefetched (s) |"
    )
    print("|---|---|---|---|---|---|")
    for case in CASES:
        for batch in BATCHES:
            n_batches = min(OVERLAP_BATCHES, CASES[case][0] // batch)
            load = _time(overlap_epoch, case, batch, "load", 0.0, n_batches, repeats=2)
            work_s = load / n_batches  # the consumer is as slow as the loader
            t = {
                mode: _time(overlap_epoch, case, batch, mode, work_s, n_batches, repeats=2)
                for mode in ("work", "serial", "prefetched")
            }
            print(
                f"| {case} | {batch} | {load:.3f} | {t['work']:.3f} | {t['serial']:.3f} | "
                f"{t['prefetched']:.3f} |"
            )


if __name__ == "__main__":
    main()
