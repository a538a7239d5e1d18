"""Training from files larger than memory: block-shuffled loading of backed h5ad X.

Two synthetic h5ad files (``_backed_files.py``: CSR X, 2,000 genes at 10%, written chunk
by chunk and cached in ``~/.cache/scvi-rs-bench/``): 1,000,000 cells (1.7 GB) and
20,000,000 cells (32 GB, larger than this machine's RAM). For each, in one run:

- ``sequential``: the read limit, the file's ``indices`` and ``data`` read start to end
  in 64 MiB slices (h5py ``read_direct``), as cells/s;
- ``blocks``: ``BlockLoader`` (the default training loader of backed data) at batch 1,024,
  shuffled, loader only, over ``--cells`` cells;
- ``random``: ``AnnDataLoader`` with random backed reads (each minibatch's sorted rows read
  in coalesced slices), ``--random-batches`` minibatches;
- ``scvi-tools``: scvi-tools' backed ``AnnDataLoader`` (run in ``~/.venvs/scvi-rs-compat``
  when it exists, else skipped), ``--random-batches`` minibatches;
- ``train RSS``: peak resident memory of ``--train-steps`` SCVI training steps (batch 1,024,
  CPU) in a fresh process, above its baseline after opening the file.

The file's pages are dropped from the page cache (``posix_fadvise(DONTNEED)``) before each
loader measurement, so reads come from disk. Then the quality check: SCVI on an in-memory
dataset whose cells are sorted by cluster, trained with block shuffling and with full
shuffling (same seed, split and epochs), compared by validation ELBO.

Run: ``~/.venvs/scvi-rs/bin/python benches/bench_backed.py`` (``--only-quality``,
``--skip-quality``, ``--files 1000000`` to narrow it down).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from _backed_files import bench_file

BATCH = 1024
COMPAT_PYTHON = Path.home() / ".venvs" / "scvi-rs-compat" / "bin" / "python"
SLICE_BYTES = 64 << 20


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def _drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def sequential_limit(path: Path) -> float:
    """Cells/s of reading ``X/indices`` and ``X/data`` start to end (plus ``indptr``)."""
    import h5py

    _drop_cache(path)
    start = time.perf_counter()
    with h5py.File(path, "r") as f:
        n_cells = f["X"].attrs["shape"][0]
        f["X/indptr"][...]
        for name in ("indices", "data"):
            ds = f["X"][name]
            step = SLICE_BYTES // ds.dtype.itemsize
            buf = np.empty(step, dtype=ds.dtype)
            for lo in range(0, ds.shape[0], step):
                hi = min(ds.shape[0], lo + step)
                ds.read_direct(buf[: hi - lo], source_sel=np.s_[lo:hi])
    return n_cells / (time.perf_counter() - start)


def _backed_manager(path: Path):
    import anndata

    import scvi_rs as scvi

    adata = anndata.read_h5ad(path, backed="r")
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    return adata, scvi.model.SCVI._get_most_recent_anndata_manager(adata)


def block_rate(path: Path, n_cells: int) -> tuple[float, int, int]:
    """Cells/s of the shuffled block loader over the first ``n_cells`` cells of an epoch."""
    from scvi_rs.dataloaders._block_loader import BlockLoader

    adata, manager = _backed_manager(path)
    loader = BlockLoader(manager, batch_size=BATCH, shuffle=True, seed=0)
    _drop_cache(path)
    start, seen = time.perf_counter(), 0
    iterator = iter(loader)
    for batch in iterator:
        seen += batch["X"].shape[0]
        if seen >= n_cells:
            break
    rate = seen / (time.perf_counter() - start)
    iterator.close()
    adata.file.close()
    return rate, loader.block_size, loader.shuffle_window


def random_rate(path: Path, n_batches: int) -> float:
    """Cells/s of ``AnnDataLoader`` with random backed reads (minibatch by minibatch)."""
    from scvi_rs.dataloaders import AnnDataLoader

    adata, manager = _backed_manager(path)
    loader = AnnDataLoader(manager, batch_size=BATCH, shuffle=True)
    _drop_cache(path)
    start, seen = time.perf_counter(), 0
    for i, batch in enumerate(loader):
        seen += batch["X"].shape[0]
        if i + 1 == n_batches:
            break
    rate = seen / (time.perf_counter() - start)
    adata.file.close()
    return rate


SCVI_TOOLS_LOADER = """
import sys, time, anndata, scvi
from scvi.dataloaders import AnnDataLoader
path, n_batches, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
adata = anndata.read_h5ad(path, backed="r")
scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
manager = scvi.model.SCVI._get_most_recent_anndata_manager(adata)
loader = AnnDataLoader(manager, batch_size=batch, shuffle=True)
start, seen = time.perf_counter(), 0
for i, b in enumerate(loader):
    seen += b["X"].shape[0]
    if i + 1 == n_batches:
        break
