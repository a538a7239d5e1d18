"""The model layer: BaseModelClass, training, queries and save/load (tutorial-style models)."""

from __future__ import annotations

import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from anndata import AnnData

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.data import AnnDataManager
from scvi_rs.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from scvi_rs.model.base import BaseModelClass, UnsupervisedTrainingMixin, VAEMixin
from scvi_rs.module import VAE
from scvi_rs.train import Callback


class TutorialModel(VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """The tutorial's SCVI, under another name so stores do not mix with scvi_rs.model.SCVI."""

    def __init__(self, adata: AnnData, n_latent: int = 10, **model_kwargs):
        super().__init__(adata)
        self.module = VAE(
            n_input=self.summary_stats["n_vars"],
            n_batch=self.summary_stats["n_batch"],
            n_latent=n_latent,
            **model_kwargs,
        )
        self._model_summary_string = (
            f"SCVI Model with the following params: \nn_latent: {n_latent}"
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(cls, adata: AnnData, batch_key=None, layer=None, **kwargs):
        setup_method_args = cls._get_setup_method_args(**locals())
        fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, None, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, None),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, None),
        ]
        manager = AnnDataManager(fields=fields, setup_method_args=setup_method_args)
        manager.register_fields(adata, **kwargs)
        cls.register_manager(manager)


@pytest.fixture
def model(adata):
    TutorialModel.setup_anndata(adata, batch_key="batch")
    return TutorialModel(adata, n_latent=5)


@pytest.fixture
def trained(model):
    model.train(max_epochs=2, check_val_every_n_epoch=1, enable_progress_bar=False)
    return model


def test_init_params_setup_args_and_repr(model):
    assert model.init_params_ == {"kwargs": {"model_kwargs": {}}, "non_kwargs": {"n_latent": 5}}
    assert model.registry["setup_args"] == {"batch_key": "batch", "layer": None}
    assert model.registry["model_name"] == "TutorialModel"
    assert model.registry["setup_method_name"] == "setup_anndata"
    expected = "SCVI Model with the following params: \nn_latent: 5\nTraining status: Not Trained"
    assert repr(model) == expected
    assert model.summary_string == expected
    assert model.is_trained_ is False and model.history is None
    assert model.summary_stats["n_batch"] == 2


def test_abstract_train_is_enforced(adata):
    class NoTrain(BaseModelClass):
        @classmethod
        def setup_anndata(cls, adata):
            pass

    with pytest.raises(TypeError, match="abstract"):
        NoTrain(adata)


def test_untrained_queries_and_missing_setup(adata):
    with pytest.raises(ValueError, match="setup_anndata first"):
        TutorialModel(adata)
    TutorialModel.setup_anndata(adata)
    model = TutorialModel(adata)
    with pytest.raises(RuntimeError, match="train the model first"):
        model.get_latent_representation()


def test_train_history_split_and_indices(trained):
    history = trained.history
    assert list(history) == [
        "validation_loss",
        "elbo_validation",
        "reconstruction_loss_validation",
        "kl_local_validation",
        "kl_global_validation",
        "train_loss",
        "elbo_train",
        "reconstruction_loss_train",
        "kl_local_train",
        "kl_global_train",
    ]
    for key, frame in history.items():
        assert frame.shape == (2, 1) and frame.index.name == "epoch"
        assert list(frame.columns) == [key]
        assert np.isfinite(frame[key]).all()
    assert len(trained.train_indices) == 360
    assert len(trained.validation_indices) == 40
    assert len(trained.test_indices) == 0
    assert set(trained.train_indices).isdisjoint(trained.validation_indices)
    assert trained.is_trained_ is True
    assert repr(trained).endswith("Training status: Trained")
    # ELBO is per cell: reconstruction + local KL for this module (no global KL)
    elbo = history["elbo_train"]["elbo_train"]
    parts = (
        history["reconstruction_loss_train"]["reconstruction_loss_train"]
        + history["kl_local_train"]["kl_local_train"]
    )
    assert np.allclose(elbo, parts, rtol=1e-6)


