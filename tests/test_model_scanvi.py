"""SCANVI and the semi-supervised framework: behaviour, file layout and bad input."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import scvi_rs as scvi
from scvi_rs import REGISTRY_KEYS
from scvi_rs.dataloaders import (
    ConcatDataLoader,
    SemiSupervisedDataLoader,
    SemiSupervisedDataSplitter,
)
from scvi_rs.model import SCANVI, SCVI
from scvi_rs.module import SCANVAE, Classifier
from scvi_rs.train import SemiSupervisedTrainingPlan, SemiSupervisedTrainingPlanConfig
from scvi_rs.train._semisupervised_trainingplan import (
    multiclass_accuracy,
    multiclass_calibration_error,
    multiclass_f1_score,
)

UNLABELED = "label_0"


@pytest.fixture
def adata():
    data = scvi.data.synthetic_iid(batch_size=60, n_genes=40, n_labels=3)
    SCANVI.setup_anndata(data, "labels", UNLABELED, batch_key="batch")
    return data


@pytest.fixture
def trained(adata):
    model = SCANVI(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, check_val_every_n_epoch=1, enable_progress_bar=False)
    return model


# -- module -------------------------------------------------------------------------------
def test_scanvae_state_dict_has_the_reference_layout():
    module = SCANVAE(n_input=30, n_batch=2, n_labels=3, n_hidden=8, n_latent=4)
    keys = set(module.state_dict())
    expected = {
        "y_prior",
        "px_r",
        "classifier.classifier.0.fc_layers.Layer 0.0.weight",
        "classifier.classifier.1.weight",
        "encoder_z2_z1.encoder.fc_layers.Layer 0.0.weight",
        "encoder_z2_z1.mean_encoder.weight",
        "encoder_z2_z1.var_encoder.bias",
        "decoder_z1_z2.decoder.fc_layers.Layer 0.0.weight",
        "decoder_z1_z2.mean_decoder.weight",
        "decoder_z1_z2.var_decoder.bias",
        "z_encoder.mean_encoder.weight",
        "decoder.px_scale_decoder.0.weight",
    }
    assert expected <= keys
    # z1 and the one-hot label feed the second-level encoder
    assert module.state_dict()["encoder_z2_z1.encoder.fc_layers.Layer 0.0.weight"].shape == (8, 7)
    assert torch.allclose(module.y_prior, torch.full((1, 3), 1 / 3))


@pytest.mark.parametrize("n_samples", [1, 3])
def test_scanvae_loss_with_labelled_cells(n_samples):
    module = SCANVAE(n_input=20, n_batch=2, n_labels=3, n_hidden=8, n_latent=4)
    tensors = {
        REGISTRY_KEYS.X_KEY: torch.randint(0, 20, (16, 20)).float(),
        REGISTRY_KEYS.BATCH_KEY: torch.randint(0, 2, (16, 1)),
        REGISTRY_KEYS.LABELS_KEY: torch.randint(0, 3, (16, 1)),
    }
    _, _, out = module(
        tensors,
        inference_kwargs={"n_samples": n_samples},
        loss_kwargs={"labelled_tensors": tensors, "classification_ratio": 10.0},
    )
    assert out.loss.dim() == 0 and torch.isfinite(out.loss)
    assert out.logits.shape == (16, 3)
    assert out.classification_loss.dim() == 0


def test_linear_classifier_is_one_linear_layer():
    clf = Classifier(5, n_hidden=0, n_labels=3, n_layers=0, logits=True)
    assert len(clf.classifier) == 1 and isinstance(clf.classifier[0], torch.nn.Linear)
    probs = Classifier(5, n_labels=3, logits=False)(torch.randn(4, 5))
    assert torch.allclose(probs.sum(-1), torch.ones(4))


# -- metrics ------------------------------------------------------------------------------
def test_classification_metrics_by_hand():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 3.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    target = torch.tensor([0, 1, 0, 2])
    predicted = logits.argmax(-1)
    assert multiclass_accuracy(predicted, target).item() == pytest.approx(0.5)
    assert multiclass_f1_score(predicted, target).item() == pytest.approx(0.5)

    probs = logits.softmax(-1)
    confidence, pred = probs.max(-1)
    correct = (pred == target).float()
    bins = np.clip(np.floor(confidence.numpy() * 15).astype(int), 0, 15)
    expected = 0.0
    for b in np.unique(bins):
        sel = bins == b
        expected += abs(correct.numpy()[sel].mean() - confidence.numpy()[sel].mean()) * sel.mean()
    assert multiclass_calibration_error(logits, target).item() == pytest.approx(expected, abs=1e-6)


# -- data ---------------------------------------------------------------------------------
def test_splitter_splits_labelled_and_unlabelled_cells_separately(adata):
    scvi.settings.seed = 3
    splitter = SemiSupervisedDataSplitter(
        SCANVI._get_most_recent_anndata_manager(adata), train_size=0.5, validation_size=0.25
    )
    splitter.setup()
    labels = adata.obs["labels"].to_numpy()
    labelled = np.flatnonzero(labels != UNLABELED)
    unlabelled = np.flatnonzero(labels == UNLABELED)
    n_lab_train = int(np.ceil(0.5 * len(labelled)))
    n_lab_val = int(np.floor(0.25 * len(labelled)))
    perm = np.random.RandomState(3).permutation(len(labelled))
    expected_train = labelled[perm][n_lab_val : n_lab_val + n_lab_train]
    np.testing.assert_array_equal(splitter.train_idx[:n_lab_train], expected_train)
    assert np.isin(splitter.train_idx[n_lab_train:], unlabelled).all()
    all_sets = np.concatenate([splitter.train_idx, splitter.val_idx, splitter.test_idx])
    np.testing.assert_array_equal(np.sort(all_sets), np.arange(adata.n_obs))
    assert isinstance(splitter.train_dataloader(), SemiSupervisedDataLoader)


def test_splitter_external_indexing_is_intersected_with_each_group(adata):
    manager = SCANVI._get_most_recent_anndata_manager(adata)
    order = np.random.RandomState(0).permutation(adata.n_obs)
    train, valid = order[:80], order[80:]
    splitter = SemiSupervisedDataSplitter(manager, external_indexing=[train, valid])
    splitter.setup()
    np.testing.assert_array_equal(np.sort(splitter.train_idx), np.sort(train))
    np.testing.assert_array_equal(np.sort(splitter.val_idx), np.sort(valid))
    with pytest.raises(IndexError):
        SemiSupervisedDataSplitter(manager, external_indexing=[order, np.array([10_000])])


def test_semisupervised_loader_subsamples_each_label(adata):
    manager = SCANVI._get_most_recent_anndata_manager(adata)
    np.random.seed(0)  # noqa: NPY002 (the loader draws from the global generator)
    loader = SemiSupervisedDataLoader(manager, n_samples_per_label=5, batch_size=200)
    assert isinstance(loader, ConcatDataLoader)
    full, labelled = next(iter(loader))
    assert full[REGISTRY_KEYS.X_KEY].shape[0] == adata.n_obs
    _, counts = np.unique(labelled[REGISTRY_KEYS.LABELS_KEY].numpy(), return_counts=True)
    assert (counts == 5).all() and len(counts) == 2
    first = set(loader.dataloaders[1].indices.tolist())
    loader.resample_labels()
    assert set(loader.dataloaders[1].indices.tolist()) != first
    with pytest.raises(ValueError, match="n_samples_per_label"):
        SemiSupervisedDataLoader(manager, n_samples_per_label=0)


def test_concat_loader_cycles_the_smaller_index_set(adata):
    manager = SCANVI._get_most_recent_anndata_manager(adata)
    loader = ConcatDataLoader(manager, [np.arange(100), np.arange(10)], batch_size=20)
    batches = list(loader)
    assert len(batches) == len(loader) == 5
    assert all(b[1][REGISTRY_KEYS.X_KEY].shape[0] == 10 for b in batches)


# -- model --------------------------------------------------------------------------------
def test_train_logs_the_reference_history_keys(trained):
    for mode in ("train", "validation"):
        for metric in ("classification_loss", "accuracy", "f1_score", "calibration_error"):
            assert f"{mode}_{metric}" in trained.history
    assert "elbo_validation" in trained.history and "elbo_train" in trained.history
    assert trained.n_labels == 2
    assert trained.module.classifier.classifier[-1].out_features == 2


def test_predict_hard_and_soft(trained, adata):
    hard = trained.predict()
    assert hard.shape == (adata.n_obs,)
    assert set(hard) <= {"label_1", "label_2"}
    soft = trained.predict(indices=[0, 3, 5], soft=True)
    assert isinstance(soft, pd.DataFrame)
    mapping = list(trained._label_mapping)
    assert mapping[-1] == UNLABELED  # the unlabelled category is registered last
    assert list(soft.columns) == mapping[:2]
    assert list(soft.index) == list(adata.obs_names[[0, 3, 5]])
    np.testing.assert_allclose(soft.to_numpy().sum(1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(
        soft.to_numpy().argmax(1), pd.Index(mapping[:2]).get_indexer(hard[[0, 3, 5]])
    )
    np.testing.assert_array_equal(trained.predict(), hard)  # posterior mean: deterministic
    assert trained.predict(indices=[]) == []


def test_latent_and_expression_queries(trained, adata):
    assert trained.get_latent_representation().shape == (adata.n_obs, 4)
    assert trained.get_normalized_expression().shape == adata.shape
    de = trained.differential_expression(groupby="labels", group1="label_1")
    assert isinstance(de, pd.DataFrame) and len(de) == adata.n_vars


def test_save_and_load_round_trip(trained, adata, tmp_path):
    path = os.fspath(tmp_path / "scanvi")
    before = trained.predict(soft=True)
    trained.save(path, save_anndata=True)
    loaded = SCANVI.load(path)
    pd.testing.assert_frame_equal(loaded.predict(soft=True), before, check_exact=False)
    assert loaded.unlabeled_category_ == UNLABELED
    loaded = SCANVI.load(path, adata=adata)
    assert loaded.is_trained
    with pytest.raises(ValueError):
        SCANVI.load(path, adata=scvi.data.synthetic_iid(n_genes=20))


def test_pre_1_1_files_get_a_softmax_classifier(trained, tmp_path):
    path = os.fspath(tmp_path / "old")
    trained.save(path, save_anndata=True)
    content = torch.load(os.path.join(path, "model.pt"), weights_only=False)
    content["attr_dict"]["registry_"]["scvi_version"] = "1.0.3"
    torch.save(content, os.path.join(path, "model.pt"))
    old = SCANVI.load(path)
    assert not old.module.classifier.logits
    assert isinstance(old.module.classifier.classifier[-1], torch.nn.Softmax)
    np.testing.assert_allclose(old.predict(soft=True).to_numpy().sum(1), 1.0, rtol=1e-5)


def test_from_scvi_model_copies_the_weights():
    data = scvi.data.synthetic_iid(batch_size=50, n_genes=30)
    SCVI.setup_anndata(data, batch_key="batch")
    scvi_model = SCVI(data, n_latent=4, n_hidden=16)
    scvi_model.train(1, enable_progress_bar=False)
    model = SCANVI.from_scvi_model(scvi_model, UNLABELED, labels_key="labels")
    assert model.was_pretrained
    for key, value in scvi_model.module.state_dict().items():
        assert torch.equal(model.module.state_dict()[key], value), key
    assert model.module.state_dict()["px_r"] is not scvi_model.module.state_dict()["px_r"]
    model.train(1, enable_progress_bar=False)
    assert model.predict().shape == (data.n_obs,)


def test_query_mapping_with_all_labels_missing(trained, tmp_path):
    path = os.fspath(tmp_path / "ref")
    trained.save(path)
    query = scvi.data.synthetic_iid(batch_size=30, n_genes=40, n_labels=3)
    query.obs["batch"] = query.obs.batch.cat.rename_categories(["batch_2", "batch_3"])
    del query.obs["labels"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        model = SCANVI.load_query_data(query, path)
    assert len(model._labeled_indices) == 0
    model.train(1, enable_progress_bar=False)
    assert model.predict().shape == (query.n_obs,)


def test_semisupervised_plan_defaults_and_config(trained):
    plan = SemiSupervisedTrainingPlan(trained.module, 2)
    assert plan.loss_kwargs["classification_ratio"] == 50
    assert plan.n_classes == 2
    config = SemiSupervisedTrainingPlanConfig(classification_ratio=5, loss_kwargs={"eps": 0.1})
    plan = SemiSupervisedTrainingPlan(trained.module, 2, **config.to_kwargs())
    assert plan.loss_kwargs["classification_ratio"] == 5 and plan.eps == 0.1
    trained.train(1, plan_config=config, enable_progress_bar=False)


# -- bad input ----------------------------------------------------------------------------
def test_setup_without_labels_key_is_an_error():
    data = scvi.data.synthetic_iid(batch_size=10, n_genes=10)
    with pytest.raises(ValueError, match="labels_key"):
        SCANVI.setup_anndata(data, None, "unknown")
    with pytest.raises(KeyError, match="not_a_column"):
        SCANVI.setup_anndata(data, "not_a_column", "unknown")


def test_unlabeled_category_absent_means_every_cell_is_labelled():
    data = scvi.data.synthetic_iid(batch_size=20, n_genes=10, n_labels=3)
    SCANVI.setup_anndata(data, "labels", "not_a_label")
    model = SCANVI(data, n_hidden=8, n_latent=2)
    assert len(model._unlabeled_indices) == 0 and model.n_labels == 3


def test_from_scvi_model_rejects_other_genes_batches_or_no_labels():
    data = scvi.data.synthetic_iid(batch_size=20, n_genes=30)
    SCVI.setup_anndata(data, batch_key="batch")
    scvi_model = SCVI(data, n_latent=4, n_hidden=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with pytest.raises(ValueError, match="labels_key"):
            SCANVI.from_scvi_model(scvi_model, UNLABELED)
        with pytest.raises(ValueError, match="vars"):
            SCANVI.from_scvi_model(
                scvi_model,
                UNLABELED,
                labels_key="labels",
                adata=scvi.data.synthetic_iid(batch_size=20, n_genes=12),
            )
        other = scvi.data.synthetic_iid(batch_size=20, n_genes=30)
        other.obs["batch"] = other.obs.batch.cat.rename_categories(["x", "y"])
        with pytest.raises(ValueError, match="Category x"):
            SCANVI.from_scvi_model(scvi_model, UNLABELED, labels_key="labels", adata=other)


def test_predict_on_other_genes_is_an_error(trained):
    with pytest.raises(ValueError, match="vars"):
        trained.predict(scvi.data.synthetic_iid(batch_size=10, n_genes=12))


# -- parity with scvi-tools (runs where scvi-tools is installed) -------------------------
def test_scanvae_loss_equals_the_reference_loss():
    reference = pytest.importorskip("scvi")
    torch.manual_seed(0)
    ref = reference.module.SCANVAE(n_input=30, n_batch=3, n_labels=4, n_hidden=16, n_latent=5)
    ours = SCANVAE(n_input=30, n_batch=3, n_labels=4, n_hidden=16, n_latent=5)
    ours.load_state_dict(ref.state_dict())
    ref.eval()
    ours.eval()
    tensors = {
        REGISTRY_KEYS.X_KEY: torch.randint(0, 30, (32, 30)).float(),
        REGISTRY_KEYS.BATCH_KEY: torch.randint(0, 3, (32, 1)),
        REGISTRY_KEYS.LABELS_KEY: torch.randint(0, 4, (32, 1)),
    }
    loss_kwargs = {"labelled_tensors": tensors, "classification_ratio": 50.0, "kl_weight": 0.5}
    losses = []
    for module in (ref, ours):
        torch.manual_seed(1)
        losses.append(module(tensors, loss_kwargs=loss_kwargs)[2])
    assert losses[0].loss.item() == pytest.approx(losses[1].loss.item(), rel=1e-6)
    torch.testing.assert_close(losses[0].logits, losses[1].logits)


def test_splitter_sets_equal_the_reference_sets():
    reference = pytest.importorskip("scvi")
    sets = []
    for lib in (reference, scvi):
        lib.settings.seed = 7
        data = lib.data.synthetic_iid(batch_size=37, n_genes=10)
        data.obs["labels"] = data.obs["labels"].astype(str)
        data.obs.loc[data.obs.index[::3], "labels"] = "Unknown"
        lib.model.SCANVI.setup_anndata(data, "labels", "Unknown", batch_key="batch")
        manager = lib.model.SCANVI._get_most_recent_anndata_manager(data)
        splitter = lib.dataloaders.SemiSupervisedDataSplitter(
            manager, train_size=0.5, validation_size=0.3
        )
        splitter.setup()
        sets.append((splitter.train_idx, splitter.val_idx, splitter.test_idx))
    for ref_set, our_set in zip(*sets, strict=True):
        np.testing.assert_array_equal(ref_set, our_set)
