"""``deregister_manager``: which managers leave the class and instance stores, and errors."""

from __future__ import annotations

import pytest

import scvi_rs as scvi
from scvi_rs.model import SCVI


def _two_setups():
    first = scvi.data.synthetic_iid(batch_size=20, n_genes=12)
    second = scvi.data.synthetic_iid(batch_size=20, n_genes=12)
    SCVI.setup_anndata(first)
    SCVI.setup_anndata(second)
    model = SCVI(first, n_latent=2, n_hidden=8)
    first_id = model._get_most_recent_anndata_manager(first).adata_uuid
    second_id = model._get_most_recent_anndata_manager(second).adata_uuid
    return model, first, second, first_id, second_id


def test_default_keeps_only_the_models_own_manager():
    model, _, second, first_id, second_id = _two_setups()
    model.deregister_manager()
    assert first_id in SCVI._setup_adata_manager_store
    assert first_id in SCVI._per_instance_manager_store[model.id]
    assert second_id not in SCVI._setup_adata_manager_store
    with pytest.raises(ValueError, match="setup_anndata"):
        model.deregister_manager(second)


def test_named_adata_is_removed_once_then_refused():
    model, first, second, first_id, second_id = _two_setups()
    model.deregister_manager(first)
    assert first_id not in SCVI._setup_adata_manager_store
    assert first_id not in SCVI._per_instance_manager_store[model.id]
    assert second_id in SCVI._setup_adata_manager_store
    model.deregister_manager(second)
    assert second_id not in SCVI._setup_adata_manager_store
    for adata in (first, second):
        with pytest.raises(ValueError, match="setup_anndata"):
            model.deregister_manager(adata)


def test_never_set_up_adata_is_refused():
    model, *_ = _two_setups()
    stranger = scvi.data.synthetic_iid(batch_size=10, n_genes=12)
    with pytest.raises(ValueError, match=r"SCVI\.setup_anndata"):
        model.deregister_manager(stranger)