def test_same_seed_gives_same_split(adata):
    TutorialModel.setup_anndata(adata, batch_key="batch")
    splits = []
    for _ in range(2):
        scvi_rs.settings.seed = 3
        model = TutorialModel(adata)
        model.train(max_epochs=1, enable_progress_bar=False)
        splits.append(model.validation_indices)
    np.testing.assert_array_equal(splits[0], splits[1])
    expected_val = np.random.RandomState(3).permutation(400)[:40]
    np.testing.assert_array_equal(np.sort(splits[0]), np.sort(expected_val))


def test_second_train_call_continues_history(trained):
    trained.train(max_epochs=3, enable_progress_bar=False)
    frame = trained.history["elbo_train"]
    assert frame.index.tolist() == [0, 1, 2, 3, 4]
    # validation did not run in the second call: its frames keep their two epochs
    assert trained.history["elbo_validation"].shape == (2, 1)


def test_kl_warmup_values_are_logged(model):
    model.train(max_epochs=12, batch_size=32, enable_progress_bar=False)
    kl = model.history["kl_weight"]["kl_weight"]
    assert kl.iloc[-3:].tolist() == pytest.approx([0.0225, 0.025, 0.0275])


def test_early_stopping_actually_stops(model):
    model.train(
        max_epochs=50,
        early_stopping=True,
        early_stopping_patience=2,
        early_stopping_min_delta=1e6,
        enable_progress_bar=False,
    )
    # no improvement can exceed min_delta: stop after the first check + patience checks
    assert len(model.history["elbo_train"]) == 3
    assert len(model.history["elbo_validation"]) == 3


def test_early_stopping_needs_a_validation_set(model):
    with pytest.raises(ValueError, match="no validation set"):
        model.train(max_epochs=1, train_size=1.0, early_stopping=True)


def test_invalid_split_sizes(model):
    with pytest.raises(ValueError):
        model.train(max_epochs=1, validation_size=0.2)


def test_external_indexing_and_callbacks_and_clipping(model):
    calls = []

    class Recorder(Callback):
        def on_train_epoch_end(self, trainer, pl_module):
            calls.append(trainer.current_epoch)

    train_idx = np.arange(0, 300)
    val_idx = np.arange(300, 350)
    test_idx = np.arange(350, 400)  # the three sets must cover every cell
    model.train(
        max_epochs=2,
        datasplitter_kwargs={"external_indexing": [train_idx, val_idx, test_idx]},
        callbacks=[Recorder()],
        gradient_clip_val=1.0,
        enable_progress_bar=False,
    )
    assert calls == [0, 1]
    np.testing.assert_array_equal(np.sort(model.train_indices), train_idx)
    np.testing.assert_array_equal(np.sort(model.validation_indices), val_idx)
    np.testing.assert_array_equal(np.sort(model.test_indices), test_idx)


def test_plan_kwargs_reach_the_optimizer(model):
    model.train(
        max_epochs=1, plan_kwargs={"lr": 0.01, "weight_decay": 0.0}, enable_progress_bar=False
    )
    optimizer = model.trainer.optimizers[0]
    assert optimizer.param_groups[0]["lr"] == 0.01
    with pytest.raises(ValueError, match="Optimizer not understood"):
        model.train(max_epochs=1, plan_kwargs={"optimizer": "SGD"}, enable_progress_bar=False)


