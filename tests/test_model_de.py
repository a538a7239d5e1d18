"""Differential expression: module layout, group selection and importance-weighted sampling."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.distributions import ZeroInflatedNegativeBinomial
from scvi_rs.model import SCVI
from scvi_rs.model.base import _de, _de_core, _differential
from scvi_rs.model.base._de_core import _prepare_obs, _subset_group
from scvi_rs.model.base._rnamixin import (
    _concat_distributions,
    _denoising_parameters,
    _subset_distribution,
)


@pytest.fixture(scope="module")
def model():
    """A small SCVI (zinb) on 100 cells x 20 genes, two batches, three labels."""
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=50, n_genes=20)
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    trained = SCVI(adata, n_hidden=16, n_latent=4)
    trained.train(max_epochs=2, enable_progress_bar=False)
    return trained


def _posterior(model, indices, n_samples, batch_size=30):
    """qz, px and z of ``indices``, joined over minibatches as the expression query does."""
    loader = model._make_data_loader(adata=model.adata, indices=indices, batch_size=batch_size)
    qzs, pxs, zs = [], [], []
    with torch.inference_mode():
        for tensors in loader:
            inference, generative = model.module.forward(
                tensors, inference_kwargs={"n_samples": n_samples}, compute_loss=False
            )
            qzs.append(inference["qz"])
            pxs.append(generative["px"])
            zs.append(inference["z"])
    cell_axis = 1 if n_samples > 1 else 0
    return (
        _concat_distributions(qzs, axis=0),
        _concat_distributions(pxs, axis=cell_axis),
        torch.cat(zs, dim=cell_axis),
    )


# -- module layout ----------------------------------------------------------------------------
def test_reference_import_paths_share_one_implementation():
    assert _de.DifferentialComputation is _differential.DifferentialComputation
    assert scvi_rs.model.base.DifferentialComputation is _differential.DifferentialComputation
    assert _de._de_core is _de_core._de_core
    for name in ("estimate_delta", "estimate_pseudocounts_offset", "pairs_sampler", "densify"):
        assert callable(getattr(_differential, name))
    np.testing.assert_array_equal(_differential.densify(sparse.csr_matrix([[1, 0, 2]])), [1, 0, 2])


# -- group selection --------------------------------------------------------------------------
def test_prepare_obs_labels_queries_masks_and_indices(model):
    adata = model.adata
    obs_col, group1, group2 = _prepare_obs("labels == 'label_1' & batch == 'batch_1'", None, adata)
    expected = ((adata.obs.labels == "label_1") & (adata.obs.batch == "batch_1")).to_numpy()
    assert group1 == ["one"] and group2 is None
    np.testing.assert_array_equal(obs_col == "one", expected)
    assert set(obs_col[~expected]) == {"None"}

    # A cell in both selections belongs to the second group.
    obs_col, _, group2 = _prepare_obs([0, 1, 2], np.arange(2, 6), adata)
    assert group2 == "two"
    assert obs_col[:6].tolist() == ["one", "one", "two", "two", "two", "two"]
    mask = np.zeros(adata.n_obs, dtype=bool)
    mask[10] = True
    assert _prepare_obs(mask, None, adata)[0][10] == "one"


def test_prepare_obs_bad_selections(model):
    adata = model.adata
    with pytest.raises(ValueError, match="size zero"):
        _prepare_obs(np.zeros(adata.n_obs, dtype=bool), None, adata)
    with pytest.raises(ValueError, match="size zero"):
        _prepare_obs([0], "labels == 'no_such_label'", adata)
    with pytest.raises(ValueError, match="Mask must be same length"):
        _prepare_obs(np.ones(3, dtype=bool), None, adata)
    with pytest.raises(TypeError, match="boolean mask, integer indices"):
        _prepare_obs([0.5, 1.5], None, adata)


def test_subset_group_and_de_on_a_subset(model):
    adata = model.adata
    subset = np.flatnonzero(adata.obs.batch == "batch_0")
    labels = _subset_group(subset, "labels", adata)
    assert (labels[adata.obs.batch == "batch_1"] == "other").all()
    assert (labels.iloc[subset] == adata.obs.labels.astype(str).iloc[subset]).all()

    table = _de_core._de_core(
        model.adata_manager,
        model.get_normalized_expression,
        None,
        "labels",
        "label_0",
        "label_1",
        None,
        None,
        False,
        None,
        adata.var_names,
        "vanilla",
        None,
        None,
        0.25,
        False,
        0.05,
        True,
        subset_idx=subset,
        n_samples_overall=200,
    )
    assert table.shape[0] == adata.n_vars
    assert table["comparison"].unique().tolist() == ["label_0 vs label_1"]


def test_de_on_a_view_leaves_no_temporary_column(model):
    view = model.adata[model.adata.obs["labels"] == "label_1"]
    table = model.differential_expression(
        view, groupby="batch", silent=True, n_samples_overall=200
    )
    assert table["comparison"].unique().tolist() == ["batch_0 vs Rest", "batch_1 vs Rest"]
    model.differential_expression(idx1=[0, 1], idx2=[2, 3], silent=True, n_samples_overall=50)
    assert "_scvi_temp_de" not in view.obs.columns
    assert "_scvi_temp_de" not in model.adata.obs.columns


# -- importance weights -----------------------------------------------------------------------
def _brute_force_weights(model, indices, qz, px, zs, log_px):
    """The reference's formula, one sample and one anchor at a time."""
    rows = model.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)[indices]
    rows = rows.toarray() if sparse.issparse(rows) else np.asarray(rows)
    counts = torch.as_tensor(rows, dtype=torch.float32)
    flat_z = zs.reshape(-1, zs.shape[-1]).double()
    scale = px.scale.reshape(-1, px.scale.shape[-1])
    theta = px.theta.reshape(-1, px.theta.shape[-1])
    zi_logits = px.zi_logits.reshape(-1, px.zi_logits.shape[-1])
    log_w = []
    for s in range(flat_z.shape[0]):
        log_prior = torch.distributions.Normal(0.0, 1.0).log_prob(flat_z[s]).sum()
        log_post, log_q = [], []
        for a in range(len(indices)):
            x = counts[a]
            nb = ZeroInflatedNegativeBinomial(
                mu=scale[s] * x.sum(), theta=theta[s], zi_logits=zi_logits[s], scale=scale[s]
            )
            log_post.append(log_prior + nb.log_prob(x).sum().double() - log_px[a])
            q = torch.distributions.Normal(qz.loc[a].double(), qz.scale[a].double())
            log_q.append(q.log_prob(flat_z[s]).sum())
        log_w.append(
            torch.logsumexp(torch.stack(log_post), 0) - torch.logsumexp(torch.stack(log_q), 0)
        )
    log_w = torch.stack(log_w)
    return torch.exp(log_w - torch.logsumexp(log_w, 0)).numpy()


