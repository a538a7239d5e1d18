"""scvi_rs.data.fields: register / transfer / validate of every field (spec §2.6)."""
# ruff: noqa: NPY002 - these tests exercise numpy's global legacy RNG on purpose

from __future__ import annotations

import re
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from anndata import AnnData

from scvi_rs import settings
from scvi_rs.data import AnnDataManager, synthetic_iid
from scvi_rs.data.fields import (
    BaseAnnDataField,
    CategoricalJointObsField,
    CategoricalJointVarField,
    CategoricalObsField,
    CategoricalVarField,
    LabelsWithUnlabeledObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
    NumericalVarField,
    ObsmField,
    ProteinObsmField,
    StringUnsField,
    VarmField,
)


@pytest.fixture
def adata() -> AnnData:
    settings.seed = 0
    return synthetic_iid()


def small(n_obs=12, n_vars=5, **obs) -> AnnData:
    x = np.arange(n_obs * n_vars, dtype=np.float32).reshape(n_obs, n_vars) % 7
    frame = pd.DataFrame(obs, index=[f"c{i}" for i in range(n_obs)])
    return AnnData(X=x, obs=frame, var=pd.DataFrame(index=[f"g{i}" for i in range(n_vars)]))


def test_base_field_is_abstract():
    with pytest.raises(TypeError):
        BaseAnnDataField()


# -- LayerField ------------------------------------------------------------------------------


def test_layer_field_x_and_layer(adata):
    field = LayerField("X", None)
    assert (field.attr_name, field.attr_key, field.is_empty) == ("X", None, False)
    assert field.get_data_registry() == {"attr_name": "X", "attr_key": None}
    state = field.register_field(adata)
    assert state["n_obs"] == 400 and state["n_vars"] == 100
    assert field.get_summary_stats(state) == {"n_vars": 100, "n_cells": 400}
    assert field.view_state_registry(state) is None
    assert field.get_field_data(adata) is adata.X

    adata.layers["counts"] = adata.X.copy()
    layer = LayerField("x", "counts")
    assert (layer.attr_name, layer.attr_key) == ("layers", "counts")
    state = layer.register_field(adata)
    assert layer.get_summary_stats(state) == {"n_x": 100}

    with pytest.raises(ValueError, match=re.escape("raw is not a valid key in adata.layers.")):
        LayerField("X", "raw").register_field(adata)


def test_layer_field_count_warning_texts(adata):
    adata.X = adata.X.astype(np.float32) / 3.0
    with pytest.warns(
        UserWarning,
        match=r"^adata.X does not contain unnormalized count data. Are you sure this is what "
        "you want\\?$",
    ):
        LayerField("X", None).register_field(adata)
    adata.layers["norm"] = adata.X.copy()
    with pytest.warns(UserWarning, match=r"^adata.layers\[norm\] does not contain unnormalized"):
        LayerField("X", "norm").register_field(adata)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerField("X", None, is_count_data=False).register_field(adata)
    # negative counts warn as in the reference, then are refused (they train to NaN)
    adata.X = -np.ones_like(adata.X)
    with (
        pytest.warns(UserWarning, match=re.escape("unnormalized count data")),
        pytest.raises(ValueError, match=r"adata\.X holds a negative value"),
    ):
        LayerField("X", None).register_field(adata)
    LayerField("X", None, is_count_data=False).register_field(adata)


def test_layer_field_count_check_uses_global_rng(adata):
    np.random.seed(3)
    LayerField("X", None).register_field(adata)
    after = np.random.rand()
    np.random.seed(3)
    np.random.choice(adata.n_obs, size=(20,))
    assert np.random.rand() == after


def test_layer_field_transfer_checks_n_vars(adata):
    field = LayerField("X", None)
    state = field.register_field(adata)
    target = synthetic_iid(n_genes=99)
    with pytest.raises(
        ValueError,
        match=re.escape(
            "Number of vars in `adata_target` not the same as source. Expected: 100 Received: 99"
        ),
    ):
        field.transfer_field(state, target)
    renamed = synthetic_iid()
    renamed.var_names = [f"other_{i}" for i in range(100)]
    new_state = field.transfer_field(state, renamed, extend_categories=True, unknown_kwarg=1)
    np.testing.assert_array_equal(new_state["column_names"], renamed.var_names)