def test_vae_mixin_queries(trained, adata):
    latent = trained.get_latent_representation()
    assert latent.shape == (400, 5) and latent.dtype == np.float32
    subset = trained.get_latent_representation(indices=np.arange(10), batch_size=4)
    np.testing.assert_allclose(subset, latent[:10], rtol=1e-5, atol=1e-6)
    means, variances = trained.get_latent_representation(return_dist=True)
    np.testing.assert_allclose(means, latent, rtol=1e-5, atol=1e-6)
    assert (variances > 0).all()
    sample = trained.get_latent_representation(give_mean=False)
    assert sample.shape == latent.shape and not np.allclose(sample, latent)

    # z is sampled, so the two calls agree only when they draw the same noise
    torch.manual_seed(1)
    elbo = trained.get_elbo()
    assert isinstance(elbo, torch.Tensor) and elbo.ndim == 0 and elbo < 0
    torch.manual_seed(1)
    per_cell = trained.get_elbo(return_mean=False)
    assert per_cell.shape == (400,)
    assert float(per_cell.mean()) == pytest.approx(float(elbo), rel=1e-5)
    recon = trained.get_reconstruction_error()
    assert list(recon) == ["reconstruction_loss"]
    assert recon["reconstruction_loss"].ndim == 0 and recon["reconstruction_loss"] > 0
    # -ELBO = reconstruction + local KL >= reconstruction
    assert -elbo >= recon["reconstruction_loss"]
    marginal = trained.get_marginal_ll(n_mc_samples=5)
    assert isinstance(marginal, np.float64) and np.isfinite(marginal)


def test_seed_style_custom_query(trained):
    loader = trained._make_dataloader(adata=trained.adata, indices=None, batch_size=64)
    latent = []
    with torch.inference_mode():
        for tensors in loader:
            outputs = trained.module.inference(**trained.module._get_inference_input(tensors))
            latent.append(outputs["qz_m"].cpu())
    np.testing.assert_allclose(
        torch.cat(latent).numpy(), trained.get_latent_representation(), rtol=1e-5, atol=1e-6
    )


def test_validate_anndata_transfers_and_replays(trained, adata, caplog):
    other = scvi_rs.data.synthetic_iid()
    with caplog.at_level(logging.INFO, logger="scvi_rs"):
        trained._validate_anndata(other)
    assert "attempting to transfer AnnData setup" in caplog.text
    store = TutorialModel._per_instance_manager_store[trained.id]
    assert other.uns["_scvi_uuid"] in store
    assert trained.get_latent_representation(other).shape == (400, 5)

    # a second setup without batch rewrites the codes; validating replays the model's own
    TutorialModel.setup_anndata(adata, batch_key=None)
    assert (adata.obs["_scvi_batch"] == 0).all()
    trained._validate_anndata(adata)
    assert adata.uns["_scvi_manager_uuid"] == trained.adata_manager.id
    assert set(adata.obs["_scvi_batch"]) == {0, 1}
    assert adata.obs["_scvi_batch"].dtype == np.int8


def test_new_category_in_query_is_a_clear_error(trained):
    other = scvi_rs.data.synthetic_iid()
    other.obs["batch"] = other.obs["batch"].cat.rename_categories(["batch_0", "batch_9"])
    with pytest.raises(ValueError, match="batch_9"):
        trained._validate_anndata(other)


# -- save / load -----------------------------------------------------------------------------
def _saved_keys(path):
    payload = torch.load(path, weights_only=False)
    return set(payload), set(payload["attr_dict"])


def test_save_writes_reference_keys(trained, tmp_path):
    out = tmp_path / "model"
    trained.save(str(out), save_anndata=True)
    assert sorted(os.listdir(out)) == ["adata.h5ad", "model.pt"]
    top, attrs = _saved_keys(out / "model.pt")
    assert top == {"model_state_dict", "var_names", "attr_dict"}
    assert attrs == {
        "get_normalized_function_name_",
        "history_",
        "init_params_",
        "is_trained_",
        "registry_",
        "run_id_",
        "run_name_",
        "test_indices_",
        "train_indices_",
        "validation_indices_",
    }


def test_save_load_round_trip_with_adata(trained, tmp_path):
    out = str(tmp_path / "model")
    trained.save(out, save_anndata=True)
    loaded = TutorialModel.load(out)
    assert loaded.is_trained_ and loaded.init_params_ == trained.init_params_
    np.testing.assert_allclose(
        loaded.get_latent_representation(), trained.get_latent_representation(), atol=1e-6
    )
    assert list(loaded.history) == list(trained.history)
    pd.testing.assert_frame_equal(loaded.history["elbo_train"], trained.history["elbo_train"])
    np.testing.assert_array_equal(loaded.train_indices, trained.train_indices)


