"""scvi_rs.model.SCVI: constructor, setup, summary and the RNASeqMixin queries."""

from __future__ import annotations

import inspect
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from scipy import sparse

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.model import SCVI
from scvi_rs.model._scvi import _init_library_size
from scvi_rs.model.base import (
    ArchesMixin,
    BaseMinifiedModeModelClass,
    BaseModelClass,
    DifferentialComputation,
    EmbeddingMixin,
    RNASeqMixin,
    UnsupervisedTrainingMixin,
    VAEMixin,
)
from scvi_rs.model.base._de import (
    _fdr_de_prediction,
    credible_intervals,
    estimate_delta,
    estimate_pseudocounts_offset,
)

SUMMARY = (
    "SCVI model with the following parameters: \n"
    "n_hidden: 128, n_latent: 10, n_layers: 1, dropout_rate: 0.1, dispersion: gene, "
    "gene_likelihood: zinb, latent_distribution: normal."
    "\nTraining status: Not Trained\nModel's adata is minified?: False"
)
VANILLA_COLUMNS = [
    "proba_m1",
    "proba_m2",
    "bayes_factor",
    "scale1",
    "scale2",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
]
CHANGE_COLUMNS = [
    "proba_de",
    "proba_not_de",
    "bayes_factor",
    "scale1",
    "scale2",
    "pseudocounts",
    "delta",
    "lfc_mean",
    "lfc_median",
    "lfc_std",
    "lfc_min",
    "lfc_max",
    "raw_mean1",
    "raw_mean2",
    "non_zeros_proportion1",
    "non_zeros_proportion2",
    "raw_normalized_mean1",
    "raw_normalized_mean2",
    "is_de_fdr_0.05",
]
COMPARISON_COLUMNS = ["comparison", "group1", "group2"]


def _setup(**setup_kwargs):
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid()
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels", **setup_kwargs)
    return adata


@pytest.fixture(scope="module")
def trained():
    """A small SCVI trained for two epochs on a 400 x 100 synthetic set."""
    adata = _setup()
    model = SCVI(adata, n_hidden=32, n_latent=5)
    model.train(max_epochs=2, enable_progress_bar=False)
    return model


@pytest.fixture(scope="module")
def trained_latent_library():
    """An SCVI with a learned library size and a per-batch dispersion."""
    adata = _setup()
    model = SCVI(adata, n_hidden=32, n_latent=5, use_observed_lib_size=False, gene_likelihood="nb")
    model.train(max_epochs=1, enable_progress_bar=False)
    return model


# -- constructor, setup and summary ------------------------------------------------------------
def test_signatures_and_defaults_match_the_reference():
    params = inspect.signature(SCVI.__init__).parameters
    assert list(params) == [
        "self",
        "adata",
        "registry",
        "n_hidden",
        "n_latent",
        "n_layers",
        "dropout_rate",
        "dispersion",
        "gene_likelihood",
        "use_observed_lib_size",
        "latent_distribution",
        "kwargs",
    ]
    defaults = {k: p.default for k, p in params.items() if p.default is not inspect._empty}
    assert defaults == {
        "adata": None,
        "registry": None,
        "n_hidden": 128,
        "n_latent": 10,
        "n_layers": 1,
        "dropout_rate": 0.1,
        "dispersion": "gene",
        "gene_likelihood": "zinb",
        "use_observed_lib_size": True,
        "latent_distribution": "normal",
    }
    setup = inspect.signature(SCVI.setup_anndata).parameters
    assert list(setup) == [
        "adata",
        "layer",
        "batch_key",
        "labels_key",
        "size_factor_key",
        "categorical_covariate_keys",
        "continuous_covariate_keys",
        "kwargs",
    ]
    assert all(p.default is None for k, p in setup.items() if k not in ("adata", "kwargs"))
    mro = [c for c in SCVI.__mro__ if c is not object]
    assert mro[1:8] == [
        EmbeddingMixin,
        RNASeqMixin,
        VAEMixin,
        ArchesMixin,
        UnsupervisedTrainingMixin,
        BaseMinifiedModeModelClass,
        BaseModelClass,
    ]
    assert SCVI._LATENT_QZM_KEY == "scvi_latent_qzm"
    assert SCVI._LATENT_QZV_KEY == "scvi_latent_qzv"


