"""SCANVI on a MuData: registration, training, prediction and a save/load round trip."""

from __future__ import annotations

import numpy as np
import pytest

import scvi_rs as scvi

mudata = pytest.importorskip("mudata")

UNKNOWN = "Unknown"


def _mdata():
    rna = scvi.data.synthetic_iid(batch_size=60, n_genes=40)
    rna.obs["labels"] = rna.obs["labels"].astype(str)
    rna.obs.loc[rna.obs_names[::3], "labels"] = UNKNOWN
    prot = rna[:, :10].copy()
    prot.var_names = [f"p{i}" for i in range(10)]
    mdata = mudata.MuData({"rna": rna, "prot": prot})
    mdata.obs["batch"] = rna.obs["batch"].to_numpy()
    return mdata


def _setup(mdata, **kwargs):
    scvi.model.SCANVI.setup_mudata(
        mdata,
        labels_key="labels",
        unlabeled_category=UNKNOWN,
        batch_key="batch",
        modalities={"rna_layer": "rna", "labels_key": "rna"},
        **kwargs,
    )


def test_scanvi_trains_predicts_and_round_trips_on_mudata(tmp_path):
    mdata = _mdata()
    _setup(mdata)
    model = scvi.model.SCANVI(mdata, n_latent=4)
    model.train(max_epochs=2, accelerator="cpu", enable_progress_bar=False)
    predicted = model.predict()
    assert len(predicted) == mdata.n_obs
    assert set(predicted) <= set(mdata["rna"].obs["labels"]) - {UNKNOWN}
    soft = model.predict(soft=True)
    np.testing.assert_allclose(soft.to_numpy().sum(axis=1), 1.0, rtol=1e-5)
    latent = model.get_latent_representation()
    assert latent.shape == (mdata.n_obs, 4)

    model.save(str(tmp_path), save_anndata=True, overwrite=True)
    loaded = scvi.model.SCANVI.load(str(tmp_path))
    np.testing.assert_array_equal(loaded.predict(), predicted)
    np.testing.assert_allclose(loaded.get_latent_representation(), latent, atol=1e-5)
    assert set(loaded.get_var_names()) == {"rna", "prot"}


def test_scanvi_setup_mudata_errors_name_the_problem():
    mdata = _mdata()
    with pytest.raises(ValueError, match="labels_key"):
        scvi.model.SCANVI.setup_mudata(
            mdata, labels_key=None, unlabeled_category=UNKNOWN, modalities={"rna_layer": "rna"}
        )
    with pytest.raises(ValueError, match="atac"):
        scvi.model.SCANVI.setup_mudata(
            mdata,
            labels_key="labels",
            unlabeled_category=UNKNOWN,
            modalities={"rna_layer": "atac", "labels_key": "rna"},
        )