def test_importance_weights_follow_the_formula(model, monkeypatch):
    scvi_rs.settings.seed = 1
    indices = np.arange(8)
    qz, px, zs = _posterior(model, indices, n_samples=3, batch_size=5)
    log_px = torch.linspace(-60.0, -40.0, len(indices))
    monkeypatch.setattr(
        model, "get_marginal_ll", lambda adata, indices, **kwargs: log_px[: len(indices)].clone()
    )
    weights = model.get_importance_weights(model.adata, indices, qz=qz, px=px, zs=zs)
    assert weights.shape == (3 * len(indices),)
    assert weights.sum() == pytest.approx(1.0, abs=1e-12)
    expected = _brute_force_weights(model, indices, qz, px, zs, log_px.double())
    np.testing.assert_allclose(weights, expected, rtol=2e-3, atol=1e-7)

    truncated = model.get_importance_weights(
        model.adata, indices, qz=qz, px=px, zs=zs, truncation=True
    )
    # Truncation lifts every weight below the mean to the mean (before normalising).
    assert truncated.min() >= weights.min()
    assert truncated.min() == pytest.approx(truncated[weights < 1 / len(weights)].max())


def test_importance_weights_with_one_sample_per_cell_and_few_anchors(model):
    scvi_rs.settings.seed = 2
    indices = np.arange(20, 32)
    qz, px, zs = _posterior(model, indices, n_samples=1)
    weights = model.get_importance_weights(
        model.adata,
        indices,
        qz=qz,
        px=px,
        zs=zs,
        max_cells=4,
        n_mc_samples=20,
        n_mc_samples_per_pass=10,
    )
    assert weights.shape == (len(indices),)
    assert np.all(weights >= 0) and weights.sum() == pytest.approx(1.0)


def test_importance_weights_bad_shapes(model):
    qz, px, zs = _posterior(model, np.arange(6), n_samples=2)
    with pytest.raises(ValueError, match="one entry per cell"):
        model.get_importance_weights(model.adata, np.arange(5), qz=qz, px=px, zs=zs)


def test_subset_and_concat_distributions_keep_the_parameters(model):
    qz, px, _ = _posterior(model, np.arange(10), n_samples=2, batch_size=4)
    assert px.scale.shape[:2] == (2, 10)
    part = _subset_distribution(qz, np.array([3, 1]), axis=0)
    torch.testing.assert_close(part.loc, qz.loc[[3, 1]])
    torch.testing.assert_close(part.scale, qz.scale[[3, 1]])


