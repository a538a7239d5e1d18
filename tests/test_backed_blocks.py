"""Block-shuffled loading of disk-backed X: epoch plans, reads, training, bad files."""

from __future__ import annotations

import hashlib
import math
import os
import threading
import time
import warnings

import anndata
import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import zarr

import scvi_rs as scvi
from scvi_rs import REGISTRY_KEYS
from scvi_rs.data import AnnDataManager
from scvi_rs.data.fields import CategoricalObsField, LayerField
from scvi_rs.dataloaders import DataSplitter
from scvi_rs.dataloaders._block_loader import BlockLoader, BlockSampler

N_CELLS, N_GENES = 600, 20


def _counts(n_cells: int = N_CELLS, fmt: str = "csr") -> anndata.AnnData:
    """Counts whose first column is the row number, so every yielded row names its cell."""
    rng = np.random.default_rng(0)
    dense = rng.poisson(0.3, (n_cells, N_GENES)).astype(np.float32)
    dense[:, 0] = np.arange(n_cells)
    X = {"csr": sp.csr_matrix, "csc": sp.csc_matrix, "dense": np.asarray}[fmt](dense)
    adata = anndata.AnnData(X)
    adata.obs["batch"] = np.where(np.arange(n_cells) % 3 == 0, "a", "b")
    return adata


def _write(tmp_path, fmt: str = "csr", name: str = "counts.h5ad") -> str:
    path = str(tmp_path / name)
    _counts(fmt=fmt).write_h5ad(path)
    return path


def _manager(adata) -> AnnDataManager:
    manager = AnnDataManager(
        fields=[
            LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, "batch"),
        ]
    )
    manager.register_fields(adata)
    return manager


def _digest(path: str) -> str:
    digest = hashlib.sha256()
    if os.path.isdir(path):
        for root, _, files in sorted(os.walk(path)):
            for name in sorted(files):
                digest.update(name.encode())
                with open(os.path.join(root, name), "rb") as f:
                    digest.update(f.read())
    else:
        with open(path, "rb") as f:
            digest.update(f.read())
    return digest.hexdigest()


def _epoch_cells(loader) -> np.ndarray:
    return np.concatenate([b[REGISTRY_KEYS.X_KEY][:, 0].numpy() for b in loader]).astype(int)


def _epoch_order(sampler: BlockSampler) -> np.ndarray:
    return np.concatenate([w.file_rows for w in sampler.windows()])


# -- the epoch plan ----------------------------------------------------------------------------
@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize(("block_size", "window"), [(1, 1), (7, 3), (50, 4), (1000, 2)])
def test_every_cell_once_per_epoch(shuffle, block_size, window):
    cells = np.random.default_rng(1).choice(500, 321, replace=False)
    sampler = BlockSampler(cells, block_size, window, shuffle, seed=3)
    for epoch in range(3):
        sampler.set_epoch(epoch)
        order = _epoch_order(sampler)
        assert len(order) == len(sampler) == len(cells)
        np.testing.assert_array_equal(np.sort(order), np.sort(cells))
    if not shuffle:
        np.testing.assert_array_equal(order, np.sort(cells))


@pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint32])
def test_repeated_cells_are_yielded_as_often_as_given(dtype):
    cells = np.concatenate([np.arange(0, 300, 3), np.arange(0, 60, 3)]).astype(dtype)
    for shuffle in (True, False):
        sampler = BlockSampler(cells, 16, 2, shuffle, seed=0)
        np.testing.assert_array_equal(np.sort(_epoch_order(sampler)), np.sort(cells))


def test_loader_keeps_the_callers_index_array_without_a_copy():
    adata = scvi.data.synthetic_iid(batch_size=50, n_batches=2)
    scvi.model.SCVI.setup_anndata(adata)
    manager = scvi.model.SCVI(adata).adata_manager
    indices = np.arange(10, 90, dtype=np.int32)
    loader = BlockLoader(manager, indices=indices, batch_size=16, shuffle=True)
    assert np.shares_memory(loader.indices, indices)
    seen = np.concatenate([b["X"].shape[0] * [0] for b in loader])
    assert len(seen) == len(indices)
    with pytest.raises(TypeError, match="integers or a boolean mask"):
        BlockLoader(manager, indices=indices.astype(float), batch_size=16)


def test_orders_are_seeded_per_epoch():
    cells = np.arange(1000)

    def order(seed, epoch):
        sampler = BlockSampler(cells, 16, 4, True, seed=seed)
        sampler.set_epoch(epoch)
        return _epoch_order(sampler)

    np.testing.assert_array_equal(order(0, 2), order(0, 2))
    assert not np.array_equal(order(0, 1), order(0, 2))
    assert not np.array_equal(order(0, 1), order(1, 1))