print(seen / (time.perf_counter() - start))
"""


def scvi_tools_rate(path: Path, n_batches: int) -> float | None:
    if not COMPAT_PYTHON.exists():
        return None
    _drop_cache(path)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    done = subprocess.run(
        [str(COMPAT_PYTHON), "-c", SCVI_TOOLS_LOADER, str(path), str(n_batches), str(BATCH)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        print(f"  scvi-tools loader failed: {done.stderr.strip().splitlines()[-1:]}")
        return None
    return float(done.stdout.strip().splitlines()[-1])


TRAIN_RSS = """
import ctypes, json, sys, time, anndata
def rss(field):
    for line in open("/proc/self/status"):
        if line.startswith(field):
            return int(line.split()[1]) * 1024
import torch
import scvi_rs as scvi
_ = scvi.model.SCVI  # imports the model stack before the baseline
path, steps, batch = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
adata = anndata.read_h5ad(path, backed="r")
# hand the heap anndata freed while opening back to the OS: otherwise the training's
# allocations reuse it unseen and a bigger file's obs (a bigger transient) looks cheaper
ctypes.CDLL("libc.so.6").malloc_trim(0)
base = rss("VmRSS:")
# peak from here on: anndata's own transient while opening (its obs-name uniqueness check)
# lies before the baseline and is not ours
open("/proc/self/clear_refs", "w").write("5")
t0 = time.perf_counter()
scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
model = scvi.model.SCVI(adata)
setup_s = time.perf_counter() - t0
before_train = rss("VmRSS:")
t0 = time.perf_counter()
model.train(max_epochs=1, batch_size=batch, limit_train_batches=steps, accelerator="cpu",
            enable_progress_bar=False)
train_s = time.perf_counter() - t0
print(json.dumps({"base": base, "before_train": before_train, "peak": rss("VmHWM:"),
                  "setup_s": setup_s, "train_s": train_s}))
