"""DeviceBackedDataSplitter: the split on the device, minibatches gathered there."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.data import AnnDataManager
from scvi_rs.data.fields import CategoricalObsField, LayerField, NumericalObsField
from scvi_rs.dataloaders import AnnDataLoader, DataSplitter, DeviceBackedDataSplitter
from scvi_rs.dataloaders._device_backed import DeviceBackedLoader, DeviceCSR, shard_epoch_order

DEVICES = ["cpu", *(["cuda"] if torch.cuda.is_available() else [])]


def make_manager(X) -> AnnDataManager:
    n = X.shape[0]
    adata = AnnData(X)
    adata.obs["batch"] = np.where(np.arange(n) % 3 == 0, "a", "b")
    adata.obs["size"] = np.linspace(1.0, 2.0, n)
    manager = AnnDataManager(
        fields=[
            LayerField(REGISTRY_KEYS.X_KEY, None),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, "batch"),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, "size"),
        ],
        setup_method_args={"model_name": "M", "setup_method_name": "setup_anndata"},
    )
    manager.register_fields(adata)
    return manager


def counts(n: int = 300, g: int = 40, density: float = 0.2, fmt: str = "csr"):
    X = sp.random(n, g, density=density, format=fmt, random_state=1, dtype=np.float32)
    X.data = np.ceil(X.data * 7)
    return X


@pytest.mark.parametrize("device", DEVICES)
def test_csr_gather_equals_scipy_rows(device):
    X = counts(50, 30, 0.3)
    X.data[X.indptr[7] : X.indptr[8]] = 0  # an empty row
    X.eliminate_zeros()
    matrix = DeviceCSR(X.indptr, X.indices, X.data, X.shape[1], torch.device(device))
    rows = np.array([3, 7, 7, 0, 49, 12])
    got = matrix.gather(torch.as_tensor(rows, device=device)).cpu().numpy()
    np.testing.assert_array_equal(got, X[rows].toarray())
    assert matrix.gather(torch.empty(0, dtype=torch.int64, device=device)).shape == (0, 30)


def test_csr_gather_sums_duplicate_entries_and_handles_an_empty_matrix():
    indptr, indices, data = np.array([0, 3, 3]), np.array([1, 1, 0]), np.array([1.0, 2.0, 5.0])
    matrix = DeviceCSR(indptr, indices, data, 3, torch.device("cpu"))
    np.testing.assert_array_equal(
        matrix.gather(torch.tensor([0, 1])).numpy(), [[5, 3, 0], [0, 0, 0]]
    )
    empty = DeviceCSR(np.zeros(3, dtype=np.int64), [], [], 4, torch.device("cpu"))
    assert empty.gather(torch.tensor([1, 0])).abs().sum() == 0


@pytest.mark.filterwarnings("ignore:Training will be faster when sparse matrix")
@pytest.mark.parametrize("fmt", ["csr", "csc", "dense"])
def test_batches_equal_the_ann_dataloader_batches(fmt):
    X = counts(fmt="csr" if fmt == "dense" else fmt)
    manager = make_manager(X.toarray() if fmt == "dense" else X)
    scvi_rs.settings.seed = 0
    splitter = DeviceBackedDataSplitter(manager, batch_size=64, accelerator="cpu")
    splitter.setup()
    reference = DataSplitter(manager, batch_size=64)
    reference.setup()
    np.testing.assert_array_equal(splitter.train_idx, reference.train_idx)
    for ours, theirs in (
        (splitter.train_dataloader(), AnnDataLoader(manager, splitter.train_idx, batch_size=64)),
        (splitter.val_dataloader(), AnnDataLoader(manager, splitter.val_idx, batch_size=64)),
    ):
        assert len(ours) == len(theirs)
        for got, want in zip(ours, theirs, strict=True):
            assert set(got) == set(want)
            for key in want:
                assert got[key].dtype == want[key].dtype, key
                torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_shuffled_epochs_cover_every_training_cell_once_and_differ():
    manager = make_manager(counts())
    scvi_rs.settings.seed = 0
    splitter = DeviceBackedDataSplitter(manager, batch_size=50, shuffle=True, accelerator="cpu")
    splitter.setup()
    loader = splitter.train_dataloader()
    X = manager.adata.X.toarray()[splitter.train_idx]
    epochs = []
    for _ in range(2):
        rows = torch.cat([b[REGISTRY_KEYS.X_KEY] for b in loader]).numpy()
        assert rows.shape == X.shape
        # the same multiset of rows: compare sorted row tuples
        np.testing.assert_array_equal(np.unique(rows, axis=0), np.unique(X, axis=0))
        epochs.append(rows)
    assert not np.array_equal(epochs[0], epochs[1])


def test_drop_last_and_empty_sets():
    manager = make_manager(counts(n=130))
    splitter = DeviceBackedDataSplitter(
        manager, train_size=1.0, batch_size=50, drop_last=True, accelerator="cpu"
    )
    splitter.setup()
    assert len(splitter.train_dataloader()) == 2
    assert sum(len(b[REGISTRY_KEYS.X_KEY]) for b in splitter.train_dataloader()) == 100
    assert splitter.val_dataloader() is None and splitter.test_dataloader() is None


def test_model_trains_on_a_device_backed_datamodule():
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid()
    adata.X = sp.csr_matrix(adata.X)
    scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi_rs.model.SCVI(adata, n_hidden=16, n_latent=4)
    datamodule = DeviceBackedDataSplitter(model.adata_manager, batch_size=64, shuffle=True)
    model.train(
        max_epochs=3, datamodule=datamodule, check_val_every_n_epoch=1, enable_progress_bar=False
    )
    assert model.is_trained
    assert len(model.history["elbo_validation"]) == 3
    assert np.isfinite(model.history["elbo_train"].to_numpy()).all()
    np.testing.assert_array_equal(model.train_indices, datamodule.train_idx)


def test_replicas_share_each_epoch_with_the_host_samplers_tail_policy():
    manager = make_manager(counts(n=301))
    scvi_rs.settings.seed = 0
    splitter = DeviceBackedDataSplitter(
        manager, train_size=1.0, batch_size=32, shuffle=True, accelerator="cpu"
    )
    splitter.setup()
    dense, csr, n_obs = splitter._sets["train"]
    seen = []
    for rank in (0, 1):
        generator = torch.Generator()
        generator.manual_seed(0)  # every process seeds alike
        loader = DeviceBackedLoader(dense, csr, n_obs, 32, True, False, generator, 2, rank)
        assert len(loader) == 5  # 151 cells each: the epoch's order is padded to 302
        seen.append(torch.cat([b[REGISTRY_KEYS.SIZE_FACTOR_KEY] for b in loader]).ravel())
    assert len(seen[0]) == len(seen[1]) == 151
    both = torch.cat(seen).numpy()
    assert len(np.unique(both)) == 301  # size factors are distinct per cell: all cells seen
    # the same cells per rank as torch's DistributedSampler (the host loader's sampler)
    order = torch.randperm(301, generator=torch.Generator().manual_seed(0))
    for rank in (0, 1):
        sampler = torch.utils.data.DistributedSampler(
            range(301), num_replicas=2, rank=rank, shuffle=False
        )
        host = order[list(sampler)]
        np.testing.assert_array_equal(shard_epoch_order(order, rank, 2).numpy(), host.numpy())


def test_shard_epoch_order_pads_tiny_epochs():
    order = torch.tensor([7, 3])
    shards = [shard_epoch_order(order, r, 5).tolist() for r in range(5)]
    assert shards == [[7], [3], [7], [3], [7]]
    assert shard_epoch_order(torch.tensor([], dtype=torch.long), 0, 3).tolist() == []