def test_summary_init_params_and_registered_fields(adata):
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    model = SCVI(adata)
    assert repr(model) == SUMMARY
    assert model.summary_string == SUMMARY
    assert model.init_params_ == {
        "kwargs": {"kwargs": {}},
        "non_kwargs": {
            "n_hidden": 128,
            "n_latent": 10,
            "n_layers": 1,
            "dropout_rate": 0.1,
            "dispersion": "gene",
            "gene_likelihood": "zinb",
            "use_observed_lib_size": True,
            "latent_distribution": "normal",
        },
    }
    registry = model.registry
    assert registry["model_name"] == "SCVI"
    assert registry["setup_method_name"] == "setup_anndata"
    assert list(registry["setup_args"]) == [
        "layer",
        "batch_key",
        "labels_key",
        "size_factor_key",
        "categorical_covariate_keys",
        "continuous_covariate_keys",
    ]
    assert list(registry["field_registries"]) == [
        REGISTRY_KEYS.X_KEY,
        REGISTRY_KEYS.BATCH_KEY,
        REGISTRY_KEYS.LABELS_KEY,
        REGISTRY_KEYS.SIZE_FACTOR_KEY,
        REGISTRY_KEYS.CAT_COVS_KEY,
        REGISTRY_KEYS.CONT_COVS_KEY,
    ]
    assert dict(model.summary_stats) == {
        "n_vars": 100,
        "n_cells": 400,
        "n_batch": 2,
        "n_labels": 3,
        "n_extra_categorical_covs": 0,
        "n_extra_continuous_covs": 0,
    }
    assert model.module.n_batch == 2 and model.module.use_observed_lib_size
    assert not hasattr(model.module, "library_log_means")
    # kwargs reach the VAE and are recorded
    other = SCVI(adata, n_latent=4, gene_likelihood="nb", encode_covariates=True)
    assert other.module.encode_covariates is True
    assert other.init_params_["kwargs"] == {"kwargs": {"encode_covariates": True}}
    assert "n_latent: 4" in repr(other) and "gene_likelihood: nb" in repr(other)


def test_library_priors_follow_the_reference(adata):
    adata.obs["batch"] = pd.Categorical(
        adata.obs["batch"].astype(str), categories=["batch_0", "batch_1", "batch_unused"]
    )
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, use_observed_lib_size=False)
    log_lib = np.log(np.asarray(adata.X.sum(axis=1), dtype=np.float64)).reshape(-1)
    codes = adata.obs["_scvi_batch"].to_numpy()
    means = model.module.library_log_means.numpy()
    variances = model.module.library_log_vars.numpy()
    assert means.shape == variances.shape == (1, model.summary_stats.n_batch)
    for code in (0, 1):
        np.testing.assert_allclose(means[0, code], log_lib[codes == code].mean(), rtol=1e-6)
        np.testing.assert_allclose(variances[0, code], log_lib[codes == code].var(), rtol=1e-5)
    # a category without cells keeps the placeholders
    assert model.summary_stats.n_batch == 3
    assert means[0, 2] == 0 and variances[0, 2] == 1

    # empty cells are masked (log counted as 0) with the reference's warning
    adata.X[0] = 0
    with pytest.warns(UserWarning, match="This dataset has some empty cells"):
        means2, _ = _init_library_size(model.adata_manager, model.summary_stats.n_batch)
    assert means2[0, codes[0]] < means[0, codes[0]]


def test_size_factor_key_disables_library_priors(adata):
    adata.obs["sf"] = np.asarray(adata.X.sum(axis=1)).reshape(-1) / 100.0
    SCVI.setup_anndata(adata, batch_key="batch", size_factor_key="sf")
    model = SCVI(adata, use_observed_lib_size=False)
    assert model.module.use_size_factor_key
    assert not hasattr(model.module, "library_log_means")


def test_model_without_data_warns_and_builds_lazily():
    with pytest.warns(UserWarning, match="Model was initialized without `adata`"):
        model = SCVI()
    assert model.module is None
    assert model.summary_string.startswith("SCVI model with the following parameters")


def test_registry_only_model_with_latent_library(trained_latent_library):
    model = SCVI(registry=trained_latent_library.registry, use_observed_lib_size=False)
    assert model.module.library_log_means.shape == (1, 2)


