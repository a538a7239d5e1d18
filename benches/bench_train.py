"""End-to-end SCVI training throughput: scvi-rs beside scvi-tools in one process.

Synthetic negative-binomial counts in canonical CSR (float32 data, int32 indices, sorted
unique columns per row, ``density * n_genes`` non-zeros per cell, gene means drawn
log-normally, 2 batches), trained with SCVI's defaults (``n_hidden=128``, ``n_latent=10``,
ZINB, ``batch_key="batch"``) for a number of epochs with validation after each epoch.

For each library it prints cells/s (training cells x epochs / wall time of ``train``),
the mean GPU utilisation while training (sampled with ``nvidia-smi`` when there is one),
the peak host RSS and peak device memory during ``train``, and the last validation ELBO.
When ``scvi`` (scvi-tools) is importable it runs the same work after scvi-rs and prints
the ratios.

``--variants`` runs scvi-rs in further ways beside its plain (``eager``) step; a variant is
one or more of these joined by ``+`` (``graph+bf16``):

- ``graph``: the training step captured in a CUDA graph (``cuda_graph=True``);
- ``compile``: the module's forward under ``torch.compile(mode="reduce-overhead")``;
- ``tf32``: float32 matmuls on TF32 tensor cores (``allow_tf32``);
- ``bf16``: every linear layer under bfloat16 autocast, its output cast back to float32
  (the likelihood, the KL terms and the loss stay float32).

scvi-tools always runs its plain step.

Cases (``--case``): ``1m_2000g`` (1,000,000 x 2,000 at 10%), ``200k_30000g``
(200,000 x 30,000 at 3%), and the small ``20k_2000g`` (20,000 x 2,000 at 10%) that the
pytest-benchmark entry uses; ``--scale`` shrinks the cell count of any case.

    python benches/bench_train.py --device cuda --case 1m_2000g --batch-size 128 1024
    python benches/bench_train.py --device cpu --case 20k_2000g --epochs 1
    python benches/bench_train.py --case 1m_2000g --scale 0.1 --libraries scvi_rs \
        --variants eager graph compile tf32 bf16 graph+bf16 --device-backed
    pytest benches/bench_train.py --benchmark-enable
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import importlib.util
import os
import platform
import subprocess
import sys
import threading
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse

CASES = {
    "1m_2000g": (1_000_000, 2_000, 0.10),
    "200k_30000g": (200_000, 30_000, 0.03),
    "20k_2000g": (20_000, 2_000, 0.10),
}
HAVE_SCVI_TOOLS = importlib.util.find_spec("scvi") is not None
VARIANT_PARTS = ("eager", "graph", "compile", "tf32", "bf16")


def parse_variant(variant: str) -> frozenset[str]:
    """The parts of a variant name such as ``"graph+bf16"`` (``"eager"`` alone: none)."""
    parts = frozenset(part for part in variant.split("+") if part)
    unknown = sorted(parts - set(VARIANT_PARTS))
    if unknown or not parts:
        raise ValueError(
            f"Unknown variant part(s) {unknown} in {variant!r}; use {'+'.join(VARIANT_PARTS)}."
        )
    if "eager" in parts and len(parts) > 1:
        raise ValueError(f"'eager' is the plain step; it does not combine ({variant!r}).")
    return parts - {"eager"}


def _float32_out_linear(dtype: torch.dtype, device_type: str):
    def forward(self: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        # no autocast weight cache: it would be stale inside a replayed CUDA graph
        with torch.autocast(device_type, dtype=dtype, cache_enabled=False):
            y = torch.nn.functional.linear(x, self.weight, self.bias)
        return y.float()

    return forward


def autocast_linear_layers(module: torch.nn.Module, dtype: torch.dtype, device: str) -> int:
    """Run each ``nn.Linear`` of ``module`` under ``dtype`` autocast with float32 outputs.

    Returns
    -------
    int
        The number of linear layers changed.
    """
    forward = _float32_out_linear(dtype, "cuda" if device.startswith("cuda") else "cpu")
    layers = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
    for layer in layers:
        layer.forward = types.MethodType(forward, layer)
    return len(layers)


@contextlib.contextmanager
def tf32_matmuls(enabled: bool) -> Iterator[None]:
    """Allow TF32 matmuls (and cuDNN) inside the block when ``enabled``."""
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    if enabled:
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def synthetic_counts(
    n_cells: int, n_genes: int, density: float, seed: int = 0, chunk: int = 8192
) -> sparse.csr_matrix:
    """Negative-binomial counts (each stored entry >= 1) in canonical CSR.

    Parameters
    ----------
    n_cells, n_genes
        Shape.
    density
        Fraction of stored entries per row.
    seed
        Seed of the generator.
    chunk
        Rows generated at a time (bounds the temporary memory).

    Returns
    -------
    scipy.sparse.csr_matrix
        float32 data, int32 indices, int64 indptr.
    """
    rng = np.random.default_rng(seed)
    per_row = max(1, round(n_genes * density))
    gene_mean = rng.lognormal(mean=0.5, sigma=1.0, size=n_genes).astype(np.float32)
    theta = 2.0
    indices = np.empty(n_cells * per_row, dtype=np.int32)
    data = np.empty(n_cells * per_row, dtype=np.float32)
    for start in range(0, n_cells, chunk):
        stop = min(start + chunk, n_cells)
        keys = rng.random((stop - start, n_genes), dtype=np.float32)
        cols = np.sort(np.argpartition(keys, per_row - 1, axis=1)[:, :per_row], axis=1)
        mu = gene_mean[cols]
        counts = rng.negative_binomial(theta, theta / (theta + mu)) + 1
        indices[start * per_row : stop * per_row] = cols.ravel()
        data[start * per_row : stop * per_row] = counts.ravel()
    indptr = np.arange(n_cells + 1, dtype=np.int64) * per_row
    return sparse.csr_matrix((data, indices, indptr), shape=(n_cells, n_genes))


@cache
def make_matrix(case: str, scale: float = 1.0) -> sparse.csr_matrix:
    """The counts of ``case`` with the cell count multiplied by ``scale``."""
    n_cells, n_genes, density = CASES[case]
    return synthetic_counts(max(int(n_cells * scale), 256), n_genes, density)


def make_adata(X: sparse.csr_matrix) -> AnnData:
    """A fresh AnnData over the shared matrix ``X`` with a two-category batch column."""
    batch = np.where(np.arange(X.shape[0]) % 2 == 0, "batch_0", "batch_1")
    obs = pd.DataFrame(
        {"batch": pd.Categorical(batch)}, index=pd.RangeIndex(X.shape[0]).astype(str)
    )
    var = pd.DataFrame(index=[f"gene_{i}" for i in range(X.shape[1])])
    return AnnData(X=X, obs=obs, var=var)


@dataclass
class Usage:
    """Peaks and means sampled while a block runs."""

    peak_rss_bytes: int = 0
    gpu_util: list[float] = field(default_factory=list)

    @property
    def mean_gpu_util(self) -> float | None:
        return float(np.mean(self.gpu_util)) if self.gpu_util else None


def _rss_bytes() -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _gpu_util() -> float | None:
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    values = [float(v) for v in out.split() if v.strip()]
    return values[torch.cuda.current_device()] if values else None


@contextlib.contextmanager
def sample_usage(device: str, period_s: float = 0.05) -> Iterator[Usage]:
    """Sample host RSS (and GPU utilisation on CUDA) on a thread while the block runs."""
    usage = Usage(peak_rss_bytes=_rss_bytes())
    stop = threading.Event()
    want_gpu = device.startswith("cuda")

    def run() -> None:
        next_gpu = 0.0
        while not stop.is_set():
            usage.peak_rss_bytes = max(usage.peak_rss_bytes, _rss_bytes())
            now = time.perf_counter()
            if want_gpu and now >= next_gpu:
                value = _gpu_util()
                if value is not None:
                    usage.gpu_util.append(value)
                next_gpu = now + 0.2
            stop.wait(period_s)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield usage
    finally:
        stop.set()
        thread.join()
        usage.peak_rss_bytes = max(usage.peak_rss_bytes, _rss_bytes())


@dataclass
class Result:
    """One library's run."""

    library: str
    n_train: int
    epochs: int
    seconds: float
    elbo_validation: float
    peak_rss_bytes: int
    peak_device_bytes: int | None
    mean_gpu_util: float | None
    notes: str = ""

    @property
    def cells_per_s(self) -> float:
        return self.n_train * self.epochs / self.seconds