def test_cells_are_shuffled_within_windows_of_blocks():
    sampler = BlockSampler(np.arange(1000), 10, 5, True, seed=0)
    for window in sampler.windows():
        blocks = np.unique(window.file_rows // 10)
        assert len(blocks) <= 5  # one window spans at most shuffle_window blocks
        assert not np.all(np.diff(window.file_rows) > 0)


@pytest.mark.parametrize("n_replicas", [2, 3, 4])
def test_ddp_shards_cover_the_cells_with_equal_steps(n_replicas):
    cells = np.random.default_rng(2).choice(997, 613, replace=False)
    orders = []
    for rank in range(n_replicas):
        sampler = BlockSampler(cells, 25, 3, True, seed=5, num_replicas=n_replicas, rank=rank)
        sampler.set_epoch(4)
        orders.append(_epoch_order(sampler))
    assert {len(o) for o in orders} == {-(-len(cells) // n_replicas)}
    allcells = np.concatenate(orders)
    np.testing.assert_array_equal(np.unique(allcells), np.sort(cells))
    assert len(allcells) - len(cells) < n_replicas  # padding repeats at most one cell each


def test_bad_plan_arguments():
    with pytest.raises(ValueError, match="block_size"):
        BlockSampler(np.arange(5), 0, 1, True, seed=0)
    with pytest.raises(ValueError, match="rank 2"):
        BlockSampler(np.arange(5), 2, 1, True, seed=0, num_replicas=2, rank=2)


# -- loading -----------------------------------------------------------------------------------
def test_backed_blocks_yield_the_rows_of_the_file(tmp_path):
    path = _write(tmp_path)
    in_memory = _counts()
    backed = anndata.read_h5ad(path, backed="r")
    manager = _manager(backed)
    cells = np.random.default_rng(0).choice(N_CELLS, 400, replace=False)
    loader = BlockLoader(manager, indices=cells, batch_size=64, shuffle=True, block_size=30)
    seen = []
    for batch in loader:
        x = batch[REGISTRY_KEYS.X_KEY].numpy()
        rows = x[:, 0].astype(int)
        np.testing.assert_array_equal(x, in_memory.X[rows].toarray())
        codes = backed.obs["_scvi_batch"].to_numpy()[rows]
        np.testing.assert_array_equal(batch[REGISTRY_KEYS.BATCH_KEY].numpy().ravel(), codes)
        seen.append(rows)
    np.testing.assert_array_equal(np.sort(np.concatenate(seen)), np.sort(cells))
    assert len(seen) == len(loader) == 7
    backed.file.close()


def test_drop_last_and_sizes(tmp_path):
    backed = anndata.read_h5ad(_write(tmp_path), backed="r")
    loader = BlockLoader(_manager(backed), batch_size=128, shuffle=True, drop_last=True)
    sizes = [b[REGISTRY_KEYS.X_KEY].shape[0] for b in loader]
    assert sizes == [128] * (N_CELLS // 128) and len(loader) == len(sizes)
    backed.file.close()


def test_split_stays_per_cell_and_backed_defaults_to_blocks(tmp_path):
    backed = anndata.read_h5ad(_write(tmp_path), backed="r")
    splitter = DataSplitter(_manager(backed), batch_size=50, block_size=40)
    splitter.setup()
    train, val = splitter.train_dataloader(), splitter.val_dataloader()
    assert isinstance(train, BlockLoader) and isinstance(val, BlockLoader)
    np.testing.assert_array_equal(np.sort(_epoch_cells(train)), np.sort(splitter.train_idx))
    np.testing.assert_array_equal(_epoch_cells(val), np.sort(splitter.val_idx))
    backed.file.close()


def test_in_memory_selects_blocks_by_argument():
    adata = _counts()
    manager = _manager(adata)
    assert not isinstance(DataSplitter(manager)._loader(np.arange(5), True, False), BlockLoader)
    splitter = DataSplitter(manager, load_mode="blocks", block_size=64, shuffle_window=2)
    loader = splitter._loader(np.arange(N_CELLS), True, False)
    assert isinstance(loader, BlockLoader) and loader.block_size == 64
    np.testing.assert_array_equal(np.sort(_epoch_cells(loader)), np.arange(N_CELLS))
    with pytest.raises(ValueError, match="load_mode must be one of"):
        DataSplitter(manager, load_mode="sequential")


def test_breaking_out_of_an_epoch_stops_the_threads(tmp_path):
    backed = anndata.read_h5ad(_write(tmp_path), backed="r")
    loader = BlockLoader(_manager(backed), batch_size=8, block_size=10, shuffle=True)
    before = threading.active_count()
    for _ in range(3):
        iterator = iter(loader)
        next(iterator)
        iterator.close()
    deadline = time.monotonic() + 5
    while threading.active_count() > before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= before
    backed.file.close()


# -- training on files -------------------------------------------------------------------------
def _no_whole_x(monkeypatch):
    from anndata.abc import CSRDataset

    def refuse(self, *args, **kwargs):
        raise AssertionError("the whole of X was read into memory")

    for cls in [*CSRDataset.__subclasses__(), CSRDataset]:
        if "to_memory" in cls.__dict__:
            monkeypatch.setattr(cls, "to_memory", refuse)


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_train_on_backed_h5ad_leaves_the_file_unchanged(tmp_path, monkeypatch, mode):
    path = _write(tmp_path)
    before = _digest(path)
    _no_whole_x(monkeypatch)
    backed = anndata.read_h5ad(path, backed=mode)
    scvi.model.SCVI.setup_anndata(backed, batch_key="batch")
    # registration keeps its columns and uuids in memory
    assert {"_scvi_batch", "_scvi_labels"} <= set(backed.obs.columns)
    assert "_scvi_uuid" in backed.uns and "_scvi_manager_uuid" in backed.uns
    model = scvi.model.SCVI(backed, n_latent=3, n_hidden=16)
    model.train(max_epochs=2, batch_size=64, check_val_every_n_epoch=1, enable_progress_bar=False)
    assert np.isfinite(model.history["elbo_validation"].to_numpy()).all()
    assert not sp.issparse(backed.X)
    backed.file.close()
    assert _digest(path) == before
    with h5py.File(path, "r") as f:
        assert "_scvi_batch" not in f["obs"] and "_scvi_uuid" not in f["uns"]


def test_train_on_a_lazily_opened_zarr_store(tmp_path, monkeypatch):
    store = str(tmp_path / "counts.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _counts().write_zarr(store)
    before = _digest(store)
    _no_whole_x(monkeypatch)
    group = zarr.open_group(store, mode="r")
    adata = anndata.AnnData(
        X=anndata.io.sparse_dataset(group["X"]),
        obs=anndata.io.read_elem(group["obs"]),
        var=anndata.io.read_elem(group["var"]),
    )
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    assert isinstance(model.trainer.train_dataloader, BlockLoader)
    assert np.isfinite(model.get_latent_representation()).all()
    assert _digest(store) == before


def test_in_memory_training_with_blocks_runs():
    adata = _counts()
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata, n_latent=3, n_hidden=16)
    model.train(
        max_epochs=1,
        batch_size=64,
        enable_progress_bar=False,
        datasplitter_kwargs={"load_mode": "blocks", "block_size": 100, "shuffle_window": 2},
    )
    assert isinstance(model.trainer.train_dataloader, BlockLoader)


# -- bad files ---------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "what"), [("csc", "CSC"), ("dense", "dense")])
def test_non_csr_x_on_disk_trains_with_a_warning(tmp_path, fmt, what):
    path = _write(tmp_path, fmt=fmt)
    backed = anndata.read_h5ad(path, backed="r")
    scvi.model.SCVI.setup_anndata(backed, batch_key="batch")
    model = scvi.model.SCVI(backed, n_latent=3, n_hidden=16)
    with pytest.warns(UserWarning, match=rf"{path}.*{what}.*slower"):
        model.train(max_epochs=1, batch_size=64, enable_progress_bar=False)
    loader = BlockLoader(model.adata_manager, batch_size=50, block_size=40, shuffle=True)
    np.testing.assert_array_equal(np.sort(_epoch_cells(loader)), np.arange(N_CELLS))
    backed.file.close()


def _overwrite(path: str, dataset: str, value: int) -> None:
    """Overwrite bytes in the middle of the first stored chunk of ``dataset`` with garbage."""
    with h5py.File(path, "r") as f:
        ds = f[dataset]
        if ds.chunks is None:
            offset, nbytes = ds.id.get_offset(), ds.id.get_storage_size()
        else:
            info = ds.id.get_chunk_info(0)
            offset, nbytes = info.byte_offset, info.size
    with open(path, "r+b") as f:
        f.seek(offset + nbytes // 2)
        f.write(bytes([value]) * 64)


@pytest.mark.parametrize("dataset", ["X/indices", "X/indptr"])
def test_corrupt_x_is_an_error_naming_the_file(tmp_path, dataset):
    path = _write(tmp_path)
    _overwrite(path, dataset, 0x7F)
    backed = anndata.read_h5ad(path, backed="r")
    loader = BlockLoader(_manager_unchecked(backed), batch_size=64, block_size=600)
    with pytest.raises((ValueError, OSError), match=rf"X (of|from) {path}"):
        list(loader)
    backed.file.close()


def _manager_unchecked(adata) -> AnnDataManager:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the count check may read the corrupt rows
        return _manager(adata)


def test_truncated_file_fails_at_open(tmp_path):
    path = _write(tmp_path)
    os.truncate(path, os.path.getsize(path) // 2)
    with pytest.raises(OSError, match="truncated"):
        anndata.read_h5ad(path, backed="r")


@pytest.mark.parametrize("how", ["delete", "truncate"])
def test_file_gone_mid_epoch_is_an_error_naming_it(tmp_path, how):
    path = _write(tmp_path)
    backed = anndata.read_h5ad(path, backed="r")
    loader = BlockLoader(_manager(backed), batch_size=4, block_size=8, shuffle_window=1)
    loader.prefetch_batches = 1
    iterator = iter(loader)
    next(iterator)
    if how == "delete":
        os.remove(path)
    else:
        os.truncate(path, 0)
    expected = FileNotFoundError if how == "delete" else OSError
    with pytest.raises(expected, match=rf"{path} (disappeared|was truncated)"):
        for _ in iterator:
            pass
    backed.file.close()


def test_zarr_store_gone_mid_epoch_is_an_error_naming_it(tmp_path):
    import shutil

    store = str(tmp_path / "counts.zarr")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        _counts().write_zarr(store)
    group = zarr.open_group(store, mode="r")
    adata = anndata.AnnData(
        X=anndata.io.sparse_dataset(group["X"]),
        obs=anndata.io.read_elem(group["obs"]),
        var=anndata.io.read_elem(group["var"]),
    )
    loader = BlockLoader(_manager(adata), batch_size=4, block_size=8, shuffle_window=1)
    loader.prefetch_batches = 1
    iterator = iter(loader)
    next(iterator)
    shutil.rmtree(store)
    with pytest.raises(FileNotFoundError, match=r"counts\.zarr disappeared"):
        for _ in iterator:
            pass


# -- data-parallel training --------------------------------------------------------------------
DDP_SCRIPT = """
import json, os, sys
import anndata, numpy as np, torch
import scvi_rs
torch.set_num_threads(1)
path, out_dir = sys.argv[1], sys.argv[2]
rank = int(os.environ["RANK"])
scvi_rs.settings.seed = 0
adata = anndata.read_h5ad(path, backed="r")
scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
model = scvi_rs.model.SCVI(adata, n_hidden=16, n_latent=4)
model.train(max_epochs=2, batch_size=64, accelerator="cpu", strategy="ddp",
            datasplitter_kwargs={"block_size": 50, "shuffle_window": 2},
            enable_progress_bar=False)
loader = model.trainer.train_dataloader
loader.sampler.set_epoch(1)
cells = np.concatenate([w.file_rows for w in loader.sampler.windows()])
params = torch.cat([p.detach().reshape(-1) for p in model.module.parameters()]).numpy()
np.save(os.path.join(out_dir, f"params_{rank}.npy"), params)
np.save(os.path.join(out_dir, f"cells_{rank}.npy"), cells)
report = {"steps": model.trainer.global_step, "loader": type(loader).__name__,
          "n_train": len(model.train_indices)}
with open(os.path.join(out_dir, f"report_{rank}.json"), "w") as f:
    json.dump(report, f)
"""


@pytest.mark.slow
def test_ddp_processes_read_disjoint_blocks_and_keep_one_model(tmp_path):
    import json
    import subprocess
    import sys

    path = _write(tmp_path)
    script = tmp_path / "ddp_blocks.py"
    script.write_text(DDP_SCRIPT)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc-per-node", "2", str(script), path, str(tmp_path)]
    proc = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    reports = [json.loads((tmp_path / f"report_{r}.json").read_text()) for r in (0, 1)]
    assert {r["loader"] for r in reports} == {"BlockLoader"}
    n_train = reports[0]["n_train"]
    per_process = math.ceil(n_train / 2)
    assert reports[0]["steps"] == reports[1]["steps"] == 2 * math.ceil(per_process / 64)
    params = [np.load(tmp_path / f"params_{r}.npy") for r in (0, 1)]
    np.testing.assert_array_equal(params[0], params[1])
    cells = [np.load(tmp_path / f"cells_{r}.npy") for r in (0, 1)]
    assert len(cells[0]) == len(cells[1]) == per_process
    assert len(np.unique(np.concatenate(cells))) == n_train
