"""SCVI model files: scvi-tools files load in scvi_rs, scvi_rs files load in scvi-tools.

``tests/data/scvi_tools_1.4.2_*`` were written by scvi-tools 1.4.2 with
``tests/data/make_scvi_tools_fixtures.py`` (which also holds the latent representation that
scvi-tools computes). The test that runs scvi-tools itself is skipped when it is not
installed (set ``SCVI_TOOLS_PYTHON`` to an interpreter that has it, or install it here).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import anndata
import numpy as np
import pandas as pd
import pytest

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.model import SCVI
from scvi_rs.model.base._files import safe_torch_load

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
SCRIPT = os.path.join(DATA, "make_scvi_tools_fixtures.py")
FIXTURES = {
    "scvi": os.path.join(DATA, "scvi_tools_1.4.2_scvi"),
    "scvi_covs": os.path.join(DATA, "scvi_tools_1.4.2_scvi_covs"),
}


def _scvi_tools_python() -> str | None:
    candidates = [os.environ.get("SCVI_TOOLS_PYTHON")]
    if importlib.util.find_spec("scvi") is not None:
        candidates.append(sys.executable)
    candidates.append(os.path.expanduser("~/.venvs/scvi-tools/bin/python"))
    for candidate in candidates:
        if candidate and os.path.exists(candidate):
            return candidate
    return None


# -- files written by scvi-tools ---------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_scvi_tools_file_gives_the_same_latent(name):
    path = FIXTURES[name]
    expected = np.load(os.path.join(path, "latent.npy"))
    info = json.load(open(os.path.join(path, "info.json")))

    model = SCVI.load(path)
    assert model.is_trained
    assert model.adata.n_obs == expected.shape[0]
    for key, value in info["model"].items():
        assert model.init_params_["non_kwargs"][key] == value
    assert model.registry["setup_args"]["batch_key"] == "batch"
    assert isinstance(model.history["elbo_train"], pd.DataFrame)
    latent = model.get_latent_representation()
    np.testing.assert_allclose(latent, expected, atol=1e-5, rtol=0)

    # the same with the AnnData given explicitly, and loaded without data then set up
    adata = anndata.read_h5ad(os.path.join(path, "adata.h5ad"))
    explicit = SCVI.load(path, adata=adata)
    np.testing.assert_allclose(explicit.get_latent_representation(), expected, atol=1e-5)


def test_scvi_tools_file_without_data_and_queries(tmp_path):
    path = tmp_path / "model_only"
    shutil.copytree(FIXTURES["scvi_covs"], path)
    os.remove(path / "adata.h5ad")
    with pytest.warns(UserWarning, match="no saved anndata"):
        model = SCVI.load(str(path))
    assert model.adata is None
    assert model.module.library_log_means.shape == (1, 2)  # saved buffers, not placeholders
    adata = anndata.read_h5ad(os.path.join(FIXTURES["scvi_covs"], "adata.h5ad"))
    # The saved AnnData carries the writer's ``_scvi_uuid``; a model loaded without data has
    # no manager store yet, and (as in the reference) such an AnnData is then rejected.
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):
        adata.uns.pop(key)
    latent = model.get_latent_representation(adata)
    expected = np.load(os.path.join(FIXTURES["scvi_covs"], "latent.npy"))
    np.testing.assert_allclose(latent, expected, atol=1e-5)

    expr = model.get_normalized_expression(adata, library_size=1e4)
    assert expr.shape == (adata.n_obs, adata.n_vars)
    de = model.differential_expression(adata, groupby="labels", silent=True)
    assert de.shape[0] == 3 * adata.n_vars


def test_library_priors_equal_those_scvi_tools_computed():
    path = FIXTURES["scvi_covs"]
    info = json.load(open(os.path.join(path, "info.json")))
    saved = safe_torch_load(os.path.join(path, "model.pt"), map_location="cpu")
    state = saved["model_state_dict"]
    adata = anndata.read_h5ad(os.path.join(path, "adata.h5ad"))
    adata.uns.clear()
    SCVI.setup_anndata(adata, **info["setup_anndata"])
    model = SCVI(adata, **info["model"])
    for key in ("library_log_means", "library_log_vars"):
        np.testing.assert_allclose(getattr(model.module, key), state[key], rtol=1e-6)
    shapes = {k: tuple(v.shape) for k, v in model.module.state_dict().items()}
    assert shapes == {k: tuple(v.shape) for k, v in state.items() if k != "pyro_param_store"}


def test_query_mapping_onto_a_scvi_tools_reference():
    adata = anndata.read_h5ad(os.path.join(FIXTURES["scvi"], "adata.h5ad"))
    query = adata[:60].copy()
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):
        query.uns.pop(key, None)
    query.obs["batch"] = pd.Categorical(["query_a", "query_b"] * 30)
    model = SCVI.load_query_data(query, FIXTURES["scvi"])
    mapping = model.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping
    assert list(mapping) == ["batch_0", "batch_1", "query_a", "query_b"]
    model.train(max_epochs=1, enable_progress_bar=False)
    assert model.get_latent_representation().shape == (60, 10)


# -- files written by scvi_rs ------------------------------------------------------------------
@pytest.fixture(scope="module")
def rs_model():
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=100, n_genes=50)
    for key in list(adata.obsm):
        del adata.obsm[key]
    rng = np.random.default_rng(0)
    adata.obs["donor"] = rng.choice(["d0", "d1", "d2"], size=adata.n_obs)
    adata.obs["mito"] = rng.uniform(0, 0.2, size=adata.n_obs)
    SCVI.setup_anndata(
        adata,
        batch_key="batch",
        labels_key="labels",
        categorical_covariate_keys=["donor"],
        continuous_covariate_keys=["mito"],
    )
    model = SCVI(adata, n_hidden=32, use_observed_lib_size=False, dispersion="gene-batch")
    model.train(max_epochs=2, enable_progress_bar=False)
    return model


def test_round_trip_with_and_without_data(rs_model, tmp_path):
    expected = rs_model.get_latent_representation()
    rs_model.save(str(tmp_path / "with"), save_anndata=True)
    assert sorted(os.listdir(tmp_path / "with")) == ["adata.h5ad", "model.pt"]
    loaded = SCVI.load(str(tmp_path / "with"))
    np.testing.assert_allclose(loaded.get_latent_representation(), expected, atol=1e-6)
    assert loaded.is_trained and loaded.init_params_ == rs_model.init_params_
    np.testing.assert_array_equal(loaded.train_indices, rs_model.train_indices)
    pd.testing.assert_frame_equal(loaded.history["elbo_train"], rs_model.history["elbo_train"])
    assert repr(loaded) == repr(rs_model)

    rs_model.save(str(tmp_path / "pre"), prefix="run1_")
    assert sorted(os.listdir(tmp_path / "pre")) == ["run1_model.pt"]
    with pytest.warns(UserWarning, match="no saved anndata"):
        bare = SCVI.load(str(tmp_path / "pre"), prefix="run1_")
    assert bare.adata is None
    fresh = rs_model.adata.copy()
    for key in ("_scvi_uuid", "_scvi_manager_uuid"):
        fresh.uns.pop(key, None)
    np.testing.assert_allclose(bare.get_latent_representation(fresh), expected, atol=1e-6)
    given = SCVI.load(str(tmp_path / "pre"), adata=fresh.copy(), prefix="run1_")
    np.testing.assert_allclose(given.get_latent_representation(), expected, atol=1e-6)

    with pytest.raises(ValueError, match="already exists"):
        rs_model.save(str(tmp_path / "with"))
    rs_model.save(str(tmp_path / "with"), overwrite=True)


def test_scvi_rs_file_loads_in_scvi_tools(rs_model, tmp_path):
    python = _scvi_tools_python()
    if python is None:
        pytest.skip("scvi-tools is not installed (set SCVI_TOOLS_PYTHON to use another venv)")
    default_dir = tmp_path / "default"
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=100, n_genes=50)
    for key in list(adata.obsm):
        del adata.obsm[key]
    SCVI.setup_anndata(adata, batch_key="batch", labels_key="labels")
    default = SCVI(adata)
    default.train(max_epochs=1, enable_progress_bar=False)
    default.save(str(default_dir), save_anndata=True)
    rs_model.save(str(tmp_path / "covs"), save_anndata=True)

    args = [str(default_dir), str(tmp_path / "default.npy")]
    args += [str(tmp_path / "covs"), str(tmp_path / "covs.npy")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run(
        [python, SCRIPT, "latent", *args], capture_output=True, text=True, env=env, timeout=300
    )
    if proc.returncode != 0 and "No module named 'scvi'" in proc.stderr:
        pytest.skip(f"{python} cannot import scvi")
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [r["is_trained"] for r in reports] == [True, True]
    np.testing.assert_allclose(
        np.load(tmp_path / "default.npy"), default.get_latent_representation(), atol=1e-5
    )
    np.testing.assert_allclose(
        np.load(tmp_path / "covs.npy"), rs_model.get_latent_representation(), atol=1e-5
    )