def train_once(
    library: str,
    X: sparse.csr_matrix,
    device: str,
    batch_size: int,
    epochs: int,
    seed: int = 0,
    device_backed: bool = False,
    variant: str = "eager",
) -> Result:
    """Set up and train SCVI with ``library`` ("scvi_rs" or "scvi"), timing ``train``.

    Parameters
    ----------
    library
        Import name of the library.
    X
        Counts (shared between libraries; neither modifies it).
    device
        ``"cpu"`` or ``"cuda"``.
    batch_size
        Minibatch size.
    epochs
        Number of epochs; validation runs after each.
    seed
        ``settings.seed`` of the library.
    device_backed
        Train from a ``DeviceBackedDataSplitter`` (the data on the training device; its
        one-off upload is timed as part of ``train``).
    variant
        How scvi-rs runs its step (see :func:`parse_variant`); ``"eager"`` for scvi-tools.

    Returns
    -------
    Result
        Throughput, memory and the last validation ELBO.
    """
    parts = parse_variant(variant)
    if parts and library != "scvi_rs":
        raise ValueError(f"variant {variant!r} is for scvi_rs only, not {library}.")
    lib = __import__(library)
    lib.settings.seed = seed
    lib.settings.verbosity = 30
    adata = make_adata(X)
    lib.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = lib.model.SCVI(adata)
    accelerator = "gpu" if device.startswith("cuda") else "cpu"
    extra: dict = {}
    notes = []
    if "graph" in parts:
        extra["cuda_graph"] = True
    if "compile" in parts:
        extra["plan_kwargs"] = {"compile": True, "compile_kwargs": {"mode": "reduce-overhead"}}
    if "bf16" in parts:
        n_layers = autocast_linear_layers(model.module, torch.bfloat16, device)
        notes.append(f"{n_layers} linear layers bf16")
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    with tf32_matmuls("tf32" in parts), sample_usage(device) as usage:
        t0 = time.perf_counter()
        if device_backed:
            extra["datamodule"] = lib.dataloaders.DeviceBackedDataSplitter(
                model.adata_manager,
                accelerator=accelerator,
                device=1 if accelerator == "gpu" else "auto",
                batch_size=batch_size,
                shuffle=True,
            )
        model.train(
            max_epochs=epochs,
            batch_size=batch_size,
            accelerator=accelerator,
            devices=1,
            check_val_every_n_epoch=1,
            enable_progress_bar=False,
            **extra,
        )
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
    peak_device = torch.cuda.max_memory_allocated() if device.startswith("cuda") else None
    elbo = float(model.history["elbo_validation"].iloc[-1, 0])
    stats = getattr(model.trainer, "cuda_graph_stats", None)
    if "graph" in parts:
        notes.append(
            "graph: "
            + (", ".join(f"{k} {v}" for k, v in stats.items()) if stats else "not used (eager)")
        )
    name = library if not parts else f"{library} {variant}"
    result = Result(
        library=name + (" (device-backed)" if device_backed else ""),
        n_train=len(model.train_indices),
        epochs=epochs,
        seconds=seconds,
        elbo_validation=elbo,
        peak_rss_bytes=usage.peak_rss_bytes,
        peak_device_bytes=peak_device,
        mean_gpu_util=usage.mean_gpu_util,
        notes="; ".join(notes),
    )
    del model, adata
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return result


