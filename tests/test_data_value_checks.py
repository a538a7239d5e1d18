"""Values no model can train on are refused at registration, naming where they are."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import scvi_rs


def _float_adata(sparse: bool):
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=50, n_genes=40)
    x = adata.X.astype(np.float32)
    adata.X = sp.csr_matrix(x) if sparse else x
    return adata


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize(
    ("bad", "kind"), [(np.nan, "NaN"), (np.inf, r"infinite \(inf\)"), (-3.0, "negative")]
)
def test_bad_counts_are_refused_with_their_cell_and_gene(sparse, bad, kind):
    adata = _float_adata(sparse)
    if sparse:
        adata.X.data[5] = bad
        row = int(np.searchsorted(adata.X.indptr, 5, side="right") - 1)
        where = f"cell {row}, gene {adata.X.indices[5]}"
    else:
        adata.X[7, 3] = bad
        where = "cell 7, gene 3"
    with pytest.raises(ValueError, match=rf"adata.X holds a {kind} value .* at {where}\)"):
        scvi_rs.model.SCVI.setup_anndata(adata)


def test_bad_counts_in_a_layer_are_named_by_layer():
    adata = _float_adata(sparse=False)
    adata.layers["counts"] = adata.X.copy()
    adata.layers["counts"][0, 0] = -1
    with pytest.raises(ValueError, match=r"adata.layers\[counts\] holds a negative"):
        scvi_rs.model.SCVI.setup_anndata(adata, layer="counts")


def test_normalized_but_finite_data_only_warn():
    adata = _float_adata(sparse=True)
    adata.X.data *= 0.37
    with pytest.warns(UserWarning, match="unnormalized count data"):
        scvi_rs.model.SCVI.setup_anndata(adata)


def test_non_finite_covariate_is_refused():
    adata = _float_adata(sparse=False)
    adata.obs["depth"] = np.linspace(0, 1, adata.n_obs)
    adata.obs.loc[adata.obs.index[11], "depth"] = np.nan
    with pytest.raises(ValueError, match=r"adata.obs\['depth'\] holds 1 non-finite .* row 11"):
        scvi_rs.model.SCVI.setup_anndata(adata, continuous_covariate_keys=["depth"])


def test_query_with_bad_counts_is_refused_on_transfer():
    adata = _float_adata(sparse=False)
    scvi_rs.model.SCVI.setup_anndata(adata, batch_key="batch")
    model = scvi_rs.model.SCVI(adata, n_latent=2)
    model.train(max_epochs=1)
    query = adata.copy()
    query.X[2, 2] = np.inf
    del query.uns["_scvi_uuid"]
    with pytest.raises(ValueError, match="infinite"):
        model.get_latent_representation(query)


def test_protein_layers_allow_unmeasured_nan_but_not_negative():
    from scvi_rs.data.fields._protein import ProteinLayerField

    adata = _float_adata(sparse=False)
    proteins = np.abs(np.random.default_rng(0).normal(size=adata.shape)).astype(np.float32)
    proteins[:10] = np.nan  # cells of a batch that did not measure these proteins
    adata.layers["protein"] = proteins
    field = ProteinLayerField("proteins", "protein", use_batch_mask=False)
    field.register_field(adata)
    adata.layers["protein"][20, 1] = -1.0
    with pytest.raises(ValueError, match="negative"):
        field.register_field(adata)