"""


def train_rss(path: Path, steps: int) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", TRAIN_RSS, str(path), str(steps), str(BATCH)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def bench_files(sizes: list[int], args: argparse.Namespace) -> list[dict]:
    rows = []
    for n_cells in sizes:
        path = bench_file(n_cells)
        gb = path.stat().st_size / 1e9
        print(f"{path.name}: {gb:.1f} GB, load {_load()}", flush=True)
        row = {"cells": n_cells, "gb": gb}
        if args.skip_random:
            row["random"] = row["scvi_tools"] = None
        row["sequential"] = sequential_limit(path)
        print(f"  sequential read limit: {row['sequential']:,.0f} cells/s, load {_load()}")
        row["blocks"], row["block_size"], row["window"] = block_rate(path, args.cells)
        print(
            f"  blocks ({row['block_size']} rows x {row['window']}): {row['blocks']:,.0f} "
            f"cells/s, load {_load()}"
        )
        if not args.skip_random:
            row["random"] = random_rate(path, args.random_batches)
            print(f"  random backed reads: {row['random']:,.0f} cells/s, load {_load()}")
            row["scvi_tools"] = scvi_tools_rate(path, args.random_batches)
        if args.skip_random:
            pass
        elif row["scvi_tools"] is None:
            print("  scvi-tools backed loader: skipped (no ~/.venvs/scvi-rs-compat)")
        else:
            print(f"  scvi-tools backed loader: {row['scvi_tools']:,.0f} cells/s, load {_load()}")
        rss = train_rss(path, args.train_steps)
        row["rss_base"], row["rss_peak"] = rss["base"], rss["peak"]
        row["rss_delta"] = rss["peak"] - rss["base"]
        print(
            f"  train {args.train_steps} steps: RSS {rss['base'] / 2**30:.2f} GiB after opening, "
            f"{rss['before_train'] / 2**30:.2f} GiB after setup, "
            f"peak {rss['peak'] / 2**30:.2f} GiB (+{row['rss_delta'] / 2**30:.2f}); setup "
            f"{rss['setup_s']:.1f} s, train {rss['train_s']:.1f} s, load {_load()}",
            flush=True,
        )
        rows.append(row)
    return rows


# -- quality -----------------------------------------------------------------------------------
def sorted_clusters(n_cells: int, n_genes: int, n_clusters: int, seed: int = 0):
    """Poisson counts of ``n_clusters`` expression programs, cells sorted by cluster."""
    import anndata
    from scipy import sparse

    rng = np.random.default_rng(seed)
    programs = rng.gamma(0.3, 2.0, (n_clusters, n_genes)).astype(np.float32)
    cluster = np.sort(rng.integers(0, n_clusters, n_cells))
    depth = rng.lognormal(0.0, 0.3, (n_cells, 1)).astype(np.float32)
    counts = rng.poisson(programs[cluster] * depth).astype(np.float32)
    adata = anndata.AnnData(sparse.csr_matrix(counts))
    adata.obs["batch"] = np.where(cluster % 2 == 0, "a", "b")
    return adata


def quality(args: argparse.Namespace) -> dict:
    import scvi_rs as scvi

    adata = sorted_clusters(args.quality_cells, 1000, 20)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    result = {}
    small = {"load_mode": "blocks", "block_size": args.quality_block, "shuffle_window": 8}
    modes = {
        "random": {},
        "blocks (default sizes)": {"load_mode": "blocks"},
        f"blocks ({args.quality_block} rows x 8)": small,
    }
    for name, kwargs in modes.items():
        scvi.settings.seed = 0
        model = scvi.model.SCVI(adata)
        start = time.perf_counter()
        model.train(
            max_epochs=args.quality_epochs,
            check_val_every_n_epoch=1,
            accelerator="cpu",
            enable_progress_bar=False,
            datasplitter_kwargs=kwargs,
        )
        elbo = float(model.history["elbo_validation"].iloc[-1, 0])
        loader = model.trainer.train_dataloader
        if hasattr(loader, "block_size"):
            name = f"{name}: {loader.block_size} x {loader.shuffle_window}"
        result[name] = elbo
        print(f"  {name}: validation ELBO {elbo:.3f} ({time.perf_counter() - start:.0f} s)")
    for name in list(result)[1:]:
        gap = result[name] / result["random"] - 1
        print(f"  {name} vs full shuffle: {100 * gap:+.2f}%", flush=True)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, nargs="*", default=[1_000_000, 20_000_000])
    parser.add_argument("--cells", type=int, default=2_000_000, help="cells per block run")
    parser.add_argument("--random-batches", type=int, default=30)
    parser.add_argument("--train-steps", type=int, default=250)
    parser.add_argument("--quality-cells", type=int, default=30_000)
    parser.add_argument("--quality-epochs", type=int, default=5)
    parser.add_argument("--quality-block", type=int, default=256)
    parser.add_argument("--only-quality", action="store_true")
    parser.add_argument("--skip-quality", action="store_true")
    parser.add_argument("--skip-random", action="store_true", help="no random-read loaders")
    args = parser.parse_args()
    disk = shutil.disk_usage(Path.home())
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB RAM, "
        f"{disk.free / 1e9:.0f} GB free, load {_load()}",
        flush=True,
    )
    if not args.only_quality:
        bench_files(args.files, args)
    if not args.skip_quality:
        print(f"quality: {args.quality_cells} cells sorted by cluster, 1,000 genes", flush=True)
        quality(args)


if __name__ == "__main__":
    main()