# -- get_normalized_expression -----------------------------------------------------------------
def test_normalized_expression_frame_and_library_sizes(trained):
    adata = trained.adata
    expr = trained.get_normalized_expression()
    assert isinstance(expr, pd.DataFrame)
    assert expr.shape == (400, 100)
    assert list(expr.index) == list(adata.obs_names)
    assert list(expr.columns) == list(adata.var_names)
    np.testing.assert_allclose(expr.sum(axis=1), 1.0, rtol=1e-5)

    scaled = trained.get_normalized_expression(library_size=1e4, return_numpy=True)
    assert isinstance(scaled, np.ndarray)
    np.testing.assert_allclose(scaled.sum(axis=1), 1e4, rtol=1e-4)

    latent = trained.get_normalized_expression(library_size="latent", return_numpy=True)
    totals = np.asarray(adata.X.sum(axis=1)).reshape(-1)
    np.testing.assert_allclose(latent.sum(axis=1), totals, rtol=1e-4)

    indices = [3, 1, 7]
    sub = trained.get_normalized_expression(indices=indices, gene_list=["gene_5", "gene_2"])
    assert list(sub.index) == list(adata.obs_names[indices])
    assert list(sub.columns) == ["gene_2", "gene_5"]  # var order, as the reference


def test_normalized_expression_samples_batches_and_seed(trained):
    scvi_rs.settings.seed = 3
    first = trained.get_normalized_expression(return_numpy=True)
    scvi_rs.settings.seed = 3
    again = trained.get_normalized_expression(return_numpy=True)
    np.testing.assert_array_equal(first, again)

    samples = trained.get_normalized_expression(n_samples=3, return_mean=False)
    assert isinstance(samples, np.ndarray) and samples.shape == (3, 400, 100)
    with pytest.warns(UserWarning, match="`return_numpy` must be `True`"):
        forced = trained.get_normalized_expression(
            n_samples=2, return_mean=False, return_numpy=False
        )
    assert forced.shape == (2, 400, 100)
    mean = trained.get_normalized_expression(n_samples=3)
    assert isinstance(mean, pd.DataFrame) and mean.shape == (400, 100)

    overall = trained.get_normalized_expression(n_samples_overall=50)
    assert isinstance(overall, np.ndarray) and overall.shape == (50, 100)
    frame = trained.get_normalized_expression(n_samples_overall=10, return_numpy=False)
    assert frame.shape == (10, 100) and list(frame.index) == list(range(10))

    one = trained.get_normalized_expression(transform_batch="batch_1", return_numpy=True)
    both = trained.get_normalized_expression(
        transform_batch=["batch_0", "batch_1"], return_numpy=True
    )
    assert one.shape == both.shape == (400, 100)
    np.testing.assert_allclose(both.sum(axis=1), 1.0, rtol=1e-5)

    loader = trained._make_data_loader(trained.adata, indices=np.arange(10))
    from_loader = trained.get_normalized_expression(dataloader=loader)
    assert isinstance(from_loader, np.ndarray) and from_loader.shape == (10, 100)


def test_normalized_expression_bad_inputs(trained):
    with pytest.raises(ValueError, match='"batch_9" not a valid batch category'):
        trained.get_normalized_expression(transform_batch="batch_9")
    # integer codes are not categories (the reference's behaviour)
    with pytest.raises(ValueError, match='"0" not a valid batch category'):
        trained.get_normalized_expression(transform_batch=0)
    with pytest.raises(ValueError, match="None of the provided genes"):
        trained.get_normalized_expression(gene_list=["not_a_gene"])
    with pytest.raises(NotImplementedError, match="averaged across batches"):
        trained.get_normalized_expression(
            weights="importance", transform_batch=["batch_0", "batch_1"]
        )
    with pytest.raises(ValueError, match="`weights`"):
        trained.get_normalized_expression(weights="bogus")
    with pytest.raises(ValueError, match="library_size"):
        trained.get_normalized_expression(library_size="bogus")
    with pytest.raises(ValueError, match="n_samples_overall"):
        trained.get_normalized_expression(n_samples=2, n_samples_overall=10)
    loader = trained._make_data_loader(trained.adata)
    with pytest.raises(ValueError, match="Only one of `adata` or `dataloader`"):
        trained.get_normalized_expression(adata=trained.adata, dataloader=loader)


# -- samples, likelihood parameters and library size -------------------------------------------
def test_posterior_predictive_sample(trained):
    one = trained.posterior_predictive_sample()
    assert sparse.issparse(one) and one.format == "csr" and one.shape == (400, 100)
    values = one.toarray()
    assert (values >= 0).all() and np.array_equal(values, np.round(values))

    many = trained.posterior_predictive_sample(n_samples=3, indices=np.arange(20))
    assert isinstance(many, np.ndarray) and many.shape == (20, 100, 3)

    genes = trained.posterior_predictive_sample(
        gene_list=["gene_0", "gene_9"], transform_batch=["batch_0", "batch_1"]
    )
    assert genes.shape == (400, 2)

    with pytest.raises(ValueError, match="None of the provided genes in ``gene_list``"):
        trained.posterior_predictive_sample(gene_list=["nope"])
    with pytest.raises(ValueError, match="not a valid batch category"):
        trained.posterior_predictive_sample(transform_batch="batch_7")


