"""Synthetic h5ad files for ``bench_backed.py``, written chunk by chunk (never held in memory).

Each cell has ``density * n_genes`` non-zeros at sorted unique columns (one column drawn in
each run of ``1 / density`` genes), counts 1-9 as float32, int32 indices, int64 indptr; the
X datasets are contiguous and uncompressed, as a file written for fast backed reads is.
obs holds a four-category ``batch`` column. Files are cached under
``~/.cache/scvi-rs-bench/`` and written once: a file is written under a ``.part`` name and
renamed when complete, so an interrupted run never leaves a half file behind.

Run ``python benches/_backed_files.py N_CELLS`` to write one in the background.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import h5py
import numpy as np

CACHE_DIR = Path(os.environ.get("SCVI_RS_BENCH_CACHE", Path.home() / ".cache" / "scvi-rs-bench"))
N_GENES = 2_000
DENSITY = 0.10
ROWS_PER_WRITE = 100_000


def bench_file(n_cells: int, n_genes: int = N_GENES, density: float = DENSITY) -> Path:
    """Path of the cached file for this shape, written first if it is not there yet."""
    path = CACHE_DIR / f"csr_{n_cells}x{n_genes}_{int(density * 100)}pct.h5ad"
    if not path.exists():
        write_bench_file(path, n_cells, n_genes, density)
    return path


def _write_string_index(group: h5py.Group, name: str, n: int, prefix: str) -> None:
    dtype = h5py.string_dtype("utf-8")
    dataset = group.create_dataset(name, shape=(n,), dtype=dtype)
    dataset.attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
    for start in range(0, n, 1_000_000):
        stop = min(n, start + 1_000_000)
        dataset[start:stop] = np.char.add(prefix, np.arange(start, stop).astype(str)).astype(
            object
        )


def _write_frame_header(group: h5py.Group, columns: list[str]) -> None:
    group.attrs.update(
        {
            "_index": "_index",
            "column-order": np.array(columns, dtype=h5py.string_dtype("utf-8")),
            "encoding-type": "dataframe",
            "encoding-version": "0.2.0",
        }
    )


def _write_obs(root: h5py.File, n_cells: int, rng: np.random.Generator) -> None:
    obs = root.create_group("obs")
    _write_frame_header(obs, ["batch"])
    _write_string_index(obs, "_index", n_cells, "cell")
    batch = obs.create_group("batch")
    batch.attrs.update(
        {"encoding-type": "categorical", "encoding-version": "0.2.0", "ordered": False}
    )
    batch.create_dataset(
        "categories",
        data=np.array(["b0", "b1", "b2", "b3"], dtype=object),
        dtype=h5py.string_dtype("utf-8"),
    ).attrs.update({"encoding-type": "string-array", "encoding-version": "0.2.0"})
    batch.create_dataset("codes", data=rng.integers(0, 4, n_cells, dtype=np.int8)).attrs.update(
        {"encoding-type": "array", "encoding-version": "0.2.0"}
    )


def _write_var(root: h5py.File, n_genes: int) -> None:
    var = root.create_group("var")
    _write_frame_header(var, [])
    _write_string_index(var, "_index", n_genes, "gene")


def _write_empty_mappings(root: h5py.File) -> None:
    for name in ("obsm", "varm", "obsp", "varp", "layers", "uns"):
        root.create_group(name).attrs.update(
            {"encoding-type": "dict", "encoding-version": "0.1.0"}
        )


def _write_x(root: h5py.File, n_cells: int, n_genes: int, density: float, rng) -> None:
    stride = round(1 / density)
    per_row = n_genes // stride
    nnz = n_cells * per_row
    x = root.create_group("X")
    x.attrs.update(
        {"encoding-type": "csr_matrix", "encoding-version": "0.1.0", "shape": (n_cells, n_genes)}
    )
    data = x.create_dataset("data", shape=(nnz,), dtype=np.float32)
    indices = x.create_dataset("indices", shape=(nnz,), dtype=np.int32)
    x.create_dataset("indptr", data=np.arange(n_cells + 1, dtype=np.int64) * per_row)
    base = (np.arange(per_row, dtype=np.int32) * stride)[None, :]
    for start in range(0, n_cells, ROWS_PER_WRITE):
        rows = min(ROWS_PER_WRITE, n_cells - start)
        lo, hi = start * per_row, (start + rows) * per_row
        jitter = rng.integers(0, stride, (rows, per_row), dtype=np.int32)
        indices[lo:hi] = (base + jitter).ravel()
        data[lo:hi] = rng.integers(1, 10, rows * per_row, dtype=np.int8).astype(np.float32)


def write_bench_file(path: Path, n_cells: int, n_genes: int, density: float) -> None:
    """Write the file chunk by chunk under ``path.part``, then rename it to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    part = path.with_suffix(".part")
    rng = np.random.default_rng(n_cells)
    with h5py.File(part, "w") as root:
        root.attrs.update({"encoding-type": "anndata", "encoding-version": "0.1.0"})
        _write_obs(root, n_cells, rng)
        _write_var(root, n_genes)
        _write_empty_mappings(root)
        _write_x(root, n_cells, n_genes, density, rng)
    part.rename(path)


if __name__ == "__main__":
    for arg in sys.argv[1:]:
        print(bench_file(int(arg)), flush=True)
