"""synthetic_iid (spec §2.7) and the attrdict semantics of §2.2."""
# ruff: noqa: NPY002 - these tests exercise numpy's global legacy RNG on purpose

from __future__ import annotations

import pickle
import re

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from scvi_rs.data import synthetic_iid
from scvi_rs.utils import attrdict


def test_synthetic_iid_defaults():
    np.random.seed(0)
    adata = synthetic_iid()
    assert adata.shape == (400, 100)
    assert isinstance(adata.X, np.ndarray) and adata.X.dtype == np.int64
    assert list(adata.obs_names[:3]) == ["0", "1", "2"] and adata.obs_names[-1] == "399"
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"] and adata.var_names[-1] == "gene_99"
    assert list(adata.obs.columns) == ["batch", "labels"]
    batch = adata.obs["batch"]
    assert isinstance(batch.dtype, pd.CategoricalDtype)
    assert list(batch.cat.categories) == ["batch_0", "batch_1"]
    assert (batch.iloc[:200] == "batch_0").all() and (batch.iloc[200:] == "batch_1").all()
    labels = adata.obs["labels"]
    assert isinstance(labels.dtype, pd.CategoricalDtype)
    assert set(labels.cat.categories) <= {"label_0", "label_1", "label_2"}
    assert list(adata.obsm.keys()) == ["accessibility", "protein_expression"]
    for key in ("accessibility", "protein_expression"):
        assert adata.obsm[key].shape == (400, 100) and adata.obsm[key].dtype == np.int64
    names = adata.uns["protein_names"]
    assert names.dtype == np.dtype("<U10") and names[0] == "protein_0" and len(names) == 100
    assert list(adata.uns.keys()) == ["protein_names"]
    assert not any(k.startswith("_scvi") for k in adata.uns)
    zeros = (adata.X == 0).mean()
    assert 0.25 < zeros < 0.36  # each entry kept with probability dropout_ratio=0.7
    assert 9 < adata.X[adata.X > 0].mean() < 14


def test_synthetic_iid_draw_order_matches_the_reference_stream():
    np.random.seed(42)
    adata = synthetic_iid(batch_size=10, n_genes=7, n_proteins=3, n_regions=4, n_labels=2)
    np.random.seed(42)
    rna = np.random.negative_binomial(5, 0.3, size=(20, 7))
    rna = rna * np.random.binomial(1, 0.7, size=(20, 7))
    protein = np.random.negative_binomial(5, 0.3, size=(20, 3))
    acc = np.random.negative_binomial(5, 0.3, size=(20, 4))
    acc = acc * np.random.binomial(1, 0.7, size=(20, 4))
    labels = np.random.randint(0, 2, size=(20,))
    np.testing.assert_array_equal(adata.X, rna)
    np.testing.assert_array_equal(adata.obsm["protein_expression"], protein)
    np.testing.assert_array_equal(adata.obsm["accessibility"], acc)
    np.testing.assert_array_equal(adata.obs["labels"], [f"label_{i}" for i in labels])


def test_synthetic_iid_is_reproducible_from_the_seed():
    np.random.seed(7)
    a = synthetic_iid()
    np.random.seed(7)
    b = synthetic_iid()
    np.testing.assert_array_equal(a.X, b.X)
    assert not np.array_equal(a.X, synthetic_iid().X)


def test_synthetic_iid_options():
    adata = synthetic_iid(
        batch_size=5,
        n_genes=3,
        n_proteins=0,
        n_regions=0,
        n_batches=12,
        n_labels=0,
        sparse_format="csr_matrix",
        generate_coordinates=True,
    )
    assert adata.shape == (60, 3)
    assert sp.issparse(adata.X) and adata.X.format == "csr"
    assert list(adata.obs.columns) == ["batch"]
    assert list(adata.obsm.keys()) == ["coordinates"]
    assert adata.obsm["coordinates"].shape == (60, 2)
    assert "protein_names" not in adata.uns
    # lexicographic categories: batch_10 sorts before batch_2
    assert list(adata.obs["batch"].cat.categories[:4]) == [
        "batch_0",
        "batch_1",
        "batch_10",
        "batch_11",
    ]
    csc = synthetic_iid(batch_size=4, sparse_format="csc_matrix")
    assert csc.X.format == "csc" and csc.obsm["protein_expression"].format == "csc"
    normal = synthetic_iid(batch_size=4, rna_dist="normal", batch_key="b", labels_key="l")
    assert normal.X.dtype == np.float64
    assert list(normal.obs.columns) == ["b", "l"]


def test_synthetic_iid_errors():
    with pytest.raises(ValueError, match=re.escape("`n_batches` must be greater than 0")):
        synthetic_iid(n_batches=0)
    with pytest.raises(ValueError, match=re.escape("`n_genes` must be greater than 0")):
        synthetic_iid(n_genes=0)


# -- attrdict --------------------------------------------------------------------------------


def test_attrdict_access_and_sorting():
    ad = attrdict({"n_vars": 100, "n_batch": 2, "nested": {"b": 1, "a": [1, 2]}})
    assert ad.n_batch == 2 and ad["n_vars"] == 100
    assert ad.keys() == ["n_batch", "n_vars", "nested"]
    assert list(ad) == ["n_batch", "n_vars", "nested"]
    assert "n_vars" in ad and "missing" not in ad
    assert ad.get("missing", 5) == 5
    assert isinstance(ad.nested, attrdict)
    assert ad.nested.a == (1, 2)
    assert dict(ad)["n_batch"] == 2
    assert len(ad) == 3
    assert ad.to_dict() == {"n_vars": 100, "n_batch": 2, "nested": {"b": 1, "a": [1, 2]}}
    with pytest.raises(AttributeError):
        ad.missing  # noqa: B018
    with pytest.raises(KeyError):
        ad["missing"]


def test_attrdict_is_immutable_and_keeps_arrays():
    array = np.array(["a", "b"], dtype=object)
    ad = attrdict({"mapping": array})
    assert ad.mapping is array
    with pytest.raises(AttributeError):
        ad.mapping = 1
    with pytest.raises(AttributeError):
        ad["mapping"] = 1
    with pytest.raises(AttributeError):
        del ad["mapping"]
    source = {"x": 1}
    frozen = attrdict(source)
    source["x"] = 2
    assert frozen.x == 1


def test_attrdict_pickle_eq_repr():
    ad = attrdict({"b": 2, "a": {"c": [1]}})
    again = pickle.loads(pickle.dumps(ad))
    assert again == ad and isinstance(again, attrdict)
    assert ad == {"a": {"c": (1,)}, "b": 2}
    assert repr(ad).splitlines()[0] == "a:"
    assert "b: 2" in repr(ad)
