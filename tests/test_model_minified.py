"""Minified models: the stored layout, queries from stored posteriors, refusals, save/load."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.data import synthetic_iid
from scvi_rs.data._constants import _ADATA_MINIFY_TYPE_UNS_KEY, ADATA_MINIFY_TYPE
from scvi_rs.data._utils import _is_minified
from scvi_rs.model import SCVI


def _trained(layer: str | None = None, **model_kwargs):
    adata = synthetic_iid(batch_size=40, n_genes=30)
    counts = adata.X.copy()
    if layer is not None:
        adata.layers[layer] = counts
        adata.X = np.zeros_like(counts)
    SCVI.setup_anndata(adata, layer=layer, batch_key="batch", labels_key="labels")
    model = SCVI(adata, n_latent=3, n_hidden=16, **model_kwargs)
    model.train(1, train_size=0.5, batch_size=40)
    qzm, qzv = model.get_latent_representation(give_mean=False, return_dist=True)
    adata.obsm["X_latent_qzm"], adata.obsm["X_latent_qzv"] = qzm, qzv
    return model, adata, counts


@pytest.mark.parametrize("layer", [None, "counts"])
def test_minified_layout(layer):
    model, adata, counts = _trained(layer)
    model.minify_adata()
    mini = model.adata
    assert mini is not adata and not _is_minified(adata)
    assert mini.uns[_ADATA_MINIFY_TYPE_UNS_KEY] == ADATA_MINIFY_TYPE.LATENT_POSTERIOR
    assert sp.issparse(mini.X) and mini.X.nnz == 0
    assert all(mini.layers[key].nnz == 0 for key in mini.layers)
    np.testing.assert_array_equal(mini.obsm["scvi_latent_qzm"], adata.obsm["X_latent_qzm"])
    np.testing.assert_array_equal(mini.obsm["scvi_latent_qzv"], adata.obsm["X_latent_qzv"])
    np.testing.assert_array_equal(mini.obs["observed_lib_size"], counts.sum(axis=1))
    registered = model.adata_manager.data_registry
    for key in (
        REGISTRY_KEYS.LATENT_QZM_KEY,
        REGISTRY_KEYS.LATENT_QZV_KEY,
        REGISTRY_KEYS.OBSERVED_LIB_SIZE,
        REGISTRY_KEYS.MINIFY_TYPE_KEY,
    ):
        assert key in registered
    assert model.minified_data_type == ADATA_MINIFY_TYPE.LATENT_POSTERIOR
    assert model.module.minified_data_type == ADATA_MINIFY_TYPE.LATENT_POSTERIOR
    assert model.adata_manager.registry is model.registry_
    assert "minified?: True" in model.summary_string


def test_queries_come_from_the_stored_posterior():
    model, adata, _ = _trained()
    latent = model.get_latent_representation()
    model.minify_adata()
    # the posterior mean is stored, so the latent representation is unchanged
    np.testing.assert_allclose(model.get_latent_representation(), latent, rtol=1e-6)
    expression = model.get_normalized_expression()
    assert expression.shape == adata.shape
    assert np.isfinite(np.asarray(expression)).all()


def test_counts_needed_queries_and_training_are_refused():
    model, _, _ = _trained()
    model.minify_adata()
    with pytest.raises(ValueError, match=r"VAEMixin\.get_elbo .*minified data"):
        model.get_elbo()
    with pytest.raises(ValueError, match=r"VAE\.loss .*minified data"):
        model.train(1)


def test_keeping_counts_serves_count_queries_and_training():
    model, _, _ = _trained()
    elbo = float(model.get_elbo())
    model.minify_adata(minified_data_type=ADATA_MINIFY_TYPE.LATENT_POSTERIOR_WITH_COUNTS)
    assert np.count_nonzero(model.adata.X) > 0
    np.testing.assert_allclose(float(model.get_elbo()), elbo, rtol=0.05)
    model.train(1, train_size=0.5, batch_size=40)


def test_bad_minification_requests():
    model, _, _ = _trained()
    with pytest.raises(NotImplementedError, match="not supported"):
        model.minify_adata(minified_data_type="counts_only")
    with pytest.raises(KeyError, match="missing_key"):
        model.minify_adata(use_latent_qzm_key="missing_key")
    learned, _, _ = _trained(use_observed_lib_size=False)
    with pytest.raises(ValueError, match="observed library size"):
        learned.minify_adata()


def test_minified_model_saves_and_loads(tmp_path):
    model, _, _ = _trained()
    model.minify_adata()
    model.save(tmp_path / "mini", save_anndata=True)
    loaded = SCVI.load(tmp_path / "mini")
    assert loaded.minified_data_type == ADATA_MINIFY_TYPE.LATENT_POSTERIOR
    assert loaded.module.minified_data_type == ADATA_MINIFY_TYPE.LATENT_POSTERIOR
    np.testing.assert_allclose(
        loaded.get_latent_representation(), model.get_latent_representation(), rtol=1e-6
    )


def test_non_minified_model_refuses_minified_data(tmp_path):
    model, _, _ = _trained()
    model.save(tmp_path / "full")
    model.minify_adata()
    with pytest.raises(ValueError, match="non-minified model with minified adata"):
        SCVI.load(tmp_path / "full", adata=model.adata)


def test_scanvi_setup_registers_minified_fields():
    model, _, _ = _trained()
    model.minify_adata()
    mini = model.adata.copy()
    # each model class reads the posterior under its own obsm keys
    for stat in ("qzm", "qzv"):
        mini.obsm[f"scanvi_latent_{stat}"] = mini.obsm[f"scvi_latent_{stat}"]
    scvi_rs.model.SCANVI.setup_anndata(mini, labels_key="labels", unlabeled_category="unknown")
    manager = scvi_rs.model.SCANVI._get_most_recent_anndata_manager(mini, required=True)
    assert REGISTRY_KEYS.MINIFY_TYPE_KEY in manager.data_registry


def test_model_class_without_minified_mode_refuses_minified_data():
    from scvi_rs.model.base import BaseModelClass

    class PlainModel(BaseModelClass):
        def train(self):
            raise NotImplementedError

        @classmethod
        def setup_anndata(cls, adata):
            raise NotImplementedError

    model, _, _ = _trained()
    model.minify_adata()
    with pytest.raises(NotImplementedError, match="PlainModel model currently does not support"):
        PlainModel(model.adata)