def test_likelihood_parameters_per_likelihood(trained, trained_latent_library):
    params = trained.get_likelihood_parameters()
    assert list(params) == ["mean", "dropout", "dispersions"]
    assert all(v.shape == (400, 100) for v in params.values())
    assert ((params["dropout"] >= 0) & (params["dropout"] <= 1)).all()
    theta = torch.exp(trained.module.px_r.detach()).numpy()
    np.testing.assert_allclose(params["dispersions"][5], theta, rtol=1e-5)

    sampled = trained.get_likelihood_parameters(n_samples=2, indices=np.arange(30))
    assert sampled["mean"].shape == (2, 30, 100)
    averaged = trained.get_likelihood_parameters(n_samples=2, give_mean=True, indices=[0, 1])
    assert all(v.shape == (2, 100) for v in averaged.values())

    nb = trained_latent_library.get_likelihood_parameters(indices=np.arange(10))
    assert list(nb) == ["mean", "dispersions"]

    adata = _setup()
    poisson = SCVI(adata, n_hidden=16, gene_likelihood="poisson")
    assert list(poisson.get_likelihood_parameters(indices=[0, 1])) == ["mean"]


def test_latent_library_size(trained, trained_latent_library):
    observed = trained.get_latent_library_size(give_mean=False)
    totals = np.asarray(trained.adata.X.sum(axis=1), dtype=np.float32).reshape(-1, 1)
    np.testing.assert_allclose(observed, totals, rtol=1e-5)
    with pytest.raises(RuntimeError, match="does not compute the posterior distribution"):
        trained.get_latent_library_size()

    latent = trained_latent_library.get_latent_library_size()
    assert latent.shape == (400, 1) and (latent > 0).all()

    untrained = SCVI(trained.adata, n_hidden=16)
    with pytest.raises(RuntimeError, match="untrained model"):
        untrained.get_latent_library_size(give_mean=False)


def test_feature_correlation_matrix(trained):
    corr = trained.get_feature_correlation_matrix(indices=np.arange(50), n_samples=2)
    assert corr.shape == (100, 100)
    np.testing.assert_allclose(np.diag(corr.to_numpy()), 1.0, rtol=1e-6)
    with pytest.raises(ValueError, match="Unknown correlation type"):
        trained.get_feature_correlation_matrix(correlation_type="kendall")


def test_batch_embedding_representation():
    adata = _setup()
    model = SCVI(adata, n_hidden=16, batch_representation="embedding")
    rep = model.get_batch_representation(indices=[0, 399])
    assert rep.shape == (2, 5)
    with pytest.raises(KeyError, match="Embedding batch not found"):
        SCVI(adata, n_hidden=16).get_batch_representation()


# -- differential expression -------------------------------------------------------------------
def _check_sorted(frame, key):
    for _, part in (
        frame.groupby("comparison", sort=False) if "comparison" in frame else [(None, frame)]
    ):
        values = part[key].to_numpy()
        assert (np.diff(values) <= 1e-12).all()


def test_de_vanilla_every_group_against_rest(trained):
    scvi_rs.settings.seed = 0
    de = trained.differential_expression(groupby="labels", silent=True)
    assert list(de.columns) == VANILLA_COLUMNS + COMPARISON_COLUMNS
    assert de.shape == (300, 14)
    assert list(pd.unique(de["comparison"])) == [
        "label_0 vs Rest",
        "label_1 vs Rest",
        "label_2 vs Rest",
    ]
    assert set(de["group2"]) == {"Rest"}
    _check_sorted(de, "bayes_factor")
    np.testing.assert_allclose(de["proba_m1"] + de["proba_m2"], 1.0)
    part = de[de["group1"] == "label_0"]
    assert set(part.index) == set(trained.adata.var_names)
    mask = (trained.adata.obs["labels"] == "label_0").to_numpy()
    raw = np.asarray(trained.adata.X[mask].mean(axis=0)).reshape(-1)
    np.testing.assert_allclose(part.loc[trained.adata.var_names, "raw_mean1"], raw)
    assert "_scvi_raw_norm_scaling" in trained.adata.obs

    scvi_rs.settings.seed = 0
    again = trained.differential_expression(groupby="labels", silent=True)
    pd.testing.assert_frame_equal(de, again)


