"""``CollectionAdapter``: an AnnCollection registered, loaded and trained like one AnnData."""

from __future__ import annotations

import pickle
import warnings

import anndata
import numpy as np
import pytest
import scipy.sparse as sp
import torch
from anndata.experimental import AnnCollection

import scvi_rs as scvi
from scvi_rs import REGISTRY_KEYS
from scvi_rs.dataloaders import CollectionAdapter
from scvi_rs.model import SCVI


def _member(seed: int, unknown_labels: bool = False) -> anndata.AnnData:
    np.random.seed(seed)  # noqa: NPY002 - synthetic_iid draws from numpy's global generator
    adata = scvi.data.synthetic_iid(batch_size=30, n_genes=20, n_batches=1, n_labels=2)
    adata.X = sp.csr_matrix(adata.X)
    adata.layers["counts"] = adata.X.copy()
    if unknown_labels:
        adata.obs["labels"] = "Unknown"
    return adata


def _collection(seeds=(0, 1)) -> tuple[AnnCollection, list[anndata.AnnData]]:
    members = [_member(s, unknown_labels=i == 1) for i, s in enumerate(seeds)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # obs names repeat across members
        collection = AnnCollection(members, join_vars="inner", join_obs="inner", label="dataset")
    return collection, members


def _joined_counts(members) -> np.ndarray:
    return sp.vstack([m.layers["counts"] for m in members]).toarray()


def test_adapter_looks_like_an_anndata():
    collection, members = _collection()
    adapter = CollectionAdapter(collection)
    assert isinstance(adapter, anndata.AnnData)
    assert adapter.shape == (60, 20)
    assert adapter.n_obs == 60 and not adapter.is_view and adapter.isbacked
    assert list(adapter.layers) == ["counts"] and "counts" in adapter.layers
    np.testing.assert_array_equal(adapter.var_names, members[0].var_names)
    rows = adapter.layers["counts"][np.array([35, 2, 2])]
    np.testing.assert_array_equal(rows.toarray(), _joined_counts(members)[[35, 2, 2]])
    with pytest.raises(KeyError, match="not a layer"):
        adapter.layers["missing"]


def test_adapters_keep_their_own_uns():
    first, second = CollectionAdapter(_collection()[0]), CollectionAdapter(_collection()[0])
    first.uns["note"] = 1
    assert "note" not in second.uns


def test_adapter_refuses_other_objects():
    with pytest.raises(TypeError, match="AnnCollection"):
        CollectionAdapter(_member(0))


def test_registration_reads_the_members_rows():
    collection, members = _collection()
    adapter = CollectionAdapter(collection)
    SCVI.setup_anndata(adapter, layer="counts", batch_key="dataset", labels_key="labels")
    manager = SCVI._get_most_recent_anndata_manager(adapter, required=True)
    assert manager.summary_stats["n_batch"] == 2
    assert manager.summary_stats["n_labels"] == 3  # label_0, label_1 and Unknown
    dataset = manager.create_torch_dataset()
    batch = dataset[[40, 3, 17]]
    expected = np.array([3, 17, 40])  # rows sorted, as for backed data
    np.testing.assert_array_equal(batch[REGISTRY_KEYS.X_KEY], _joined_counts(members)[expected])
    np.testing.assert_array_equal(batch[REGISTRY_KEYS.BATCH_KEY].ravel(), [0, 0, 1])
    sparse = manager.create_torch_dataset(load_sparse_tensor=True)[[5, 50]]
    x = sparse[REGISTRY_KEYS.X_KEY]
    assert isinstance(x, torch.Tensor) and x.layout is torch.sparse_csr
    np.testing.assert_array_equal(x.to_dense().numpy(), _joined_counts(members)[[5, 50]])


def test_non_count_layer_warns():
    collection, members = _collection()
    for member in members:
        member.layers["scaled"] = member.layers["counts"] * 0.5
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        collection = AnnCollection(members, join_vars="inner", join_obs="inner", label="dataset")
    with pytest.warns(UserWarning, match="does not contain unnormalized count data"):
        SCVI.setup_anndata(CollectionAdapter(collection), layer="scaled")


def test_training_matches_the_concatenated_data_read_backed(tmp_path):
    """Same seed, same rows in the same (sorted) order: the same trained model."""
    collection, members = _collection()
    adapter = CollectionAdapter(collection)
    joined = anndata.AnnData(
        X=sp.csr_matrix(_joined_counts(members)), obs=collection.obs.copy(), var=members[0].var
    )
    joined.obs_names_make_unique()
    joined.write_h5ad(tmp_path / "joined.h5ad")
    backed = anndata.read_h5ad(tmp_path / "joined.h5ad", backed="r")
    latents = []
    for adata, layer in ((adapter, "counts"), (backed, None)):
        SCVI.setup_anndata(adata, layer=layer, batch_key="dataset", labels_key="labels")
        scvi.settings.seed = 3
        model = SCVI(adata, n_latent=3, n_hidden=16)
        # random reads for both: block shuffling (the default for backed X) orders cells otherwise
        model.train(
            max_epochs=2,
            batch_size=16,
            enable_progress_bar=False,
            datasplitter_kwargs={"load_mode": "random"},
        )
        latents.append(model.get_latent_representation())
    backed.file.close()
    np.testing.assert_allclose(latents[0], latents[1], atol=1e-4)


def test_save_load_and_query_mapping(tmp_path):
    adapter = CollectionAdapter(_collection()[0])
    SCVI.setup_anndata(adapter, layer="counts", batch_key="dataset", labels_key="labels")
    model = SCVI(adapter, n_latent=3, n_hidden=16)
    model.train(max_epochs=1, enable_progress_bar=False)
    model.save(tmp_path / "ref", save_anndata=False)
    loaded = SCVI.load(tmp_path / "ref", adata=adapter)
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), atol=1e-5
    )
    query = CollectionAdapter(_collection(seeds=(5, 6))[0])
    SCVI.prepare_query_anndata(query, tmp_path / "ref")
    query_model = SCVI.load_query_data(query, tmp_path / "ref")
    query_model.train(max_epochs=1, enable_progress_bar=False)
    assert query_model.get_latent_representation().shape == (60, 3)


def test_adapter_pickles_as_an_adapter():
    collection, members = _collection()
    adapter = CollectionAdapter(collection)
    adapter.uns["note"] = "kept"
    copy = pickle.loads(pickle.dumps(adapter))
    assert type(copy) is CollectionAdapter
    assert copy.uns == {"note": "kept"}
    np.testing.assert_array_equal(
        copy.layers["counts"][[4]].toarray(), _joined_counts(members)[[4]]
    )
