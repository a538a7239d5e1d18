"""The ids in ``adata.uns`` are made and checked by the Rust core."""

from __future__ import annotations

import uuid

import pytest

import scvi_rs
from scvi_rs.data._uuids import new_uuid, read_uuid


def test_new_uuids_are_uuid4_strings():
    ids = {new_uuid() for _ in range(100)}
    assert len(ids) == 100
    for text in ids:
        assert uuid.UUID(text).version == 4
        assert text == text.lower()


@pytest.mark.parametrize("bad", ["not-a-uuid", "1234", 42, "0" * 36, None])
def test_a_malformed_id_is_refused_naming_the_key(bad):
    with pytest.raises(ValueError, match=r"adata.uns\['_scvi_uuid'\] = .* is not a UUID"):
        read_uuid({"_scvi_uuid": bad}, "_scvi_uuid")


def test_absent_and_valid_ids():
    assert read_uuid({}, "_scvi_uuid") is None
    text = str(uuid.uuid4()).upper()
    assert read_uuid({"_scvi_uuid": text}, "_scvi_uuid") == text


def test_edited_ids_on_a_set_up_anndata_are_clear_errors():
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid(batch_size=20, n_genes=10)
    scvi_rs.model.SCVI.setup_anndata(adata)
    assert read_uuid(adata.uns, "_scvi_uuid") is not None
    assert read_uuid(adata.uns, "_scvi_manager_uuid") is not None
    model = scvi_rs.model.SCVI(adata, n_latent=2)
    adata.uns["_scvi_uuid"] = "edited by hand"
    with pytest.raises(ValueError, match="is not a UUID"):
        model.get_anndata_manager(adata)
    adata.uns["_scvi_uuid"] = model.adata_manager.adata_uuid
    adata.uns["_scvi_manager_uuid"] = 7
    with pytest.raises(ValueError, match=r"_scvi_manager_uuid'\] = 7 is not a UUID"):
        model.adata_manager.validate()