def machine() -> str:
    """CPU model, cores, GPU and library versions, for the record."""
    cpu = platform.processor()
    with contextlib.suppress(OSError, subprocess.CalledProcessError):
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        cpu = next(
            (line.split(":", 1)[1].strip() for line in out.splitlines() if "Model name" in line),
            cpu,
        )
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "no GPU"
    return (
        f"{cpu}, {os.cpu_count()} cores, {gpu}; python {sys.version.split()[0]}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )


def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / 2**20:,.0f}"


def main(argv: list[str] | None = None) -> None:
    """Parse arguments, run each (case, batch size) for each library, print a table."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--case", nargs="+", default=["1m_2000g", "200k_30000g"], choices=CASES)
    parser.add_argument("--batch-size", nargs="+", type=int, default=[128, 1024])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="multiply the cell counts")
    parser.add_argument(
        "--libraries", nargs="+", default=["scvi_rs", "scvi"], help="import names to run"
    )
    parser.add_argument(
        "--device-backed",
        action="store_true",
        help="also run scvi-rs with DeviceBackedDataSplitter (the matrix on the device)",
    )
    parser.add_argument(
        "--variants",
        nargs="+",
        default=["eager"],
        help="ways scvi-rs runs its step: eager, or parts of graph, compile, tf32, bf16 "
        "joined by '+'",
    )
    args = parser.parse_args(argv)
    for variant in args.variants:
        parse_variant(variant)
    libraries = []
    for lib in args.libraries:
        try:
            __import__(lib)
        except Exception as err:  # a comparison library that cannot load is left out
            print(f"<!-- {lib} left out: {type(err).__name__}: {err} -->")
            continue
        libraries.append(lib)
    print(machine())
    print(
        "| case | cells | batch | library | epochs | s | cells/s | val ELBO | peak RSS MiB | "
        "peak device MiB | GPU util % | notes |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    ratios = []
    for case in args.case:
        t0 = time.perf_counter()
        X = make_matrix(case, args.scale)
        print(
            f"<!-- {case}: {X.shape[0]:,} x {X.shape[1]:,}, nnz {X.nnz:,}, "
            f"made in {time.perf_counter() - t0:.1f} s -->",
            flush=True,
        )
        for batch_size in args.batch_size:
            results = {}
            runs = []
            for lib in libraries:
                variants = args.variants if lib == "scvi_rs" else ["eager"]
                runs += [(lib, False, variant) for variant in variants]
                if lib == "scvi_rs" and args.device_backed:
                    runs += [(lib, True, variant) for variant in variants]
            for lib, device_backed, variant in runs:
                r = train_once(
                    lib, X, args.device, batch_size, args.epochs, 0, device_backed, variant
                )
                results[r.library] = r
                util = "-" if r.mean_gpu_util is None else f"{r.mean_gpu_util:.0f}"
                print(
                    f"| {case} | {X.shape[0]:,} | {batch_size} | {r.library} | {r.epochs} | "
                    f"{r.seconds:.2f} | {r.cells_per_s:,.0f} | {r.elbo_validation:.2f} | "
                    f"{_mib(r.peak_rss_bytes)} | {_mib(r.peak_device_bytes)} | {util} | "
                    f"{r.notes} |",
                    flush=True,
                )
            ref = results.get("scvi")
            for name, ours in results.items() if ref is not None else ():
                if name.startswith("scvi_rs"):
                    ratios.append(
                        (
                            case,
                            batch_size,
                            name,
                            ours.cells_per_s / ref.cells_per_s,
                            (ours.elbo_validation - ref.elbo_validation)
                            / abs(ref.elbo_validation),
                        )
                    )
        make_matrix.cache_clear()
        del X
        gc.collect()
    if ratios:
        print()
        print("| case | batch | scvi-rs run | / scvi-tools cells/s | ELBO relative difference |")
        print("|---|---|---|---|---|")
        for case, batch_size, name, speed, elbo_diff in ratios:
            print(f"| {case} | {batch_size} | {name} | {speed:.2f}x | {elbo_diff:+.2%} |")


@pytest.mark.parametrize("library", ["scvi_rs", "scvi"])
def test_train_one_epoch_cpu(benchmark, library: str) -> None:
    """One epoch on 20,000 x 2,000 (10%) at batch 128 on the CPU, each library."""
    if library == "scvi" and not HAVE_SCVI_TOOLS:
        pytest.skip("scvi-tools is not installed")
    X = make_matrix("20k_2000g")
    benchmark.group = "train 20k x 2000, batch 128, cpu"
    result = benchmark.pedantic(
        train_once, args=(library, X, "cpu", 128, 1), rounds=2, warmup_rounds=0
    )
    assert np.isfinite(result.elbo_validation)


if __name__ == "__main__":
    main()
