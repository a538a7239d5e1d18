"""MuData registration: the MuData* fields, AnnDataManager over a MuData, SCVI.setup_mudata."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.data import AnnDataManager, synthetic_iid
from scvi_rs.data.fields import (
    CategoricalObsField,
    MuDataCategoricalObsField,
    MuDataLayerField,
    MuDataNumericalJointObsField,
    MuDataProteinLayerField,
    MuDataWrapper,
)
from scvi_rs.data.fields._mudata import require_mudata

mudata = pytest.importorskip("mudata")


def _mdata():
    rna = synthetic_iid(batch_size=40, n_genes=30)
    protein = synthetic_iid(batch_size=40, n_genes=8)
    return mudata.MuData({"rna": rna, "protein": protein}), rna, protein


def _manager(mdata, batch_key="batch", protein=False):
    batch = MuDataCategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key, mod_key="rna")
    fields = [
        MuDataLayerField(REGISTRY_KEYS.X_KEY, None, mod_key="rna", mod_required=True),
        batch,
    ]
    if protein:
        fields.append(
            MuDataProteinLayerField(
                REGISTRY_KEYS.PROTEIN_EXP_KEY,
                None,
                mod_key="protein",
                mod_required=True,
                use_batch_mask=True,
                batch_field=batch,
            )
        )
    manager = AnnDataManager(fields=fields, setup_method_args={"model_name": "T"})
    manager.register_fields(mdata)
    return manager


def test_fields_read_their_modality_and_record_it():
    mdata, rna, protein = _mdata()
    manager = _manager(mdata, protein=True)
    np.testing.assert_array_equal(manager.get_from_registry(REGISTRY_KEYS.X_KEY), rna.X)
    np.testing.assert_array_equal(
        manager.get_from_registry(REGISTRY_KEYS.PROTEIN_EXP_KEY), protein.X
    )
    assert manager.data_registry[REGISTRY_KEYS.X_KEY]["mod_key"] == "rna"
    assert manager.summary_stats.n_vars == rna.n_vars
    assert manager.summary_stats.n_batch == 2
    # the encoded batch lands in the batch modality and is copied to the protein one
    np.testing.assert_array_equal(rna.obs["_scvi_batch"], protein.obs["_scvi_batch"])
    assert "_scvi_uuid" in mdata.uns


def test_joint_covariates_on_a_modality():
    mdata, rna, _ = _mdata()
    rna.obs["c1"] = np.arange(rna.n_obs, dtype=float)
    field = MuDataNumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, ["c1"], mod_key="rna")
    manager = AnnDataManager(fields=[field], setup_method_args={"model_name": "T"})
    manager.register_fields(mdata)
    covs = manager.get_from_registry(REGISTRY_KEYS.CONT_COVS_KEY)
    np.testing.assert_array_equal(np.asarray(covs).ravel(), rna.obs["c1"].to_numpy())


def test_anndata_given_to_a_mudata_field_is_refused():
    with pytest.raises(AssertionError, match="MuData"):
        _manager(synthetic_iid(batch_size=20))


def test_missing_modality_is_named():
    mdata, _, _ = _mdata()
    field = MuDataLayerField(REGISTRY_KEYS.X_KEY, None, mod_key="atac")
    manager = AnnDataManager(fields=[field], setup_method_args={"model_name": "T"})
    with pytest.raises(ValueError, match="Modality atac not found"):
        manager.register_fields(mdata)


def test_required_modality_and_wrapper_arguments():
    with pytest.raises(ValueError, match="Modality required"):
        MuDataLayerField(REGISTRY_KEYS.X_KEY, None, mod_required=True)
    with pytest.raises(ValueError, match="must be a class"):
        MuDataWrapper(CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, None))
    assert MuDataLayerField.__name__ == "MuDataLayerField"


def test_transfer_follows_the_source_mapping():
    mdata, _, _ = _mdata()
    manager = _manager(mdata)
    target, target_rna, _ = _mdata()
    target_rna.obs["batch"] = "batch_1"
    manager.transfer_fields(target)
    assert (target_rna.obs["_scvi_batch"] == 1).all()
    target_rna.obs["batch"] = "batch_9"
    with pytest.raises(ValueError):
        manager.transfer_fields(target)
    extended = manager.transfer_fields(target, extend_categories=True)
    mapping = extended.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
    assert list(mapping)[-1] == "batch_9"


def test_views_and_unpaired_mudata_are_refused():
    mdata, _, _ = _mdata()
    with pytest.raises(ValueError, match="copy"):
        _manager(mdata[:10])
    rna = synthetic_iid(batch_size=40, n_genes=30)
    fewer = synthetic_iid(batch_size=20, n_genes=8)
    with pytest.raises(ValueError, match="unpaired"):
        _manager(mudata.MuData({"rna": rna, "protein": fewer}), protein=True)


def test_registered_mudata_is_written_and_read(tmp_path):
    mdata, _, _ = _mdata()
    _manager(mdata)
    path = tmp_path / "m.h5mu"
    mdata.write(path)
    assert "_scvi_batch" in mudata.read(path).mod["rna"].obs


def test_import_without_mudata_and_the_install_hint(monkeypatch):
    code = "import sys; sys.modules['mudata'] = None; import scvi_rs, scvi_rs.data.fields"
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "mudata", None)
    with pytest.raises(ImportError, match=r"pip install scvi-rs\[mudata\]"):
        require_mudata()


def test_scvi_setup_mudata_trains_saves_and_loads(tmp_path):
    mdata, rna, _ = _mdata()
    model_cls = scvi_rs.model.SCVI
    with pytest.raises(ValueError, match="Modalities cannot be None"):
        model_cls.setup_mudata(mdata)
    with pytest.raises(ValueError, match="Extraneous modality"):
        model_cls.setup_mudata(mdata, modalities={"rna_layer": "rna", "gene_key": "rna"})
    model_cls.setup_mudata(
        mdata, batch_key="batch", modalities={"rna_layer": "rna", "batch_key": "rna"}
    )
    model = model_cls(mdata, n_latent=3, n_hidden=16)
    assert model.summary_stats.n_vars == rna.n_vars
    model.train(1, train_size=0.5, batch_size=40)
    latent = model.get_latent_representation()
    assert latent.shape == (mdata.n_obs, 3)
    model.save(tmp_path / "m", save_anndata=True)
    assert (tmp_path / "m" / "mdata.h5mu").exists()
    loaded = model_cls.load(tmp_path / "m")
    assert type(loaded.adata).__name__ == "MuData"
    np.testing.assert_allclose(loaded.get_latent_representation(), latent, atol=1e-5)