def test_save_load_without_saved_adata_and_with_prefix(trained, adata, tmp_path):
    out = str(tmp_path / "model")
    trained.save(out, prefix="run1_")
    assert os.listdir(out) == ["run1_model.pt"]
    with pytest.raises(ValueError, match="Failed to load model file"):
        TutorialModel.load(out)
    loaded = TutorialModel.load(out, adata=adata, prefix="run1_")
    np.testing.assert_allclose(
        loaded.get_latent_representation(), trained.get_latent_representation(), atol=1e-6
    )


def test_save_refuses_existing_dir_without_overwrite(trained, tmp_path):
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ValueError, match="already exists"):
        trained.save(str(out))
    assert os.listdir(out) == ["keep.txt"]
    trained.save(str(out), overwrite=True)
    assert sorted(os.listdir(out)) == ["keep.txt", "model.pt"]


def test_failed_save_leaves_previous_files_intact(trained, tmp_path, monkeypatch):
    out = tmp_path / "model"
    trained.save(str(out))
    before = (out / "model.pt").read_bytes()

    def broken_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        trained.save(str(out), overwrite=True)
    assert (out / "model.pt").read_bytes() == before
    assert os.listdir(out) == ["model.pt"]  # no temporary file left behind


def test_load_rejects_mismatched_genes(trained, tmp_path):
    out = str(tmp_path / "model")
    trained.save(out)
    other = scvi_rs.data.synthetic_iid()
    other.var_names = [f"other_gene_{i}" for i in range(other.n_vars)]
    with pytest.raises(ValueError, match="var_names"):
        TutorialModel.load(out, adata=other)
    fewer = scvi_rs.data.synthetic_iid()[:, :50].copy()
    with pytest.raises(ValueError, match="var_names"):
        TutorialModel.load(out, adata=fewer)


def test_load_rejects_corrupt_truncated_and_malicious_files(trained, adata, tmp_path):
    out = tmp_path / "model"
    trained.save(str(out))
    data = (out / "model.pt").read_bytes()
    (out / "model.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        TutorialModel.load(str(out), adata=adata)
    (out / "model.pt").write_bytes(b"not a torch file at all")
    with pytest.raises(ValueError, match="corrupt or truncated"):
        TutorialModel.load(str(out), adata=adata)

    class Exploit:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "pwned"),))

    torch.save({"model_state_dict": {}, "var_names": [], "attr_dict": Exploit()}, out / "model.pt")
    with pytest.raises(ValueError, match="Refusing to load"):
        TutorialModel.load(str(out), adata=adata)
    assert not (tmp_path / "pwned").exists()


def test_load_rejects_other_model_class(trained, adata, tmp_path):
    out = str(tmp_path / "model")
    trained.save(out)
    with pytest.raises(ValueError, match="different class"):
        scvi_rs.model.SCVI.load(out, adata=adata)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA is not available")
def test_training_on_cuda(model):
    model.train(max_epochs=1, accelerator="gpu", enable_progress_bar=False)
    assert model.device.type == "cuda"
    assert model.get_latent_representation().shape == (400, 5)


@pytest.mark.parametrize(("cuda", "pinned"), [(False, False), (True, True)])
def test_gpu_training_pins_minibatches_by_default(model, monkeypatch, cuda, pinned):
    seen = {}

    class Recorder(scvi_rs.dataloaders.DataSplitter):
        def __init__(self, *args, **kwargs):
            seen.update(kwargs)
            raise RuntimeError("recorded")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(type(model), "_data_splitter_cls", Recorder)
    with pytest.raises(RuntimeError, match="recorded"):
        model.train(max_epochs=1)
    assert seen.get("pin_memory", False) is pinned
    # an explicit choice is kept
    with pytest.raises(RuntimeError, match="recorded"):
        model.train(max_epochs=1, datasplitter_kwargs={"pin_memory": False})
    assert seen["pin_memory"] is False
