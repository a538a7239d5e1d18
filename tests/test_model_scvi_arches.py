"""ArchesMixin: query mapping onto a trained reference (load_query_data, prepare_query_anndata)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData
from scipy import sparse

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.model import SCVI

DECODER_FIRST = "decoder.px_decoder.fc_layers.Layer 0.0.weight"


def _reference_adata():
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid()
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    return adata


def _query_adata(batches=("batch_2",), n=100):
    scvi_rs.settings.seed = 1
    query = scvi_rs.data.synthetic_iid(batch_size=n // len(batches), n_batches=len(batches))
    query.obs["batch"] = pd.Categorical(np.repeat(list(batches), n // len(batches))[: query.n_obs])
    return query


@pytest.fixture(scope="module")
def reference():
    model = SCVI(_reference_adata(), n_hidden=32, n_latent=5)
    model.train(max_epochs=1, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def reference_dir(reference, tmp_path_factory):
    path = tmp_path_factory.mktemp("reference") / "ref"
    reference.save(str(path))
    return str(path)


def test_query_gets_new_batches_grown_weights_and_freezing(reference):
    query = _query_adata()
    model = SCVI.load_query_data(query, reference)
    assert isinstance(model, SCVI) and model.is_trained_ is False
    mapping = model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
    assert list(mapping) == ["batch_0", "batch_1", "batch_2"]
    assert model.summary_stats.n_batch == 3
    assert model.module.n_batch == 3
    assert (query.obs["_scvi_batch"] == 2).all()

    ref_state = reference.module.state_dict()
    new_state = model.module.state_dict()
    old_w, new_w = ref_state[DECODER_FIRST], new_state[DECODER_FIRST]
    assert new_w.shape[1] == old_w.shape[1] + 1
    torch.testing.assert_close(new_w[:, : old_w.shape[1]], old_w)
    for key, value in ref_state.items():
        if new_state[key].shape == value.shape:
            torch.testing.assert_close(new_state[key], value)

    grads = {name: p.requires_grad for name, p in model.module.named_parameters()}
    assert grads[DECODER_FIRST] is True
    assert grads["z_encoder.encoder.fc_layers.Layer 0.0.weight"] is True
    assert grads["px_r"] is False
    assert grads["z_encoder.mean_encoder.weight"] is False
    assert grads["decoder.px_scale_decoder.0.weight"] is False
    assert grads["z_encoder.encoder.fc_layers.Layer 0.1.weight"] is False  # encoder BN frozen
    assert grads["decoder.px_decoder.fc_layers.Layer 0.1.weight"] is True  # decoder BN trains
    assert all(v for k, v in grads.items() if k.startswith("l_encoder."))
    z_bn = model.module.z_encoder.encoder.fc_layers[0][1]
    d_bn = model.module.decoder.px_decoder.fc_layers[0][1]
    assert z_bn.momentum == 0 and d_bn.momentum == 0.01
    assert model.module.decoder.px_decoder.hooks  # gradient masks installed
    assert not hasattr(model.module.l_encoder.encoder, "hooks")


def test_query_training_only_moves_covariate_columns(reference):
    # Two batches: with a single one its one-hot column is constant, and the decoder's batch
    # norm gives it an exactly zero gradient.
    query = _query_adata(batches=("batch_0", "batch_2"))
    model = SCVI.load_query_data(query, reference)
    before = {k: v.clone() for k, v in model.module.state_dict().items()}
    model.train(max_epochs=1, enable_progress_bar=False)
    after = model.module.state_dict()
    assert model.is_trained_
    n_old = reference.module.state_dict()[DECODER_FIRST].shape[1]
    n_latent = 5
    # latent-input columns are masked (Adam's weight decay moves them by < 1e-6)
    torch.testing.assert_close(
        after[DECODER_FIRST][:, :n_latent], before[DECODER_FIRST][:, :n_latent], atol=1e-6, rtol=0
    )
    assert not torch.allclose(after[DECODER_FIRST][:, n_old:], before[DECODER_FIRST][:, n_old:])
    for key in ("px_r", "z_encoder.mean_encoder.weight", "decoder.px_scale_decoder.0.weight"):
        torch.testing.assert_close(after[key], before[key])
    # frozen encoder batch norm keeps its running statistics
    key = "z_encoder.encoder.fc_layers.Layer 0.1.running_mean"
    torch.testing.assert_close(after[key], before[key])
    latent = model.get_latent_representation()
    assert latent.shape == (query.n_obs, 5)


def test_query_from_saved_directory_and_options(reference_dir):
    query = _query_adata(batches=("batch_1", "new_b"))
    model = SCVI.load_query_data(
        query,
        reference_dir,
        unfrozen=False,
        freeze_dropout=True,
        freeze_expression=False,
        freeze_batchnorm_encoder=False,
        freeze_batchnorm_decoder=True,
        freeze_decoder_first_layer=False,
    )
    mapping = list(
        model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
    )
    assert mapping == ["batch_0", "batch_1", "new_b"]
    module = model.module
    # the library encoder is left alone entirely (as in the reference)
    dropouts = [m for m in module.z_encoder.modules() if isinstance(m, torch.nn.Dropout)]
    assert dropouts and all(m.p == 0 for m in dropouts)
    # first layers unhooked: one-layer stacks get no hooks at all
    assert module.z_encoder.encoder.hooks == [] and module.decoder.px_decoder.hooks == []
    assert module.z_encoder.encoder.fc_layers[0][1].weight.requires_grad
    assert module.z_encoder.encoder.fc_layers[0][1].momentum == 0.01
    assert not module.decoder.px_decoder.fc_layers[0][1].weight.requires_grad
    assert module.decoder.px_decoder.fc_layers[0][1].momentum == 0

    free = SCVI.load_query_data(_query_adata(), reference_dir, unfrozen=True)
    assert all(p.requires_grad for p in free.module.parameters())


def test_query_with_known_batches_and_transfer_batch(reference):
    known = _query_adata(batches=("batch_0",))
    model = SCVI.load_query_data(known, reference, transfer_batch=False)
    assert model.summary_stats.n_batch == 2
    torch.testing.assert_close(model.module.state_dict()["px_r"], reference.module.px_r.detach())
    with pytest.raises(ValueError, match="does not allow for query having batch categories"):
        SCVI.load_query_data(_query_adata(), reference, transfer_batch=False)


def test_query_grows_dispersion_and_library_priors():
    adata = _reference_adata()
    ref = SCVI(
        adata, n_hidden=16, n_latent=3, dispersion="gene-batch", use_observed_lib_size=False
    )
    ref.train(max_epochs=1, enable_progress_bar=False)
    model = SCVI.load_query_data(_query_adata(), ref)
    px_r = model.module.px_r.detach()
    assert px_r.shape == (100, 3)
    torch.testing.assert_close(px_r[:, :2], ref.module.px_r.detach())
    means = model.module.library_log_means
    assert means.shape == (1, 3)
    torch.testing.assert_close(means[:, :2], ref.module.library_log_means)
    query_log_lib = np.log(np.asarray(model.adata.X.sum(axis=1), dtype=np.float64))
    assert means[0, 2].item() == pytest.approx(query_log_lib.mean(), rel=1e-5)


def test_query_bad_inputs(reference, reference_dir):
    query = _query_adata()
    with pytest.raises(ValueError, match="Please provide a reference model"):
        SCVI.load_query_data(query, None)
    with pytest.raises(ValueError, match="Please provide either an AnnData or a registry"):
        SCVI.load_query_data(None, reference)
    with pytest.raises(TypeError, match="reference_model"):
        SCVI.load_query_data(query, 42)
    with pytest.raises(ValueError, match="Failed to load model file"):
        SCVI.load_query_data(query, reference_dir + "_missing")
    fewer = query[:, :90].copy()
    with pytest.raises(ValueError, match="var_names"):
        SCVI.load_query_data(fewer, reference)

    class OtherModel(SCVI):
        pass

    with pytest.raises(ValueError, match="different class"):
        OtherModel.load_query_data(_query_adata(), reference)


def test_query_subsets_vars_in_place(reference):
    query = _query_adata()
    extra = AnnData(
        X=np.hstack([np.asarray(query.X), np.ones((query.n_obs, 2))]),
        obs=query.obs.copy(),
    )
    extra.var_names = [*query.var_names, "extra_a", "extra_b"]
    extra = extra[:, ::-1].copy()
    model = SCVI.load_query_data(extra, reference, inplace_subset_query_vars=True)
    assert list(extra.var_names) == list(reference.adata.var_names)
    assert model.adata is extra


def test_query_from_registry_only(reference):
    query = _query_adata()
    SCVI.setup_anndata(
        query,
        batch_key="batch",
        labels_key="labels",
        source_registry=reference.registry,
        extend_categories=True,
    )
    registry = SCVI._get_most_recent_anndata_manager(query).registry
    model = SCVI.load_query_data(registry=registry, reference_model=reference)
    assert model.adata is None and model.module.n_batch == 3
    with pytest.raises(ValueError, match="does not allow"):
        SCVI.load_query_data(registry=registry, reference_model=reference, transfer_batch=False)


# -- prepare_query_anndata ---------------------------------------------------------------------
def test_prepare_query_anndata_pads_and_orders(reference, reference_dir):
    names = SCVI.prepare_query_anndata(None, reference, return_reference_var_names=True)
    assert isinstance(names, pd.Index) and list(names) == list(reference.adata.var_names)

    query = _query_adata()
    query.layers["counts"] = query.X.copy()
    keep = [f"gene_{i}" for i in range(95, 4, -1)]  # 91 genes, reversed
    partial = query[:, keep].copy()
    partial = AnnData(
        X=np.hstack([partial.X, np.full((partial.n_obs, 1), 7)]),
        obs=partial.obs.copy(),
        layers={"counts": np.hstack([partial.layers["counts"], np.zeros((partial.n_obs, 1))])},
        uns={"note": "kept"},
    )
    partial.var_names = [*keep, "unknown_gene"]

    out = SCVI.prepare_query_anndata(partial, reference_dir, inplace=False)
    assert list(out.var_names) == list(names)
    assert list(partial.var_names)[-1] == "unknown_gene"  # input untouched
    np.testing.assert_array_equal(out[:, keep].X, query[:, keep].X)
    missing = [g for g in names if g not in keep]
    assert len(missing) == 9
    assert (np.asarray(out[:, missing].X) == 0).all()
    assert (np.asarray(out[:, missing].layers["counts"]) == 0).all()
    assert out.uns["note"] == "kept"

    assert SCVI.prepare_query_anndata(partial, reference) is None
    assert list(partial.var_names) == list(names)

    sparse_query = _query_adata()
    sparse_query.X = sparse.csr_matrix(sparse_query.X)
    sparse_query = sparse_query[:, 10:].copy()
    padded = SCVI.prepare_query_anndata(sparse_query, reference, inplace=False)
    assert sparse.issparse(padded.X) and padded.shape == (sparse_query.n_obs, 100)


def test_prepare_query_anndata_bad_inputs(reference):
    query = _query_adata()
    unrelated = AnnData(X=np.ones((5, 3)))
    unrelated.var_names = ["a", "b", "c"]
    with pytest.raises(ValueError, match="No reference var names found in query data"):
        SCVI.prepare_query_anndata(unrelated, reference)
    few = query[:, :50].copy()
    with pytest.warns(UserWarning, match="less than 80% of reference var names"):
        SCVI.prepare_query_anndata(few, reference)
    assert few.n_vars == 100
