"""AnnDataManager: registry layout (§2.5.1), uns/obs/obsm writes (§2.3), transfer and replay."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from anndata import AnnData

from scvi_rs import REGISTRY_KEYS, settings
from scvi_rs.data import AnnDataManager, AnnDataManagerValidationCheck, _encoding, synthetic_iid
from scvi_rs.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from scvi_rs.utils import attrdict


def scvi_manager(
    layer=None,
    batch_key=None,
    labels_key=None,
    size_factor_key=None,
    categorical_covariate_keys=None,
    continuous_covariate_keys=None,
) -> AnnDataManager:
    """The manager `SCVI.setup_anndata` builds (same fields and setup method args)."""
    setup_args = {
        "layer": layer,
        "batch_key": batch_key,
        "labels_key": labels_key,
        "size_factor_key": size_factor_key,
        "categorical_covariate_keys": categorical_covariate_keys,
        "continuous_covariate_keys": continuous_covariate_keys,
    }
    fields = [
        LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
        CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, labels_key),
        NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, size_factor_key, required=False),
        CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, categorical_covariate_keys),
        NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, continuous_covariate_keys),
    ]
    return AnnDataManager(
        fields=fields,
        setup_method_args={
            "model_name": "SCVI",
            "setup_method_name": "setup_anndata",
            "setup_args": setup_args,
        },
    )


@pytest.fixture
def adata() -> AnnData:
    settings.seed = 0
    return synthetic_iid()


def test_registry_layout_matches_reference(adata):
    manager = scvi_manager(batch_key="batch")
    manager.register_fields(adata)
    registry = manager.registry
    assert list(registry) == [
        "scvi_version",
        "model_name",
        "setup_args",
        "field_registries",
        "setup_method_name",
        "_scvi_uuid",
    ]
    assert registry["model_name"] == "SCVI"
    assert registry["setup_method_name"] == "setup_anndata"
    assert registry["setup_args"] == {
        "layer": None,
        "batch_key": "batch",
        "labels_key": None,
        "size_factor_key": None,
        "categorical_covariate_keys": None,
        "continuous_covariate_keys": None,
    }
    assert registry["_scvi_uuid"] == adata.uns["_scvi_uuid"]
    frs = registry["field_registries"]
    assert list(frs) == [
        "X",
        "batch",
        "labels",
        "size_factor",
        "extra_categorical_covs",
        "extra_continuous_covs",
    ]
    for entry in frs.values():
        assert list(entry) == ["data_registry", "state_registry", "summary_stats"]

    x = frs["X"]
    assert x["data_registry"] == {"attr_name": "X", "attr_key": None}
    assert list(x["state_registry"]) == ["n_obs", "n_vars", "column_names"]
    assert x["state_registry"]["n_obs"] == 400
    assert x["state_registry"]["n_vars"] == 100
    names = x["state_registry"]["column_names"]
    assert isinstance(names, np.ndarray) and names.dtype == object
    np.testing.assert_array_equal(names, [f"gene_{i}" for i in range(100)])
    assert x["summary_stats"] == {"n_vars": 100, "n_cells": 400}

    batch = frs["batch"]
    assert batch["data_registry"] == {"attr_name": "obs", "attr_key": "_scvi_batch"}
    assert list(batch["state_registry"]) == ["categorical_mapping", "original_key"]
    mapping = batch["state_registry"]["categorical_mapping"]
    assert mapping.dtype == object
    np.testing.assert_array_equal(mapping, ["batch_0", "batch_1"])
    assert batch["state_registry"]["original_key"] == "batch"
    assert batch["summary_stats"] == {"n_batch": 2}

    labels = frs["labels"]
    assert labels["data_registry"] == {"attr_name": "obs", "attr_key": "_scvi_labels"}
    labels_mapping = labels["state_registry"]["categorical_mapping"]
    assert labels_mapping.dtype == np.int64
    np.testing.assert_array_equal(labels_mapping, [0])
    assert labels["state_registry"]["original_key"] == "_scvi_labels"
    assert labels["summary_stats"] == {"n_labels": 1}

    assert frs["size_factor"] == {"data_registry": {}, "state_registry": {}, "summary_stats": {}}
    assert frs["extra_categorical_covs"] == {
        "data_registry": {},
        "state_registry": {},
        "summary_stats": {"n_extra_categorical_covs": 0},
    }
    assert frs["extra_continuous_covs"] == {
        "data_registry": {},
        "state_registry": {},
        "summary_stats": {"n_extra_continuous_covs": 0},
    }


def test_registry_layout_with_covariates(adata):
    rng = np.random.default_rng(0)
    adata.obs["cat"] = rng.choice(["A", "B"], adata.n_obs)
    adata.obs["cat2"] = rng.choice(["x", "y", "z"], adata.n_obs)
    adata.obs["cont"] = rng.normal(size=adata.n_obs)
    adata.obs["sf"] = rng.uniform(1, 2, size=adata.n_obs)
    manager = scvi_manager(
        batch_key="batch",
        labels_key="labels",
        size_factor_key="sf",
        categorical_covariate_keys=["cat", "cat2"],
        continuous_covariate_keys=["cont"],
    )
    manager.register_fields(adata)
    frs = manager.registry["field_registries"]
    cat = frs["extra_categorical_covs"]
    assert cat["data_registry"] == {
        "attr_name": "obsm",
        "attr_key": "_scvi_extra_categorical_covs",
    }
    state = cat["state_registry"]
    assert list(state) == ["mappings", "field_keys", "n_cats_per_key"]
    np.testing.assert_array_equal(state["mappings"]["cat"], ["A", "B"])
    np.testing.assert_array_equal(state["mappings"]["cat2"], ["x", "y", "z"])
    assert state["mappings"]["cat"].dtype == object
    assert state["field_keys"] == ["cat", "cat2"]
    assert state["n_cats_per_key"] == [2, 3]
    assert cat["summary_stats"] == {"n_extra_categorical_covs": 2}

    cont = frs["extra_continuous_covs"]
    assert cont["data_registry"] == {
        "attr_name": "obsm",
        "attr_key": "_scvi_extra_continuous_covs",
    }
    np.testing.assert_array_equal(cont["state_registry"]["columns"], ["cont"])
    assert cont["state_registry"]["columns"].dtype == object
    assert cont["summary_stats"] == {"n_extra_continuous_covs": 1}

    assert frs["size_factor"] == {
        "data_registry": {"attr_name": "obs", "attr_key": "sf"},
        "state_registry": {},
        "summary_stats": {},
    }

    # what registration wrote
    assert adata.obs["_scvi_labels"].dtype == np.int8
    cat_frame = adata.obsm["_scvi_extra_categorical_covs"]
    assert isinstance(cat_frame, pd.DataFrame)
    assert list(cat_frame.columns) == ["cat", "cat2"]
    assert cat_frame.index.equals(adata.obs_names)
    assert (cat_frame.dtypes == np.int8).all()
    np.testing.assert_array_equal(
        cat_frame["cat2"].to_numpy(), pd.Categorical(adata.obs["cat2"]).codes
    )
    cont_frame = adata.obsm["_scvi_extra_continuous_covs"]
    np.testing.assert_array_equal(cont_frame["cont"].to_numpy(), adata.obs["cont"].to_numpy())

    # user-facing views
    ss = manager.summary_stats
    assert isinstance(ss, attrdict)
    assert ss.keys() == [
        "n_batch",
        "n_cells",
        "n_extra_categorical_covs",
        "n_extra_continuous_covs",
        "n_labels",
        "n_vars",
    ]
    assert ss.n_labels == 3 and ss["n_batch"] == 2
    assert manager.data_registry.keys() == [
        "X",
        "batch",
        "extra_categorical_covs",
        "extra_continuous_covs",
        "labels",
        "size_factor",
    ]
    assert manager.get_state_registry("extra_categorical_covs").n_cats_per_key == (2, 3)
    np.testing.assert_array_equal(
        manager.get_from_registry("size_factor"), adata.obs[["sf"]].to_numpy()
    )
    assert manager.get_from_registry("size_factor").shape == (400, 1)
    assert manager.get_from_registry("extra_categorical_covs") is cat_frame


def test_bare_manager_registry_keys_and_uns(adata):
    manager = AnnDataManager([LayerField("X", None)])
    assert manager.adata is None
    assert manager.fields[0].registry_key == "X"
    assert isinstance(manager.id, str) and len(manager.id) == 36
    manager.register_fields(adata)
    assert manager.adata is adata
    assert list(manager.registry) == [
        "scvi_version",
        "model_name",
        "setup_args",
        "field_registries",
        "_scvi_uuid",
    ]
    assert manager.registry["model_name"] is None
    assert manager.registry["setup_args"] is None
    assert manager.adata_uuid == adata.uns["_scvi_uuid"]
    assert adata.uns["_scvi_manager_uuid"] == manager.id
    assert list(adata.uns) == ["protein_names", "_scvi_uuid", "_scvi_manager_uuid"]


def test_uns_uuid_is_kept_and_manager_uuid_follows_last_registration(adata):
    first = scvi_manager(batch_key="batch")
    first.register_fields(adata)
    uuid = adata.uns["_scvi_uuid"]
    second = scvi_manager()
    second.register_fields(adata)
    assert adata.uns["_scvi_uuid"] == uuid
    assert adata.uns["_scvi_manager_uuid"] == second.id != first.id


def test_obs_and_obsm_writes(adata):
    scvi_manager(batch_key="batch", labels_key="labels").register_fields(adata)
    assert adata.obs["_scvi_batch"].dtype == np.int8
    assert adata.obs["_scvi_labels"].dtype == np.int8
    np.testing.assert_array_equal(adata.obs["_scvi_batch"], [0] * 200 + [1] * 200)
    np.testing.assert_array_equal(adata.obs["_scvi_labels"], adata.obs["labels"].cat.codes)
    assert list(adata.obs.columns) == ["batch", "labels", "_scvi_batch", "_scvi_labels"]
    assert "_scvi_extra_categorical_covs" not in adata.obsm


def test_register_errors(adata):
    manager = scvi_manager(batch_key="batch")
    with pytest.raises(AssertionError, match=re.escape("AnnData object not registered")):
        manager.data_registry  # noqa: B018
    with pytest.raises(AssertionError, match=re.escape("AnnData object not registered")):
        manager.transfer_fields(adata)
    with pytest.raises(AssertionError, match=re.escape("AnnData object not registered")):
        manager.validate()
    with pytest.raises(TypeError, match=re.escape("passed without a source_registry")):
        manager.register_fields(adata, extend_categories=True)
    manager.register_fields(adata)
    with pytest.raises(
        AssertionError,
        match=re.escape("Existing AnnData object registered with this Manager instance."),
    ):
        manager.register_fields(adata)


def test_views_are_refused(adata):
    view = adata[:10]
    with pytest.raises(ValueError, match=r"Please run `adata = adata.copy\(\)`"):
        scvi_manager().register_fields(view)
    # the check can be switched off
    manager = AnnDataManager(
        [LayerField("X", None)],
        validation_checks=AnnDataManagerValidationCheck(check_if_view=False),
    )
    manager.register_fields(adata[:10].copy())


def test_duplicate_summary_stat_is_an_error(adata):
    # LayerField("X") reports n_vars; a LayerField registered as "vars" does too
    manager = AnnDataManager([LayerField("X", None), LayerField("vars", None)])
    manager.register_fields(adata)
    with pytest.raises(RuntimeError, match=re.escape("already existing in model's summary stats")):
        manager.summary_stats  # noqa: B018


def test_update_setup_method_args_and_setup_method_args(adata):
    manager = scvi_manager(batch_key="batch")
    manager.register_fields(adata)
    manager.update_setup_method_args({"layer": "counts"})
    assert manager.registry["setup_args"]["layer"] == "counts"
    args = manager._get_setup_method_args()
    assert list(args) == ["model_name", "setup_args"]


def test_get_from_registry(adata):
    manager = scvi_manager(batch_key="batch")
    manager.register_fields(adata)
    assert manager.get_from_registry("X") is adata.X
    batch = manager.get_from_registry("batch")
    assert batch.shape == (400, 1) and batch.dtype == np.int8
    with pytest.raises(KeyError):
        manager.get_from_registry("size_factor")


def test_view_registry_prints_sections(adata, capsys):
    manager = scvi_manager(batch_key="batch")
    manager.register_fields(adata)
    manager.view_registry()
    out = capsys.readouterr().out
    assert out.startswith("Anndata setup with scvi-tools version ")
    assert "Setup via `SCVI.setup_anndata` with arguments:" in out
    assert "Summary Statistics" in out and "Data Registry" in out
    assert "adata.obs['_scvi_batch']" in out and "adata.X" in out
    assert "batch State Registry" in out and "batch_1" in out
    manager.view_registry(hide_state_registries=True)
    assert "State Registry" not in capsys.readouterr().out
    manager.view_summary_stats()
    assert "n_batch" in capsys.readouterr().out
    md = AnnDataManager._view_summary_stats(manager.summary_stats, as_markdown=True)
    assert md.splitlines()[0] == "| Summary Stat Key | Value |"


# -- transfer ------------------------------------------------------------------------------


def test_transfer_reuses_source_codes_for_a_subset(adata):
    source = scvi_manager(batch_key="batch", labels_key="labels")
    source.register_fields(adata)
    query = adata[adata.obs["batch"] == "batch_1"].copy()
    for key in ("_scvi_batch", "_scvi_labels"):
        del query.obs[key]
    del query.uns["_scvi_uuid"], query.uns["_scvi_manager_uuid"]
    target = source.transfer_fields(query)
    assert isinstance(target, AnnDataManager) and target is not source
    assert target.fields is source.fields or target.fields == source.fields
    np.testing.assert_array_equal(query.obs["_scvi_batch"], 1)
    assert target.summary_stats.n_batch == 2
    np.testing.assert_array_equal(
        target.get_state_registry("batch").categorical_mapping, ["batch_0", "batch_1"]
    )
    assert target.registry["model_name"] == "SCVI"
    assert "setup_method_name" not in target.registry
    assert query.uns["_scvi_manager_uuid"] == target.id
    assert query.uns["_scvi_uuid"] != adata.uns["_scvi_uuid"]


def test_transfer_unknown_category_and_extension(adata):
    source = scvi_manager(batch_key="batch")
    source.register_fields(adata)
    query = synthetic_iid(n_batches=3)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Category batch_2 not found in source registry. Cannot transfer setup without "
            "`extend_categories = True`."
        ),
    ):
        source.transfer_fields(query)
    target = source.transfer_fields(query, extend_categories=True)
    np.testing.assert_array_equal(
        target.get_state_registry("batch").categorical_mapping,
        ["batch_0", "batch_1", "batch_2"],
    )
    np.testing.assert_array_equal(query.obs["_scvi_batch"], [0] * 200 + [1] * 200 + [2] * 200)
    assert target.summary_stats.n_batch == 3


def test_transfer_errors_name_the_key(adata):
    adata.layers["counts"] = adata.X.copy()
    source = scvi_manager(layer="counts", batch_key="batch")
    source.register_fields(adata)

    missing_obs = synthetic_iid()
    del missing_obs.obs["batch"]
    missing_obs.layers["counts"] = missing_obs.X.copy()
    with pytest.raises(KeyError, match=re.escape("batch not found in adata.obs.")):
        source.transfer_fields(missing_obs)

    missing_layer = synthetic_iid()
    with pytest.raises(ValueError, match=re.escape("counts is not a valid key in adata.layers.")):
        source.transfer_fields(missing_layer)

    fewer_genes = synthetic_iid(n_genes=50)
    fewer_genes.layers["counts"] = fewer_genes.X.copy()
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Number of vars in `adata_target` not the same as source. Expected: 100 Received: 50"
        ),
    ):
        source.transfer_fields(fewer_genes)

    nan_batch = synthetic_iid()
    nan_batch.layers["counts"] = nan_batch.X.copy()
    values = nan_batch.obs["batch"].astype(object).to_numpy()
    values[3] = np.nan
    nan_batch.obs["batch"] = values
    with pytest.raises(ValueError, match=r'Making .obs\["batch"\] categorical failed'):
        source.transfer_fields(nan_batch)


def test_transfer_non_count_data_warns(adata):
    source = scvi_manager(batch_key="batch")
    source.register_fields(adata)
    query = synthetic_iid()
    query.X = query.X.astype(np.float64) + 0.5
    with pytest.warns(
        UserWarning, match=re.escape("adata.X does not contain unnormalized count data")
    ):
        source.transfer_fields(query)


def test_transfer_non_numeric_continuous_covariate(adata):
    adata.obs["cont"] = np.linspace(0, 1, adata.n_obs)
    source = scvi_manager(continuous_covariate_keys=["cont"])
    source.register_fields(adata)
    query = synthetic_iid()
    query.obs["cont"] = ["high"] * query.n_obs
    with pytest.raises(ValueError, match=r"adata.obs\['cont'\] must be numeric"):
        source.transfer_fields(query)


# -- the tutorial's interleaving: replay on _scvi_manager_uuid mismatch --------------------


def test_tutorial_interleaving_replays_registration(adata):
    first = scvi_manager(batch_key="batch")
    first.register_fields(adata)
    registry_before = first.registry
    batch_codes = adata.obs["_scvi_batch"].to_numpy().copy()
    np.testing.assert_array_equal(batch_codes, [0] * 200 + [1] * 200)

    second = scvi_manager(batch_key=None)  # no batch correction
    second.register_fields(adata)
    assert adata.uns["_scvi_manager_uuid"] == second.id
    assert adata.obs["_scvi_batch"].dtype == np.int8
    np.testing.assert_array_equal(adata.obs["_scvi_batch"], 0)

    first.validate()  # replays the first registration
    assert adata.uns["_scvi_manager_uuid"] == first.id
    assert adata.obs["_scvi_batch"].dtype == np.int8
    np.testing.assert_array_equal(adata.obs["_scvi_batch"], batch_codes)
    assert first.registry is registry_before
    assert first.summary_stats.n_batch == 2

    second.validate()
    np.testing.assert_array_equal(adata.obs["_scvi_batch"], 0)
    assert adata.uns["_scvi_manager_uuid"] == second.id
    assert second.summary_stats.n_batch == 1

    # validate with nothing changed is a no-op
    second.validate()
    assert adata.uns["_scvi_manager_uuid"] == second.id


def test_replay_of_a_transferred_manager_uses_the_source_registry(adata):
    source = scvi_manager(batch_key="batch")
    source.register_fields(adata)
    query = synthetic_iid(n_batches=3)
    target = source.transfer_fields(query, extend_categories=True)
    expected = query.obs["_scvi_batch"].to_numpy().copy()

    other = scvi_manager(batch_key="labels")
    other.register_fields(query)
    assert not np.array_equal(query.obs["_scvi_batch"], expected)

    target.validate()
    np.testing.assert_array_equal(query.obs["_scvi_batch"], expected)
    np.testing.assert_array_equal(
        target.get_state_registry("batch").categorical_mapping,
        ["batch_0", "batch_1", "batch_2"],
    )


# -- fingerprint shortcut ------------------------------------------------------------------


@pytest.fixture
def count_encoding(monkeypatch):
    calls = {"build": 0, "encode": 0}
    build, encode = _encoding.build, _encoding.encode

    def counting_build(*args, **kwargs):
        calls["build"] += 1
        return build(*args, **kwargs)

    def counting_encode(*args, **kwargs):
        calls["encode"] += 1
        return encode(*args, **kwargs)

    monkeypatch.setattr(_encoding, "build", counting_build)
    monkeypatch.setattr(_encoding, "encode", counting_encode)
    return calls


def _string_batches(adata, n=4):
    rng = np.random.default_rng(1)
    adata.obs["plate"] = rng.choice([f"p{i}" for i in range(n)], adata.n_obs).astype(object)


def test_replay_skips_reencoding_when_setup_is_unchanged(adata, count_encoding):
    _string_batches(adata)
    adata.obs["cat"] = adata.obs["labels"].astype(str)
    kwargs = {"batch_key": "plate", "labels_key": "labels", "categorical_covariate_keys": ["cat"]}
    first = scvi_manager(**kwargs)
    first.register_fields(adata)
    second = scvi_manager(**kwargs)
    second.register_fields(adata)
    codes = adata.obs["_scvi_batch"].to_numpy().copy()
    count_encoding["build"] = 0
    first.validate()
    assert adata.uns["_scvi_manager_uuid"] == first.id
    assert count_encoding["build"] == 0  # nothing was re-encoded from scratch
    np.testing.assert_array_equal(adata.obs["_scvi_batch"], codes)
    assert first.summary_stats.n_batch == 4


def test_replay_reencodes_when_source_column_changed(adata):
    _string_batches(adata)
    first = scvi_manager(batch_key="plate")
    first.register_fields(adata)
    second = scvi_manager(batch_key="plate")
    second.register_fields(adata)
    # the user edits the source column after both registrations
    adata.obs["plate"] = adata.obs["plate"].to_numpy()[::-1]
    first.validate()
    expected = pd.Categorical(adata.obs["plate"]).codes
    np.testing.assert_array_equal(adata.obs["_scvi_batch"], expected)


def test_replay_reencodes_when_output_column_was_overwritten(adata):
    first = scvi_manager(batch_key="batch")
    first.register_fields(adata)
    second = scvi_manager(batch_key="batch")
    second.register_fields(adata)
    adata.obs["_scvi_batch"] = np.zeros(adata.n_obs, dtype=np.int8)
    first.validate()
    np.testing.assert_array_equal(adata.obs["_scvi_batch"], [0] * 200 + [1] * 200)


def test_replay_reencodes_when_categories_changed(adata):
    first = scvi_manager(batch_key="batch")
    first.register_fields(adata)
    second = scvi_manager(batch_key="batch")
    second.register_fields(adata)
    adata.obs["batch"] = adata.obs["batch"].cat.add_categories(["batch_9"])
    first.validate()
    # a fresh registration counts the unused category, as the reference does
    assert first.summary_stats.n_batch == 3


def test_replay_of_cat_covs_detects_changes(adata):
    adata.obs["cat"] = np.where(np.arange(adata.n_obs) % 2, "u", "v")
    first = scvi_manager(categorical_covariate_keys=["cat"])
    first.register_fields(adata)
    second = scvi_manager(categorical_covariate_keys=["cat"])
    second.register_fields(adata)
    adata.obs["cat"] = np.where(np.arange(adata.n_obs) % 3, "u", "v")
    first.validate()
    expected = pd.Categorical(adata.obs["cat"]).codes
    np.testing.assert_array_equal(adata.obsm["_scvi_extra_categorical_covs"]["cat"], expected)


def test_replay_failure_keeps_manager_registered(adata):
    first = scvi_manager(batch_key="batch")
    first.register_fields(adata)
    scvi_manager().register_fields(adata)
    del adata.obs["batch"]
    with pytest.raises(KeyError, match=re.escape("batch not found in adata.obs.")):
        first.validate()
    assert first.adata is adata


def test_register_new_fields(adata):
    manager = scvi_manager(batch_key="batch")
    manager.register_fields(adata)
    with pytest.raises(AssertionError, match=re.escape("No AnnData object has been registered")):
        scvi_manager().register_new_fields([])
    manager.register_new_fields([CategoricalObsField("sample", "labels")])
    assert manager.summary_stats.n_sample == 3
    assert manager.fields[-1].registry_key == "sample"
    assert "_scvi_sample" in adata.obs
