"""The "Constructing a high-level model" tutorial (scvi-tools), cell by cell, on scvi_rs.

Only the import name differs from the tutorial: ``import scvi_rs as scvi`` and
``from scvi_rs... import``. Notebook-only lines (``!pip``, ``%config``, Colab installs) and
pseudocode cells are left out; every executable cell runs in order. Run it with
``python examples/seed_tutorial.py``; ``tests/test_seed_tutorial.py`` runs it too.
"""

import os
import tempfile
from collections.abc import Sequence

import numpy as np
import torch
from anndata import AnnData

import scvi_rs as scvi
from scvi_rs import REGISTRY_KEYS
from scvi_rs.data import AnnDataManager
from scvi_rs.data.fields import (
    CategoricalJointObsField,
    CategoricalObsField,
    LayerField,
    NumericalJointObsField,
    NumericalObsField,
)
from scvi_rs.model.base import BaseModelClass, UnsupervisedTrainingMixin, VAEMixin
from scvi_rs.module import VAE

scvi.settings.seed = 0
print("Last run with scvi-tools version:", scvi.__version__)

torch.set_float32_matmul_precision("high")
save_dir = tempfile.TemporaryDirectory()


# -- Baseline version of the SCVI class ------------------------------------------------
class SCVI(UnsupervisedTrainingMixin, BaseModelClass):
    """single-cell Variational Inference [Lopez18]_."""

    def __init__(
        self,
        adata: AnnData,
        n_latent: int = 10,
        **model_kwargs,
    ):
        super().__init__(adata)

        self.module = VAE(
            n_input=self.summary_stats["n_vars"],
            n_batch=self.summary_stats["n_batch"],
            n_latent=n_latent,
            **model_kwargs,
        )
        self._model_summary_string = (
            f"SCVI Model with the following params: \nn_latent: {n_latent}"
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        batch_key: str | None = None,
        layer: str | None = None,
        **kwargs,
    ) -> AnnData | None:
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            # Dummy fields required for VAE class.
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, None, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, None),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, None),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)


adata = scvi.data.synthetic_iid()
print(adata)

SCVI.setup_anndata(adata, batch_key="batch")
print(f"adata UUID (assigned by setup_anndata): {adata.uns['_scvi_uuid']}")
print(f"AnnDataManager: {SCVI._setup_adata_manager_store[adata.uns['_scvi_uuid']]}")

model = SCVI(adata)
print(model)

# -- More AnnDataManager details -----------------------------------------------------------
print(f"model instance UUID: {model.id}")
print(f"adata UUID: {adata.uns['_scvi_uuid']}")
print(
    "AnnDataManager for adata: "
    f"{SCVI._per_instance_manager_store[model.id][adata.uns['_scvi_uuid']]}"
)  # { model instance UUID: { adata UUID: AnnDataManager } }

adata2 = scvi.data.synthetic_iid()
print(model._validate_anndata(adata2))

print(f"adata2 UUID: {adata.uns['_scvi_uuid']}")
print(f"Model instance specific manager store: {SCVI._per_instance_manager_store[model.id]}")

SCVI.setup_anndata(adata, batch_key=None)  # No batch correction.
model2 = SCVI(adata)
print(f"Manager UUID: {model2.adata_manager.id}")
print(f"Last setup with manager UUID: {adata.uns['_scvi_manager_uuid']}")
print(f"Encoded batch obs field: {adata.obs['_scvi_batch']}")

model._validate_anndata(adata)  # Replays registration on adata
print(f"Manager UUID: {model.adata_manager.id}")
print(f"Last setup with manager UUID: {adata.uns['_scvi_manager_uuid']}")
print(f"Encoded batch obs field: {adata.obs['_scvi_batch']}")

# -- The train method ----------------------------------------------------------------------
model.train(max_epochs=20)

# -- Save and load -------------------------------------------------------------------------
model_dir = os.path.join(save_dir.name, "saved_model")
model.save(model_dir, save_anndata=True)

model = SCVI.load(model_dir)


# -- Writing methods to query the model ----------------------------------------------------
@torch.inference_mode()
def get_latent_representation(
    self,
    adata: AnnData | None = None,
    indices: Sequence[int] | None = None,
    batch_size: int | None = None,
) -> np.ndarray:
    r"""Return the latent representation for each cell.

    Parameters
    ----------
    adata
        AnnData object with equivalent structure to initial AnnData. If `None`, defaults to the
        AnnData object used to initialize the model.
    indices
        Indices of cells in adata to use. If `None`, all cells are used.
    batch_size
        Minibatch size for data loading into model. Defaults to `scvi.settings.batch_size`.

    Returns
    -------
    latent_representation : np.ndarray
        Low-dimensional representation for each cell
    """
    if self.is_trained_ is False:
        raise RuntimeError("Please train the model first.")

    adata = self._validate_anndata(adata)
    dataloader = self._make_dataloader(adata=adata, indices=indices, batch_size=batch_size)
    latent = []
    for tensors in dataloader:
        inference_inputs = self.module._get_inference_input(tensors)
        outputs = self.module.inference(**inference_inputs)
        qz_m = outputs["qz_m"]

        latent += [qz_m.cpu()]
    return torch.cat(latent).numpy()


# The tutorial defines the function above but never attaches it; we also call it, since
# its `_make_dataloader` and `outputs["qz_m"]` are what the tutorial teaches.
custom_latent = get_latent_representation(model)
print(custom_latent.shape)

# -- Mixing in pre-coded features ----------------------------------------------------------
try:
    model.get_latent_representation()
except AttributeError:
    print("This function does not exist")


class SCVI(VAEMixin, UnsupervisedTrainingMixin, BaseModelClass):
    """single-cell Variational Inference [Lopez18]_."""

    def __init__(
        self,
        adata: AnnData,
        n_latent: int = 10,
        **model_kwargs,
    ):
        super().__init__(adata)

        self.module = VAE(
            n_input=self.summary_stats["n_vars"],
            n_batch=self.summary_stats["n_batch"],
            n_latent=n_latent,
            **model_kwargs,
        )
        self._model_summary_string = (
            f"SCVI Model with the following params: \nn_latent: {n_latent}"
        )
        self.init_params_ = self._get_init_params(locals())

    @classmethod
    def setup_anndata(
        cls,
        adata: AnnData,
        batch_key: str | None = None,
        layer: str | None = None,
        **kwargs,
    ) -> AnnData | None:
        setup_method_args = cls._get_setup_method_args(**locals())
        anndata_fields = [
            LayerField(REGISTRY_KEYS.X_KEY, layer, is_count_data=True),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, batch_key),
            # Dummy fields required for VAE class.
            CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None),
            NumericalObsField(REGISTRY_KEYS.SIZE_FACTOR_KEY, None, required=False),
            CategoricalJointObsField(REGISTRY_KEYS.CAT_COVS_KEY, None),
            NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, None),
        ]
        adata_manager = AnnDataManager(fields=anndata_fields, setup_method_args=setup_method_args)
        adata_manager.register_fields(adata, **kwargs)
        cls.register_manager(adata_manager)


SCVI.setup_anndata(adata, batch_key="batch")
model = SCVI(adata)
model.train(10)
latent = model.get_latent_representation()
print(latent)
assert latent.shape == (adata.n_obs, 10)
assert np.allclose(get_latent_representation(model), latent, atol=1e-5)
