"""AnnTorchDataset (api_spec 2.8): keys and dtypes, every X layout, backed files, errors."""

from __future__ import annotations

import warnings

import anndata
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvi_rs import REGISTRY_KEYS
from scvi_rs.data import AnnDataManager, AnnTorchDataset
from scvi_rs.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)


def make_adata(X, n_batch: int = 3, seed: int = 0) -> AnnData:
    n = X.shape[0]
    rng = np.random.default_rng(seed)
    adata = AnnData(X)
    adata.obs["batch"] = pd.Categorical([f"b{i}" for i in rng.integers(0, n_batch, n)])
    adata.obs["labels"] = pd.Categorical([f"l{i}" for i in rng.integers(0, 2, n)])
    adata.obs["sf"] = rng.random(n) + 0.5
    adata.obs["cat1"] = rng.choice(["x", "y", "z"], n)
    adata.obs["cat2"] = rng.choice(["u", "v"], n)
    adata.obs["cont1"] = rng.normal(size=n)
    adata.obs["cont2"] = rng.normal(size=n)
    return adata


def make_manager(adata: AnnData, covariates: bool = True) -> AnnDataManager:
    fields = [
        LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False),
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, "batch"),
        CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, "labels"),
    ]
    if covariates:
        fields += [
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, "sf", required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, ["cat1", "cat2"]),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, ["cont1", "cont2"]),
        ]
    manager = AnnDataManager(
        fields=fields,
        setup_method_args={
            "model_name": "SCVI",
            "setup_method_name": "setup_anndata",
            "setup_args": {},
        },
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager.register_fields(adata)
    return manager


def counts(n: int = 60, g: int = 17, density: float = 0.3, seed: int = 0) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    X = sp.random(n, g, density=density, format="csr", random_state=rng, dtype=np.float64)
    X.data = np.ceil(X.data * 10)
    return X


def expected_obs(adata: AnnData, rows) -> dict:
    codes = {k: adata.obs[f"_scvi_{k}"].to_numpy() for k in ("batch", "labels")}
    return {
        "batch": codes["batch"][rows].reshape(-1, 1).astype(np.int64),
        "labels": codes["labels"][rows].reshape(-1, 1).astype(np.int64),
        "size_factor": adata.obs["sf"].to_numpy()[rows].reshape(-1, 1).astype(np.float32),
        "extra_categorical_covs": adata.obsm["_scvi_extra_categorical_covs"]
        .to_numpy()[rows]
        .astype(np.int64),
        "extra_continuous_covs": adata.obsm["_scvi_extra_continuous_covs"]
        .to_numpy()[rows]
        .astype(np.float32),
    }


def unsorted(X: sp.csr_matrix) -> sp.csr_matrix:
    """The same matrix with each row's entries stored in reverse column order."""
    X = X.copy()
    for r in range(X.shape[0]):
        a, b = X.indptr[r], X.indptr[r + 1]
        X.indices[a:b] = X.indices[a:b][::-1].copy()
        X.data[a:b] = X.data[a:b][::-1].copy()
    X.has_sorted_indices = False
    return X


X_VARIANTS = {
    "csr_int32": lambda X: X.astype(np.float32),
    "csr_int64_idx": lambda X: sp.csr_matrix(
        (X.data.astype(np.float32), X.indices.astype(np.int64), X.indptr.astype(np.int64)),
        shape=X.shape,
    ),
    "csr_mixed_idx": lambda X: sp.csr_matrix(
        (X.data, X.indices.astype(np.int32), X.indptr.astype(np.int64)), shape=X.shape
    ),
    "csr_float64": lambda X: X.astype(np.float64),
    "csr_int_data": lambda X: X.astype(np.int32),
    "csr_unsorted": lambda X: unsorted(X.astype(np.float32)),
    "csr_array": lambda X: sp.csr_array(X.astype(np.float32)),
    "csc": lambda X: X.tocsc().astype(np.float32),
    "csc_float64": lambda X: X.tocsc(),
    "dense_f32": lambda X: X.toarray().astype(np.float32),
    "dense_f64": lambda X: X.toarray(),
    "dense_int64": lambda X: X.toarray().astype(np.int64),
    "dense_fortran": lambda X: np.asfortranarray(X.toarray().astype(np.float32)),
}


@pytest.mark.parametrize("variant", sorted(X_VARIANTS))
def test_rows_match_scipy_for_every_layout(variant):
    base = counts()
    adata = make_adata(X_VARIANTS[variant](base.copy()))
    ds = AnnTorchDataset(make_manager(adata))
    want_X = base.toarray().astype(np.float32)
    for rows in ([0], [5, 3, 3, 59, 0], list(range(60))[::-1], np.array([7, -1, 2])):
        got = ds[rows]
        idx = np.asarray(rows) % 60
        assert got["X"].dtype == np.float32
        np.testing.assert_array_equal(got["X"], want_X[idx])
        for key, value in expected_obs(adata, idx).items():
            assert got[key].dtype == value.dtype, key
            np.testing.assert_array_equal(got[key], value, err_msg=key)


def test_duplicate_entries_sum_like_toarray():
    X = sp.csr_matrix(
        (np.array([1.0, 2.0, 3.0, 4.0]), np.array([2, 0, 2, 1]), np.array([0, 3, 4])),
        shape=(2, 3),
    )
    ds = AnnTorchDataset(make_manager(make_adata(X), covariates=False))
    np.testing.assert_array_equal(ds[[0, 1]]["X"], X.toarray().astype(np.float32))


def test_shapes_dtypes_and_keys():
    adata = make_adata(counts())
    ds = AnnTorchDataset(make_manager(adata))
    out = ds[[1, 2, 3, 4, 5]]
    assert list(out) == list(ds.keys_and_dtypes)
    shapes = {k: (v.shape, v.dtype) for k, v in out.items()}
    assert shapes == {
        "X": ((5, 17), np.float32),
        "batch": ((5, 1), np.int64),
        "labels": ((5, 1), np.int64),
        "size_factor": ((5, 1), np.float32),
        "extra_categorical_covs": ((5, 2), np.int64),
        "extra_continuous_covs": ((5, 2), np.float32),
    }
    assert len(ds) == 60
    assert ds[0]["X"].shape == (1, 17)  # an int is a batch of one
    assert ds[np.int64(3)]["X"].shape == (1, 17)
    np.testing.assert_array_equal(ds[2:5]["X"], ds[[2, 3, 4]]["X"])
    assert ds[np.array([], dtype=np.int64)]["X"].shape == (0, 17)
    assert ds[[]]["batch"].shape == (0, 1)


def test_getitem_tensors_list_dict_none():
    adata = make_adata(counts())
    manager = make_manager(adata)
    ds = AnnTorchDataset(manager, getitem_tensors=["X", "batch"])
    assert ds.keys_and_dtypes == {"X": np.float32, "batch": np.int64}
    assert set(ds[[0, 1]]) == {"X", "batch"}
    ds = AnnTorchDataset(manager, getitem_tensors={"X": np.float64, "labels": np.float32})
    out = ds[[0, 1]]
    assert out["X"].dtype == np.float64 and out["labels"].dtype == np.float32
    np.testing.assert_array_equal(out["X"], counts().toarray()[[0, 1]])
    ds = AnnTorchDataset(manager, getitem_tensors={"X": np.int64})
    assert ds[[3]]["X"].dtype == np.int64
    ds = AnnTorchDataset(manager)
    assert set(ds.keys_and_dtypes) == set(manager.data_registry.keys())
    assert set(ds.registered_keys) == set(manager.data_registry.keys())
    assert set(ds.data) == set(manager.data_registry.keys())
    with pytest.raises(KeyError, match=r"proteins not found in the data registry\."):
        AnnTorchDataset(manager, getitem_tensors=["X", "proteins"])
    with pytest.raises(ValueError, match="`getitem_tensors` must be a `list`, `dict`, or `None`"):
        AnnTorchDataset(manager, getitem_tensors=("X",))


def test_unregistered_manager_and_bad_rows():
    with pytest.raises(ValueError, match=r"Please run ``register_fields`` on ``adata_manager``"):
        AnnTorchDataset(AnnDataManager(fields=[]))
    ds = AnnTorchDataset(make_manager(make_adata(counts())))
    with pytest.raises(IndexError, match="out of bounds"):
        ds[[0, 60]]
    with pytest.raises(IndexError, match="out of bounds"):
        ds[[-61]]
    with pytest.raises(IndexError, match="integer"):
        ds[np.array([0.5])]


def test_load_sparse_tensor_csr_and_csc():
    base = counts()
    for X, layout in (
        (base.astype(np.float32), torch.sparse_csr),
        (base.tocsc(), torch.sparse_csc),
    ):
        ds = AnnTorchDataset(make_manager(make_adata(X)), load_sparse_tensor=True)
        out = ds[[4, 1, 1, 30]]
        assert out["X"].layout is layout
        assert out["X"].dtype == torch.float32
        np.testing.assert_array_equal(
            out["X"].to_dense().numpy(), base.toarray()[[4, 1, 1, 30]].astype(np.float32)
        )
        assert isinstance(out["batch"], np.ndarray)
    dense = AnnTorchDataset(
        make_manager(make_adata(base.toarray().astype(np.float32))), load_sparse_tensor=True
    )
    assert isinstance(dense[[0]]["X"], np.ndarray)  # dense X stays dense


@pytest.mark.parametrize("layout", ["csr", "dense"])
def test_backed_h5ad_rows_sorted(tmp_path, layout):
    base = counts(n=300, g=23, density=0.2)
    X = base.astype(np.float32) if layout == "csr" else base.toarray().astype(np.float32)
    adata = make_adata(X)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    backed = anndata.read_h5ad(path, backed="r")
    ds = AnnTorchDataset(make_manager(backed, covariates=False))
    assert ds.is_backed
    rows = [250, 3, 4, 5, 3, 120, 299, 0]
    out = ds[rows]
    srt = np.sort(rows)  # the reference sorts rows of backed data
    np.testing.assert_array_equal(out["X"], base.toarray()[srt].astype(np.float32))
    np.testing.assert_array_equal(out["batch"].ravel(), backed.obs["_scvi_batch"].to_numpy()[srt])
    assert ds[[]]["X"].shape == (0, 23)
    if layout == "csr":
        sparse = AnnTorchDataset(make_manager(backed, covariates=False), load_sparse_tensor=True)
        got = sparse[rows]["X"]
        assert got.layout is torch.sparse_csr
        np.testing.assert_array_equal(got.to_dense().numpy(), base.toarray()[srt])
    backed.file.close()


def test_backed_csr_coalesced_reads_far_apart_rows(tmp_path, monkeypatch):
    from scvi_rs.data import _anntorchdataset as mod

    base = counts(n=500, g=11, density=0.3)
    adata = make_adata(base.astype(np.float32))
    adata.write_h5ad(tmp_path / "a.h5ad")
    backed = anndata.read_h5ad(tmp_path / "a.h5ad", backed="r")
    ds = AnnTorchDataset(make_manager(backed, covariates=False), getitem_tensors=["X"])
    monkeypatch.setattr(mod, "_BACKED_GAP", 0)  # every non-adjacent row is its own read
    rows = np.array([499, 0, 1, 2, 250, 251, 10, 400])
    np.testing.assert_array_equal(ds[rows]["X"], base.toarray()[np.sort(rows)])
    backed.file.close()


def test_obs_columns_materialised_once():
    adata = make_adata(counts())
    ds = AnnTorchDataset(make_manager(adata))
    readers = ds._prepare()
    assert readers["batch"].arr.dtype == np.int64  # int8 codes converted once
    assert readers["extra_continuous_covs"].arr.dtype == np.float32
    assert ds._prepare() is readers