def test_importance_sampling_draws_by_the_weights(model, monkeypatch):
    indices = np.arange(40, 50)
    favourite = 7

    def one_hot(adata, indices, qz, px, zs, **kwargs):
        weights = np.zeros(zs.reshape(-1, zs.shape[-1]).shape[0])
        weights[favourite] = 1.0
        return weights

    monkeypatch.setattr(model, "get_importance_weights", one_hot)
    torch.manual_seed(0)
    draws = model.get_normalized_expression(
        indices=indices, n_samples_overall=25, weights="importance", return_numpy=True
    )
    assert draws.shape == (25, model.adata.n_vars)
    np.testing.assert_array_equal(draws, np.broadcast_to(draws[0], draws.shape))


def test_importance_expression_queries(model):
    scvi_rs.settings.seed = 3
    draws = model.get_normalized_expression(
        indices=np.arange(30), n_samples_overall=90, weights="importance", return_numpy=True
    )
    assert draws.shape == (90, model.adata.n_vars)
    np.testing.assert_allclose(draws.sum(1), 1.0, rtol=1e-5)
    # Without n_samples_overall nothing is resampled: the weights are not used.
    frame = model.get_normalized_expression(indices=np.arange(5), weights="importance")
    assert frame.shape == (5, model.adata.n_vars)


def test_importance_expression_bad_inputs(model):
    with pytest.raises(NotImplementedError, match="averaged across batches"):
        model.get_normalized_expression(
            n_samples_overall=10, weights="importance", transform_batch=["batch_0", "batch_1"]
        )
    loader = model._make_data_loader(model.adata)
    with pytest.raises(ValueError, match="dataloader"):
        model.get_normalized_expression(dataloader=loader, weights="importance")


def test_importance_needs_a_count_likelihood():
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=20, n_genes=10)
    SCVI.setup_anndata(adata)
    normal = SCVI(adata, n_hidden=8, n_latent=2, gene_likelihood="normal")
    with pytest.raises(NotImplementedError, match="Normal"):
        normal.get_normalized_expression(n_samples_overall=10, weights="importance")


@pytest.mark.parametrize("mode", ["vanilla", "change"])
def test_importance_weighted_de(model, mode):
    scvi_rs.settings.seed = 4
    table = model.differential_expression(
        groupby="labels",
        group1="label_0",
        mode=mode,
        weights="importance",
        silent=True,
        n_samples_overall=300,
        importance_weighting_kwargs={"n_mc_samples": 50, "n_mc_samples_per_pass": 25},
    )
    assert table.shape[0] == model.adata.n_vars
    proba = table["proba_m1"] if mode == "vanilla" else table["proba_de"]
    assert proba.between(0, 1).all()
    assert table["comparison"].unique().tolist() == ["label_0 vs Rest"]


def test_importance_de_with_batch_correction(model):
    scvi_rs.settings.seed = 5
    table = model.differential_expression(
        idx1=[0, 1, 2],
        idx2=[3, 4, 5],
        weights="importance",
        batch_correction=True,
        silent=True,
        n_samples_overall=60,
        importance_weighting_kwargs={"n_mc_samples": 20, "n_mc_samples_per_pass": 20},
    )
    assert isinstance(table, pd.DataFrame)
    assert "comparison" not in table.columns


# -- feature correlation with modules returning the old output keys ---------------------------
def test_denoising_parameters_accept_the_old_output_keys():
    scale, theta = torch.rand(3, 4), torch.rand(4)
    assert _denoising_parameters({"px_scale": scale, "px_r": theta}) == (scale, theta)
    with pytest.raises(KeyError, match="neither 'px' nor 'px_scale'"):
        _denoising_parameters({"something": scale})


def test_feature_correlation_with_an_old_style_module(model, monkeypatch):
    module = model.module
    new_forward = module.forward

    def old_forward(*args, **kwargs):
        inference, generative = new_forward(*args, **kwargs)
        px = generative.pop("px")
        generative["px_scale"], generative["px_r"] = px.scale, px.theta
        return inference, generative

    monkeypatch.setattr(module, "forward", old_forward)
    corr = model.get_feature_correlation_matrix(n_samples=2, correlation_type="pearson")
    assert corr.shape == (model.adata.n_vars, model.adata.n_vars)
    np.testing.assert_allclose(np.diag(corr.to_numpy()), 1.0, rtol=1e-6)
