"""Backed (on-disk) AnnData: registration, dataset reads and training without loading X."""

from __future__ import annotations

import hashlib
import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import scvi_rs as scvi
from scvi_rs import REGISTRY_KEYS
from scvi_rs.data import AnnDataManager
from scvi_rs.data._utils import _check_nonnegative_integers, scipy_to_torch_sparse
from scvi_rs.data.fields import CategoricalObsField, LayerField


def _digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _manager(adata, batch_key="batch") -> AnnDataManager:
    fields = [
        LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=True),
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
    ]
    manager = AnnDataManager(fields=fields)
    manager.register_fields(adata)
    return manager


@pytest.fixture
def counts_path(tmp_path):
    adata = scvi.data.synthetic_iid(batch_size=60, n_genes=30, sparse_format="csr_matrix")
    path = tmp_path / "counts.h5ad"
    adata.write_h5ad(path)
    return path, adata


@pytest.mark.parametrize("mode", ["r", "r+"])
def test_backed_sparse_registration_reads_rows_like_memory(counts_path, mode):
    path, in_memory = counts_path
    backed = anndata.read_h5ad(path, backed=mode)
    manager = _manager(backed)
    assert manager.adata.isbacked
    assert not sp.issparse(backed.X)  # X stays on disk
    dataset = manager.create_torch_dataset()
    rows = [7, 2, 2, 55]
    batch = dataset[rows]
    expected_rows = np.sort(rows)  # backed reads come back sorted, as in the reference
    np.testing.assert_array_equal(
        batch[REGISTRY_KEYS.X_KEY], in_memory.X[expected_rows].toarray().astype(np.float32)
    )
    codes = in_memory.obs["batch"].cat.codes.to_numpy()[expected_rows].reshape(-1, 1)
    np.testing.assert_array_equal(batch[REGISTRY_KEYS.BATCH_KEY], codes)
    backed.file.close()


def test_backed_sparse_tensor_rows(counts_path):
    path, in_memory = counts_path
    backed = anndata.read_h5ad(path, backed="r")
    dataset = _manager(backed).create_torch_dataset(load_sparse_tensor=True)
    x = dataset[3:9][REGISTRY_KEYS.X_KEY]
    assert isinstance(x, torch.Tensor) and x.layout is torch.sparse_csr
    assert x.dtype == torch.float32
    np.testing.assert_array_equal(x.to_dense().numpy(), in_memory.X[3:9].toarray())
    backed.file.close()


def test_backed_registration_and_training_leave_the_file_unchanged(counts_path):
    path, _ = counts_path
    before = _digest(path)
    backed = anndata.read_h5ad(path, backed="r")
    scvi.model.SCVI.setup_anndata(backed, batch_key="batch", labels_key="labels")
    model = scvi.model.SCVI(backed, n_latent=4, n_hidden=16)
    model.train(max_epochs=1, batch_size=32, enable_progress_bar=False)
    latent = model.get_latent_representation()
    assert latent.shape == (backed.n_obs, 4)
    assert np.isfinite(latent).all()
    assert not sp.issparse(backed.X)
    backed.file.close()
    assert _digest(path) == before


def test_backed_non_count_data_warns(tmp_path):
    adata = scvi.data.synthetic_iid(batch_size=40, n_genes=10, sparse_format="csr_matrix")
    adata.X = adata.X.astype(np.float32) * 0.5 + sp.random(80, 10, density=1.0, format="csr")
    path = tmp_path / "normalized.h5ad"
    adata.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    with pytest.warns(UserWarning, match="does not contain unnormalized count data"):
        _manager(backed)
    backed.file.close()


def test_count_check_accepts_backed_dense_and_sparse(counts_path, tmp_path):
    path, in_memory = counts_path
    backed = anndata.read_h5ad(path, backed="r")
    assert _check_nonnegative_integers(backed.X)
    backed.file.close()
    dense = anndata.AnnData(in_memory.X.toarray())
    dense_path = tmp_path / "dense.h5ad"
    dense.write_h5ad(dense_path)
    backed_dense = anndata.read_h5ad(dense_path, backed="r")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _check_nonnegative_integers(backed_dense.X)
    backed_dense.file.close()


def test_count_check_names_an_unknown_type():
    with pytest.raises(TypeError, match=r"data type not understood.*list"):
        _check_nonnegative_integers([[1, 2], [3, 4]])


@pytest.mark.parametrize(
    ("make", "layout"),
    [
        (sp.csr_matrix, torch.sparse_csr),
        (sp.csc_matrix, torch.sparse_csc),
        (sp.csr_array, torch.sparse_csr),
        (sp.csc_array, torch.sparse_csc),
    ],
)
def test_scipy_to_torch_sparse_keeps_layout_values_and_dtype(make, layout):
    dense = np.array([[0, 1.5, 0], [2, 0, 0], [0, 0, 0], [0, 3, 4]], dtype=np.float64)
    tensor = scipy_to_torch_sparse(make(dense))
    assert tensor.layout is layout
    assert tuple(tensor.shape) == dense.shape
    assert tensor.dtype == torch.float64
    np.testing.assert_array_equal(tensor.to_dense().numpy(), dense)


@pytest.mark.parametrize("bad", [np.eye(3), sp.coo_matrix(np.eye(3)), torch.eye(3)])
def test_scipy_to_torch_sparse_refuses_other_types(bad):
    with pytest.raises(TypeError, match="csr_matrix"):
        scipy_to_torch_sparse(bad)