def test_layer_field_corrects_data_format(adata):
    adata.X = np.asfortranarray(adata.X)
    assert not adata.X.flags["C_CONTIGUOUS"]
    LayerField("X", None).register_field(adata)
    assert adata.X.flags["C_CONTIGUOUS"]

    adata.X = sp.csc_matrix(adata.X)
    with pytest.warns(UserWarning, match=re.escape("CSR")):
        LayerField("X", None).register_field(adata)
    adata.X = sp.csr_matrix(adata.X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        LayerField("X", None).register_field(adata)


def test_layer_field_sparse_and_empty():
    empty = AnnData(X=sp.csr_matrix((3, 4), dtype=np.float32))
    state = LayerField("X", None).register_field(empty)
    assert state["n_vars"] == 4


# -- NumericalObsField -----------------------------------------------------------------------


def test_numerical_obs_field(adata):
    with pytest.raises(
        ValueError, match=re.escape("`attr_key` cannot be `None` if `required=True`")
    ):
        NumericalObsField("size_factor", None)
    empty = NumericalObsField("size_factor", None, required=False)
    assert empty.is_empty and empty.get_data_registry() == {}
    with pytest.raises(AssertionError, match=re.escape("The size_factor field is empty.")):
        empty.get_field_data(adata)

    adata.obs["sf"] = np.linspace(1, 2, adata.n_obs)
    field = NumericalObsField("size_factor", "sf")
    assert field.get_data_registry() == {"attr_name": "obs", "attr_key": "sf"}
    assert field.register_field(adata) == {}
    assert field.get_summary_stats({}) == {}
    assert field.get_field_data(adata).shape == (400, 1)

    target = synthetic_iid()
    with pytest.raises(KeyError, match=re.escape("sf not found in adata.obs.")):
        field.transfer_field({}, target)
    target.obs["sf"] = "big"
    with pytest.raises(ValueError, match=r"adata.obs\['sf'\] must be numeric"):
        field.transfer_field({}, target)
    target.obs["sf"] = np.ones(target.n_obs, dtype=np.int32)
    assert field.transfer_field({}, target) == {}


def test_numerical_var_field(adata):
    adata.var["w"] = np.arange(adata.n_vars, dtype=float)
    field = NumericalVarField("gene_weight", "w")
    assert field.attr_name == "var"
    field.register_field(adata)
    assert field.get_field_data(adata).shape == (100, 1)
    with pytest.raises(KeyError, match=re.escape("nope not found in adata.var.")):
        NumericalVarField("gene_weight", "nope").register_field(adata)


# -- CategoricalObsField ---------------------------------------------------------------------


def test_categorical_obs_field_strings_sorted_and_int8():
    ad = small(group=["b", "a", "c", "a", "b", "c", "a", "b", "c", "a", "b", "c"])
    field = CategoricalObsField("batch", "group")
    assert field.attr_key == "_scvi_batch" and not field.is_default
    state = field.register_field(ad)
    np.testing.assert_array_equal(state["categorical_mapping"], ["a", "b", "c"])
    assert state["categorical_mapping"].dtype == object
    assert state["original_key"] == "group"
    assert ad.obs["_scvi_batch"].dtype == np.int8
    np.testing.assert_array_equal(ad.obs["_scvi_batch"], [1, 0, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2])
    assert field.get_summary_stats(state) == {"n_batch": 3}
    table = field.view_state_registry(state)
    text = str(table)
    assert "batch State Registry" in text and "adata.obs['group']" in text


def test_categorical_obs_field_keeps_pandas_categorical_order():
    values = pd.Categorical(
        ["x", "z", "x", "z", "x", "z"], categories=["z", "unused", "x"], ordered=False
    )
    ad = small(n_obs=6, group=values)
    field = CategoricalObsField("labels", "group")
    state = field.register_field(ad)
    np.testing.assert_array_equal(state["categorical_mapping"], ["z", "unused", "x"])
    np.testing.assert_array_equal(ad.obs["_scvi_labels"], [2, 0, 2, 0, 2, 0])
    assert field.get_summary_stats(state) == {"n_labels": 3}  # unused category counted


@pytest.mark.filterwarnings("ignore:Category .* has fewer than 3 cells")
def test_categorical_obs_field_numeric_and_bool_columns():
    ad = small(n_obs=6, g=[10, 2, 10, 2, 7, 7], flag=[True, False] * 3)
    state = CategoricalObsField("batch", "g").register_field(ad)
    np.testing.assert_array_equal(state["categorical_mapping"], [2, 7, 10])
    assert state["categorical_mapping"].dtype == np.int64
    np.testing.assert_array_equal(ad.obs["_scvi_batch"], [2, 0, 2, 0, 1, 1])
    state = CategoricalObsField("labels", "flag").register_field(ad)
    np.testing.assert_array_equal(state["categorical_mapping"], [False, True])


def test_categorical_obs_field_default_is_zeros(adata):
    field = CategoricalObsField("labels", None)
    assert field.is_default
    state = field.register_field(adata)
    assert state["original_key"] == "_scvi_labels"
    np.testing.assert_array_equal(state["categorical_mapping"], [0])
    assert adata.obs["_scvi_labels"].dtype == np.int8
    assert (adata.obs["_scvi_labels"] == 0).all()
    target = synthetic_iid()
    new = field.transfer_field(state, target)
    np.testing.assert_array_equal(new["categorical_mapping"], [0])
    assert (target.obs["_scvi_labels"] == 0).all()


def test_categorical_obs_field_errors(adata):
    with pytest.raises(KeyError, match=re.escape("nope not found in adata.obs.")):
        CategoricalObsField("batch", "nope").register_field(adata)
    values = adata.obs["labels"].astype(object).to_numpy()
    values[[5, 7]] = None
    adata.obs["with_nan"] = values
    with pytest.raises(ValueError, match=r'Making .obs\["with_nan"\] categorical failed.*NaN'):
        CategoricalObsField("labels", "with_nan").register_field(adata)
    adata.obs["cat_nan"] = pd.Categorical(values)
    with pytest.raises(ValueError, match=r'Making .obs\["cat_nan"\] categorical failed'):
        CategoricalObsField("labels", "cat_nan").register_field(adata)


def test_categorical_obs_field_few_cells_warning():
    ad = small(n_obs=7, g=["a", "a", "a", "b", "b", "b", "c"])
    with pytest.warns(
        UserWarning,
        match=r"Category 2 in adata.obs\['_scvi_batch'\] has fewer than 3 cells. Models may not "
        "train properly.",
    ):
        CategoricalObsField("batch", "g").register_field(ad)


@pytest.mark.filterwarnings("ignore:Category .* has fewer than 3 cells")
def test_categorical_codes_widen_like_pandas():
    n = 400
    ad = small(n_obs=n, n_vars=2, g=[f"c{i:03d}" for i in range(200)] * 2)
    state = CategoricalObsField("batch", "g").register_field(ad)
    assert len(state["categorical_mapping"]) == 200
    assert ad.obs["_scvi_batch"].dtype == np.int16
    np.testing.assert_array_equal(ad.obs["_scvi_batch"], list(range(200)) * 2)


def test_categorical_obs_field_transfer(adata):
    field = CategoricalObsField("batch", "batch")
    state = field.register_field(adata)

    subset = synthetic_iid()
    subset.obs["batch"] = pd.Categorical(["batch_1"] * 400)
    new = field.transfer_field(state, subset)
    np.testing.assert_array_equal(subset.obs["_scvi_batch"], 1)
    np.testing.assert_array_equal(new["categorical_mapping"], ["batch_0", "batch_1"])
    assert field.get_summary_stats(new) == {"n_batch": 2}

    # a plain string column with categories in another order still gets the source codes
    strings = synthetic_iid()
    strings.obs["batch"] = np.where(np.arange(400) % 2, "batch_0", "batch_1").astype(object)
    field.transfer_field(state, strings)
    np.testing.assert_array_equal(strings.obs["_scvi_batch"], np.arange(400) % 2 == 0)

    unseen = synthetic_iid()
    unseen.obs["batch"] = pd.Categorical(["batch_0"] * 390 + ["new_b"] * 5 + ["new_a"] * 5)
    with pytest.raises(ValueError, match=re.escape("Category new_b not found in source registry")):
        field.transfer_field(state, unseen)
    extended = field.transfer_field(state, unseen, extend_categories=True)
    np.testing.assert_array_equal(
        extended["categorical_mapping"], ["batch_0", "batch_1", "new_b", "new_a"]
    )
    np.testing.assert_array_equal(unseen.obs["_scvi_batch"], [0] * 390 + [2] * 5 + [3] * 5)

    # an unused unseen category is fine
    unused = synthetic_iid()
    unused.obs["batch"] = unused.obs["batch"].cat.add_categories(["never"])
    field.transfer_field(state, unused)

    nan = synthetic_iid()
    nan.obs["batch"] = nan.obs["batch"].astype(object)
    nan.obs.loc[nan.obs_names[0], "batch"] = np.nan
    with pytest.raises(ValueError, match=r'Making .obs\["batch"\] categorical failed'):
        field.transfer_field(state, nan, extend_categories=True)

    missing = synthetic_iid()
    del missing.obs["batch"]
    with pytest.raises(KeyError, match=re.escape("batch not found in adata.obs.")):
        field.transfer_field(state, missing)


def test_categorical_transfer_with_falsy_unknown_category():
    ad = small(n_obs=6, g=[1, 1, 1, 2, 2, 2])
    field = CategoricalObsField("batch", "g")
    state = field.register_field(ad)
    target = small(n_obs=6, g=[0, 1, 1, 2, 2, 2])
    with pytest.raises(ValueError, match=re.escape("Category 0 not found in source registry")):
        field.transfer_field(state, target)


def test_categorical_var_field():
    ad = small(n_obs=6, n_vars=6)
    ad.var["module"] = ["m1", "m2"] * 3
    field = CategoricalVarField("gene_module", "module")
    assert field.attr_name == "var"
    state = field.register_field(ad)
    np.testing.assert_array_equal(state["categorical_mapping"], ["m1", "m2"])
    np.testing.assert_array_equal(ad.var["_scvi_gene_module"], [0, 1] * 3)


@pytest.mark.filterwarnings("ignore:Category .* has fewer than 3 cells")
def test_labels_with_unlabeled_obs_field():
    ad = small(n_obs=12, lab=["Unknown", "a", "b", "c"] * 3)
    field = LabelsWithUnlabeledObsField("labels", "lab", "Unknown")
    state = field.register_field(ad)
    # "Unknown" sorts first; it swaps places with the last category
    np.testing.assert_array_equal(state["categorical_mapping"], ["c", "a", "b", "Unknown"])
    assert state["unlabeled_category"] == "Unknown"
    np.testing.assert_array_equal(ad.obs["_scvi_labels"], [3, 1, 2, 0] * 3)

    absent = small(n_obs=9, lab=["a", "b", "b"] * 3)
    state = LabelsWithUnlabeledObsField("labels", "lab", "Unknown").register_field(absent)
    np.testing.assert_array_equal(state["categorical_mapping"], ["a", "b", "Unknown"])

    target = small(n_obs=9)
    with pytest.warns(UserWarning, match=re.escape("Missing labels key lab")):
        new = field.transfer_field(state, target, allow_missing_labels=True)
    np.testing.assert_array_equal(new["categorical_mapping"], ["a", "b", "Unknown"])
    np.testing.assert_array_equal(target.obs["_scvi_labels"], 2)
    new = field.transfer_field(field.register_field(ad), small(n_obs=3, lab=["a", "c", "c"]))
    np.testing.assert_array_equal(new["categorical_mapping"], ["c", "a", "b", "Unknown"])


# -- joint fields --------------------------------------------------------------------------


def test_categorical_joint_obs_field(adata):
    empty = CategoricalJointObsField("extra_categorical_covs", None)
    assert empty.is_empty and empty.get_data_registry() == {}
    assert empty.get_summary_stats({}) == {"n_extra_categorical_covs": 0}

    adata.obs["cat"] = np.where(np.arange(400) % 2, "B", "A")
    adata.obs["cat2"] = pd.Categorical(np.array(["x", "y", "z"])[np.arange(400) % 3])
    field = CategoricalJointObsField("extra_categorical_covs", ["cat", "cat2"])
    assert field.attr_key == "_scvi_extra_categorical_covs" and field.attr_name == "obsm"
    state = field.register_field(adata)
    np.testing.assert_array_equal(state["mappings"]["cat"], ["A", "B"])
    np.testing.assert_array_equal(state["mappings"]["cat2"], ["x", "y", "z"])
    assert state["field_keys"] == ["cat", "cat2"]
    assert state["n_cats_per_key"] == [2, 3]
    frame = adata.obsm["_scvi_extra_categorical_covs"]
    np.testing.assert_array_equal(frame["cat"], np.arange(400) % 2)
    np.testing.assert_array_equal(frame["cat2"], np.arange(400) % 3)
    assert field.get_summary_stats(state) == {"n_extra_categorical_covs": 2}
    assert "adata.obs['cat2']" in str(field.view_state_registry(state))

    target = synthetic_iid()
    target.obs["cat"] = np.where(np.arange(400) % 2, "A", "B")
    target.obs["cat2"] = "y"
    field.transfer_field(state, target)
    np.testing.assert_array_equal(
        target.obsm["_scvi_extra_categorical_covs"]["cat"], 1 - np.arange(400) % 2
    )
    np.testing.assert_array_equal(target.obsm["_scvi_extra_categorical_covs"]["cat2"], 1)

    target.obs["cat"] = "C"
    with pytest.raises(
        ValueError,
        match=r"Making .obs\[\"cat\"\] categorical failed. Expected categories: \['A' 'B'\]. "
        r"Received categories: Index\(\['C'\], dtype='object'\).",
    ):
        field.transfer_field(state, target)
    target.obs["cat"] = np.where(np.arange(400) % 2, "D", "C")
    new = field.transfer_field(state, target, extend_categories=True)
    np.testing.assert_array_equal(new["mappings"]["cat"], ["A", "B", "C", "D"])
    assert new["n_cats_per_key"] == [4, 3]

    del target.obs["cat2"]
    with pytest.raises(KeyError, match=re.escape("cat2 not found in adata.obs.")):
        field.transfer_field(state, target)


def test_numerical_joint_obs_field(adata):
    empty = NumericalJointObsField("extra_continuous_covs", None)
    assert empty.is_empty
    assert empty.get_summary_stats({}) == {"n_extra_continuous_covs": 0}

    adata.obs["c1"] = np.linspace(0, 1, 400)
    adata.obs["c2"] = np.arange(400)
    field = NumericalJointObsField("extra_continuous_covs", ["c1", "c2"])
    state = field.register_field(adata)
    np.testing.assert_array_equal(state["columns"], ["c1", "c2"])
    frame = adata.obsm["_scvi_extra_continuous_covs"]
    np.testing.assert_array_equal(frame.to_numpy(), adata.obs[["c1", "c2"]].to_numpy())
    assert field.get_summary_stats(state) == {"n_extra_continuous_covs": 2}
    assert "adata.obs['c2']" in str(field.view_state_registry(state))

    target = synthetic_iid()
    with pytest.raises(KeyError, match=re.escape("c1 not found in adata.obs.")):
        field.transfer_field(state, target)
    target.obs["c1"] = "a"
    target.obs["c2"] = 1.0
    with pytest.raises(ValueError, match=r"adata.obs\['c1'\] must be numeric"):
        field.transfer_field(state, target)
    target.obs["c1"] = 2.0
    field.transfer_field(state, target)
    assert (target.obsm["_scvi_extra_continuous_covs"]["c1"] == 2.0).all()


@pytest.mark.filterwarnings("ignore:Category .* has fewer than 3 cells")
def test_joint_var_fields():
    ad = small(n_obs=4, n_vars=6)
    ad.var["kind"] = ["a", "b", "c"] * 2
    ad.var["score"] = np.arange(6.0)
    state = CategoricalJointVarField("gene_cats", ["kind"]).register_field(ad)
    assert state["n_cats_per_key"] == [3]
    np.testing.assert_array_equal(ad.varm["_scvi_gene_cats"]["kind"], [0, 1, 2] * 2)
    from scvi_rs.data.fields import NumericalJointVarField

    NumericalJointVarField("gene_conts", ["score"]).register_field(ad)
    assert list(ad.varm["_scvi_gene_conts"].columns) == ["score"]


# -- obsm / varm fields --------------------------------------------------------------------


def test_obsm_field(adata):
    field = ObsmField("proteins", "protein_expression", is_count_data=True)
    assert field.get_data_registry() == {"attr_name": "obsm", "attr_key": "protein_expression"}
    state = field.register_field(adata)
    np.testing.assert_array_equal(state["column_names"], np.arange(100))
    assert field.get_summary_stats(state) == {"n_proteins": 100}

    with_names = ObsmField("proteins", "protein_expression", colnames_uns_key="protein_names")
    state = with_names.register_field(adata)
    np.testing.assert_array_equal(state["column_names"], adata.uns["protein_names"])

    adata.obsm["frame"] = pd.DataFrame(
        np.ones((400, 3)), index=adata.obs_names, columns=["p", "q", "r"]
    )
    frame_field = ObsmField("frame", "frame")
    state = frame_field.register_field(adata)
    assert state["column_names"] == ["p", "q", "r"]

    with pytest.raises(KeyError, match=re.escape("nope not found in adata.obsm.")):
        ObsmField("x", "nope").register_field(adata)

    adata.obsm["neg"] = -np.ones((400, 2))
    with pytest.warns(UserWarning, match=r"adata.obsm\['neg'\] does not contain unnormalized"):
        ObsmField("neg", "neg", is_count_data=True).register_field(adata)

    # transfer
    target = synthetic_iid(n_proteins=10)
    with pytest.raises(ValueError, match=re.escape("which does not match the source")):
        field.transfer_field({"column_names": np.arange(100)}, target)
    target = synthetic_iid()
    new = field.transfer_field({"column_names": np.arange(100)}, target)
    np.testing.assert_array_equal(new["column_names"], np.arange(100))
    target.obsm["frame"] = pd.DataFrame(
        np.ones((400, 3)), index=target.obs_names, columns=["p", "q", "s"]
    )
    with pytest.raises(ValueError, match=re.escape("column names do not match")):
        frame_field.transfer_field({"column_names": ["p", "q", "r"]}, target)


def test_varm_field():
    ad = small(n_obs=4, n_vars=6)
    ad.varm["loadings"] = np.ones((6, 2))
    state = VarmField("loadings", "loadings").register_field(ad)
    np.testing.assert_array_equal(state["column_names"], [0, 1])


def test_protein_obsm_field(adata):
    batch = CategoricalObsField("batch", "batch")
    with pytest.raises(ValueError, match=re.escape("batch_field")):
        ProteinObsmField("proteins", "protein_expression")
    batch.register_field(adata)
    field = ProteinObsmField(
        "proteins", "protein_expression", use_batch_mask=True, batch_field=batch
    )
    state = field.register_field(adata)
    assert "protein_batch_mask" not in state
    adata.obsm["protein_expression"][:200, 3] = 0
    state = field.register_field(adata)
    mask = state["protein_batch_mask"]
    assert set(mask) == {"0", "1"}
    assert not mask["0"][3] and mask["1"][3] and mask["0"].sum() == 99
    no_mask = ProteinObsmField("proteins", "protein_expression", use_batch_mask=False)
    assert "protein_batch_mask" not in no_mask.register_field(adata)


def test_string_uns_field(adata):
    adata.uns["kind"] = "rna"
    field = StringUnsField("kind", "kind")
    assert field.get_data_registry() == {"attr_name": "uns", "attr_key": "kind"}
    assert field.register_field(adata) == {}
    assert field.get_field_data(adata) == "rna"
    with pytest.raises(KeyError, match=re.escape("other not found in adata.uns.")):
        StringUnsField("kind", "other").register_field(adata)
    assert StringUnsField("kind", None, required=False).is_empty


def test_fields_through_a_manager_and_transfer(adata):
    adata.obs["c"] = 1.5
    batch = CategoricalObsField("batch", "batch")
    fields = [
        LayerField("X", None),
        batch,
        ProteinObsmField("proteins", "protein_expression", batch_field=batch),
        ObsmField("accessibility", "accessibility"),
        NumericalJointObsField("cont", ["c"]),
    ]
    manager = AnnDataManager(fields)
    manager.register_fields(adata)
    assert manager.summary_stats.keys() == [
        "n_accessibility",
        "n_batch",
        "n_cells",
        "n_cont",
        "n_proteins",
        "n_vars",
    ]
    target = synthetic_iid()
    target.obs["c"] = 2.0
    new = manager.transfer_fields(target)
    assert new.summary_stats == manager.summary_stats
