"""The private ``scvi.model.base._save_load`` helpers other model code imports."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import scvi_rs as scvi
from scvi_rs.model.base import _save_load


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    adata = scvi.data.synthetic_iid(batch_size=40, n_genes=30)
    scvi.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi.model.SCVI(adata, n_latent=4)
    model.train(max_epochs=1, accelerator="cpu", enable_progress_bar=False)
    path = tmp_path_factory.mktemp("model")
    model.save(str(path), save_anndata=True, overwrite=True)
    return path, adata


def test_load_saved_files_and_initialize_model_rebuild_the_model(saved):
    path, adata = saved
    attr_dict, var_names, state_dict, loaded = _save_load._load_saved_files(str(path), True)
    np.testing.assert_array_equal(var_names, adata.var_names.astype(str))
    assert loaded.n_obs == adata.n_obs
    registry = attr_dict.pop("registry_")
    scvi.model.SCVI.setup_anndata(loaded, source_registry=registry, **registry["setup_args"])
    model = _save_load._initialize_model(scvi.model.SCVI, loaded, registry, attr_dict)
    state_dict.pop("pyro_param_store", None)  # as scvi-tools' load does
    model.module.load_state_dict(state_dict)
    assert model.module.n_latent == 4


def test_validate_var_names_warns_like_the_reference(saved):
    _, adata = saved
    names = adata.var_names.astype(str).to_numpy()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _save_load._validate_var_names(adata, names)
    with pytest.warns(UserWarning, match="does not match"):
        _save_load._validate_var_names(adata, names[::-1])
    with pytest.warns(UserWarning, match="does not match"):
        _save_load._validate_var_names(None, {"rna": names}, {"rna": names[:3]})
    assert isinstance(_save_load._get_var_names(adata), np.ndarray)


def test_legacy_loader_names_the_missing_file(tmp_path):
    with pytest.raises(ValueError, match="legacy"):
        _save_load._load_legacy_saved_files(str(tmp_path), "", load_adata=False)