def test_de_change_mode_and_options(trained):
    scvi_rs.settings.seed = 0
    de = trained.differential_expression(
        groupby="labels", group1="label_0", group2="label_1", mode="change", silent=True
    )
    assert list(de.columns) == CHANGE_COLUMNS + COMPARISON_COLUMNS
    assert de.shape[0] == 100
    assert set(de["comparison"]) == {"label_0 vs label_1"}
    _check_sorted(de, "proba_de")
    assert (de["delta"] == 0.25).all()
    assert de["is_de_fdr_0.05"].dtype == bool
    np.testing.assert_allclose(de["proba_de"] + de["proba_not_de"], 1.0)

    lean = trained.differential_expression(
        groupby="labels",
        group1=["label_2"],
        mode="change",
        delta=None,
        all_stats=False,
        batch_correction=True,
        fdr_target=0.1,
        silent=True,
        n_samples_overall=500,
        cred_interval_lvls=[0.5],
    )
    assert "raw_mean1" not in lean and "is_de_fdr_0.1" in lean
    assert "lfc_confidence_interval_0.5_min" in lean
    assert lean["delta"].iloc[0] >= 0.1

    permuted = trained.differential_expression(
        groupby="labels",
        group1="label_1",
        batch_correction=True,
        batchid1=["batch_0"],
        batchid2=["batch_1"],
        use_permutation=True,
        m_permutation=300,
        n_samples_overall=200,
        silent=True,
    )
    assert permuted.shape[0] == 100


def test_de_with_indices_and_outlier_filter(trained):
    obs = trained.adata.obs
    by_mask = trained.differential_expression(
        idx1=(obs["labels"] == "label_0").to_numpy(),
        idx2=np.flatnonzero(obs["labels"] == "label_1"),
        silent=True,
        n_samples_overall=300,
    )
    assert list(by_mask.columns) == VANILLA_COLUMNS
    by_query = trained.differential_expression(
        idx1="labels == 'label_0'", filter_outlier_cells=True, silent=True, n_samples_overall=300
    )
    assert by_query.shape == (100, len(VANILLA_COLUMNS))


def test_de_bad_inputs(trained):
    adata = trained.adata
    single = adata.copy()
    single.obs["one"] = "only"
    with pytest.raises(ValueError, match="Only a single group in the data"):
        trained.differential_expression(single, groupby="one", silent=True)
    with pytest.raises(ValueError, match="has no cells"):
        trained.differential_expression(groupby="labels", group1="label_9", silent=True)
    with pytest.raises(ValueError, match="One of idx1 or idx2 has size zero"):
        trained.differential_expression(idx1=np.zeros(adata.n_obs, dtype=bool), silent=True)
    with pytest.raises(ValueError, match="`groupby` or `idx1`"):
        trained.differential_expression(silent=True)
    with pytest.raises(KeyError, match="not_a_column"):
        trained.differential_expression(groupby="not_a_column", silent=True)
    with pytest.raises(ValueError, match="`mode`"):
        trained.differential_expression(groupby="labels", mode="bogus", silent=True)


def test_de_helpers():
    probas = pd.Series([0.99, 0.2, 0.97, 0.5], index=list("abcd"))
    called = _fdr_de_prediction(probas, fdr=0.05)
    assert list(called.index) == list("abcd")
    assert called.tolist() == [True, False, True, False]

    rng = np.random.default_rng(0)
    effects = np.concatenate(
        [rng.normal(-2, 0.1, 50), rng.normal(0, 0.1, 300), rng.normal(2, 0.1, 50)]
    )
    assert estimate_delta(effects) == pytest.approx(0.6 * 2, rel=0.1)
    assert estimate_delta(np.zeros(10)) == pytest.approx(0.1)

    scales = rng.uniform(0, 1e-3, size=(20, 4))
    zero = np.array([True, False, False, False])
    offset = estimate_pseudocounts_offset(scales, scales, zero, zero)
    assert offset == pytest.approx(scales[:, 0].max() / 4)
    with pytest.raises(ValueError, match="Dimension mismatch"):
        estimate_pseudocounts_offset(scales, scales, zero[:2], zero)

    interval = credible_intervals(np.arange(100.0), confidence_level=0.5)
    assert interval[1] - interval[0] == 50
    assert DifferentialComputation.__name__ == "DifferentialComputation"


def test_warning_free_default_queries(trained):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        trained.get_normalized_expression(indices=[0, 1])
        trained.get_likelihood_parameters(indices=[0, 1])
