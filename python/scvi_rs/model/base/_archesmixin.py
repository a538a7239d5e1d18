"""``ArchesMixin``: scArches-style mapping of query data onto a trained reference model."""

from __future__ import annotations

import copy
import logging
import os
import sys
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import torch
from scipy import sparse as sp_sparse

from ..._constants import REGISTRY_KEYS
from ..._settings import settings
from ...data._constants import _MANAGER_UUID_KEY, _SCVI_UUID_KEY
from ...nn import FCLayers
from ...train._device import parse_device_args
from ._base_model import (
    _PYRO_PARAM_STORE_KEY,
    _initialize_model,
    _load_saved_files,
    _pyro_param_store_state,
    _setup_method_name,
    _used_modalities,
    _validate_var_names,
)

if TYPE_CHECKING:
    from anndata import AnnData

    from ._base_model import BaseModelClass

logger = logging.getLogger("scvi_rs")

MIN_VAR_NAME_RATIO = 0.8

_SCVI_VERSION_KEY = "scvi_version"
_MODEL_NAME_KEY = "model_name"
_SETUP_ARGS_KEY = "setup_args"


class ArchesMixin:
    """Query mapping (scArches, Lotfollahi et al. 2021) for models with covariate injection."""

    @classmethod
    def load_query_data(
        cls,
        adata: AnnData | None = None,
        reference_model: str | os.PathLike | BaseModelClass | None = None,
        registry: dict | None = None,
        inplace_subset_query_vars: bool = False,
        accelerator: str = "auto",
        device: int | str = "auto",
        unfrozen: bool = False,
        freeze_dropout: bool = False,
        freeze_expression: bool = True,
        freeze_decoder_first_layer: bool = True,
        freeze_batchnorm_encoder: bool = True,
        freeze_batchnorm_decoder: bool = False,
        freeze_classifier: bool = True,
        transfer_batch: bool = True,
        datamodule: Any = None,
    ) -> BaseModelClass:
        """Build a model for query data from a trained reference model.

        The query AnnData is set up through the reference's registry with
        ``extend_categories=True``, so unseen batches (and other categories) are appended
        after the reference's. Weights whose shape grew (the one-hot covariate columns, a
        per-batch dispersion, library priors) keep the reference values in their leading
        block and a fresh initialisation for the new entries; then everything except the
        parts scArches retrains is frozen.

        Parameters
        ----------
        adata
            Query AnnData with the reference's genes (see :meth:`prepare_query_anndata`);
            it need not be set up.
        reference_model
            A trained model of this class or the directory it was saved to.
        registry
            A registry to build the model from when no ``adata`` is given.
        inplace_subset_query_vars
            Subset/reorder ``adata``'s genes to the reference's in place first.
        accelerator
            ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"``.
        device
            One device (``"auto"``, an index or a device string).
        unfrozen
            Train every parameter (no freezing, no gradient hooks).
        freeze_dropout
            Set every dropout probability to 0.
        freeze_expression
            Keep the encoders' gene-input weights fixed (their first layers are hooked);
            ``False`` lets the encoders' first layers train fully.
        freeze_decoder_first_layer
            Keep the decoder's first layer fixed except its covariate columns.
        freeze_batchnorm_encoder
            Freeze the encoders' batch-norm parameters and running statistics.
        freeze_batchnorm_decoder
            Freeze the decoder's batch-norm parameters and running statistics.
        freeze_classifier
            Freeze a ``classifier`` sub-module (models that have one).
        transfer_batch
            Allow query batches that the reference does not know; ``False`` makes them an
            error.
        datamodule
            Not supported (must be None).

        Returns
        -------
        BaseModelClass
            The query model, untrained (``is_trained_ = False``), in eval mode.
        """
        if reference_model is None:
            raise ValueError("Please provide a reference model as string or loaded model.")
        if adata is None and registry is None:
            raise ValueError("Please provide either an AnnData or a registry dictionary.")
        if datamodule is not None:
            raise NotImplementedError("`datamodule` is not supported by scvi-rs' load_query_data.")
        _, _, torch_device = parse_device_args(
            accelerator, device, return_device="torch", validate_single_device=True
        )
        attr_dict, var_names, state_dict, pyro_param_store = _get_loaded_data(
            reference_model, device=torch_device, adata=adata
        )
        reference_registry = attr_dict.pop("registry_")

        if not transfer_batch:
            _check_query_batches(reference_registry, adata, registry)

        if adata is not None:
            _match_query_var_names(
                adata, var_names, inplace_subset_query_vars, _used_modalities(reference_registry)
            )
            registry = reference_registry
            if registry.get(_MODEL_NAME_KEY) not in (None, cls.__name__):
                raise ValueError("It appears you are loading a model from a different class.")
            if _SETUP_ARGS_KEY not in registry:
                raise ValueError(
                    "Saved model does not contain original setup inputs. "
                    "Cannot load the original setup."
                )
            setup_method = getattr(cls, _setup_method_name(registry))
            setup_method(
                adata,
                source_registry=registry,
                extend_categories=True,
                allow_missing_labels=True,
                **registry[_SETUP_ARGS_KEY],
            )

        model = _initialize_model(cls, adata, registry, attr_dict)

        version = str(reference_registry.get(_SCVI_VERSION_KEY, "1.0.0")).split(".")
        if len(version) > 1 and version[0] == "0" and version[1].isdigit() and int(version[1]) < 8:
            warnings.warn(
                "Query integration should be performed using models trained with version >= 0.8",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )

        model.to_device(torch_device)
        model.module.load_state_dict(_grow_state_dict(state_dict, model.module.state_dict()))
        if _is_pyro_module(model.module):
            cls._arches_pyro_setup(model, pyro_param_store)
        model.module.eval()
        _set_params_online_update(
            model.module,
            unfrozen=unfrozen,
            freeze_decoder_first_layer=freeze_decoder_first_layer,
            freeze_batchnorm_encoder=freeze_batchnorm_encoder,
            freeze_batchnorm_decoder=freeze_batchnorm_decoder,
            freeze_dropout=freeze_dropout,
            freeze_expression=freeze_expression,
            freeze_classifier=freeze_classifier,
        )
        model.is_trained_ = False
        return model

    @staticmethod
    def _arches_pyro_setup(model: BaseModelClass, pyro_param_store: dict | None) -> None:
        """Fill Pyro's parameter store of a query model from the reference's store.

        ``on_load`` (one training step) creates the query's parameters; each one the
        reference has with the same kind of constraint takes the reference's constrained
        value (enlarged like the state dict's tensors when the query's is larger: the new
        trailing entries keep their fresh values). The names taken whole are recorded in
        ``model._block_parameters`` when the model has that attribute.

        Parameters
        ----------
        model
            The query model, with the reference's weights loaded.
        pyro_param_store
            The reference's parameter-store state (``{"params": ..., "constraints": ...}``).
        """
        import pyro
        from torch.distributions import transform_to

        model.module.on_load(model)
        store = pyro.get_param_store()
        fresh = store.get_state()
        saved = pyro_param_store or {"params": {}, "constraints": {}}
        saved_params, saved_constraints = dict(saved["params"]), dict(saved["constraints"])
        pyro.clear_param_store()
        taken_whole = []
        for name, new_unconstrained in fresh["params"].items():
            new_constraint = fresh["constraints"][name]
            new_value = transform_to(new_constraint)(new_unconstrained).detach()
            old_unconstrained = saved_params.get(name)
            old_constraint = saved_constraints.get(name)
            if old_unconstrained is None:
                logger.warning(
                    "Parameter %s in pyro param_store but not found in reference model.", name
                )
                pyro.param(name, new_value.requires_grad_(), constraint=new_constraint)
                continue
            if type(new_constraint) is not type(old_constraint):
                logger.warning(
                    "Constraint mismatch for %s in pyro param_store. "
                    "Cannot transfer map parameter.",
                    name,
                )
                pyro.param(name, new_value.requires_grad_(), constraint=new_constraint)
                continue
            old_value = transform_to(old_constraint)(
                old_unconstrained.to(new_unconstrained.device)
            ).detach()
            if old_value.shape == new_value.shape:
                taken_whole.append(name)
                value = old_value
            else:
                value = _grow_tensor(name, old_value, new_value)
            pyro.param(name, value.clone().requires_grad_(), constraint=old_constraint)
        if hasattr(model, "_block_parameters"):
            model._block_parameters = taken_whole

    @staticmethod
    def prepare_query_mudata(
        mdata: Any,
        reference_model: str | os.PathLike | BaseModelClass,
        return_reference_var_names: bool = False,
        inplace: bool = True,
    ) -> Any:
        """Pad and reorder the genes of every modality of a query MuData to the reference's.

        Each modality the reference was set up with goes through
        :meth:`prepare_query_anndata`'s padding and reordering; the result holds those
        modalities, with the query's ``obs`` and ``uns``.

        Parameters
        ----------
        mdata
            Query MuData with the reference's modalities.
        reference_model
            A model set up with a MuData, or the directory it was saved to.
        return_reference_var_names
            Only return the reference's variable names per modality.
        inplace
            Modify ``mdata`` (returns None); otherwise return a new MuData.

        Returns
        -------
        MuData, dict of pandas.Index or None
        """
        attr_dict, var_names, _, _ = _get_loaded_data(
            reference_model, device="cpu", load_weights=False
        )
        if not isinstance(var_names, dict):
            raise ValueError(
                "The reference model's var_names are not saved per modality (it was set up "
                "with an AnnData, or saved with legacy_mudata_format=True); use "
                "prepare_query_anndata."
            )
        references = {name: pd.Index(np.asarray(v).astype(str)) for name, v in var_names.items()}
        if return_reference_var_names:
            return references
        from ...data.fields._mudata import require_mudata

        used = _used_modalities(attr_dict["registry_"]) or list(references)
        missing = [m for m in used if m not in mdata.mod]
        if missing:
            raise ValueError(
                "Query MuData does not contain same modalities as reference. Cannot load the "
                f"original setup (missing: {missing})."
            )
        padded = {
            modality: _pad_and_sort_query_anndata(
                mdata.mod[modality], references[modality], inplace=False
            )
            for modality in used
        }
        out = require_mudata().MuData(padded)
        out.obs = mdata.obs.copy()
        out.uns = copy.deepcopy(dict(mdata.uns))
        if not inplace:
            return out
        mdata._init_as_actual(out)
        return None

    @staticmethod
    def prepare_query_anndata(
        adata: AnnData,
        reference_model: str | os.PathLike | BaseModelClass,
        return_reference_var_names: bool = False,
        inplace: bool = True,
    ) -> AnnData | pd.Index | None:
        """Pad and reorder the query's genes to the reference's.

        Reference genes missing from the query are added as all-zero columns (in ``X`` and
        every layer, in the matrix's own format: sparse CSR padding for sparse data, zeros
        for dense data); genes unknown to the reference are dropped; the order becomes the
        reference's.

        Parameters
        ----------
        adata
            Query AnnData.
        reference_model
            A model or the directory it was saved to.
        return_reference_var_names
            Only return the reference's gene names.
        inplace
            Modify ``adata`` (returns None); otherwise return a new AnnData.

        Returns
        -------
        AnnData, pandas.Index or None
        """
        _, var_names, _, _ = _get_loaded_data(reference_model, device="cpu", load_weights=False)
        if isinstance(var_names, dict):
            raise ValueError(
                "The reference model was set up with a MuData (var_names per modality: "
                f"{sorted(var_names)}); use prepare_query_mudata."
            )
        reference = pd.Index(np.asarray(var_names).astype(str))
        if return_reference_var_names:
            return reference
        return _pad_and_sort_query_anndata(adata, reference, inplace)


def _get_loaded_data(
    reference_model: Any,
    device: Any = None,
    adata: AnnData | None = None,
    load_weights: bool = True,
) -> tuple[dict, np.ndarray | dict, dict | None, dict | None]:
    """The saved parts of a reference model: a saved directory or a model instance.

    Parameters
    ----------
    reference_model
        A model instance or the directory it was saved to.
    device
        Where the loaded tensors are mapped (directories only).
    adata
        The query data; accepted for the reference's signature, not needed to load.
    load_weights
        Copy a model instance's weights (``False`` leaves the state dict as None).

    Returns
    -------
    tuple
        ``(attr_dict, var_names, state_dict, pyro_param_store)``: the Pyro parameter
        store's state saved with the model (None in files without one), or, for a model
        instance, the current store's state.
    """
    del adata
    if isinstance(reference_model, str | os.PathLike):
        attr_dict, var_names, state_dict, _ = _load_saved_files(
            os.fspath(reference_model), load_adata=False, map_location=device
        )
        pyro_param_store = state_dict.pop(_PYRO_PARAM_STORE_KEY, None)
        return attr_dict, var_names, state_dict, pyro_param_store
    if not hasattr(reference_model, "module") or not hasattr(reference_model, "get_var_names"):
        raise TypeError(
            "`reference_model` must be a model instance or the path of a saved model, got "
            f"{type(reference_model).__name__}."
        )
    attr_dict = {
        name: copy.deepcopy(value)
        for name, value in reference_model._get_user_attributes()
        if name.endswith("_")
    }
    var_names = reference_model.get_var_names()
    if not isinstance(var_names, dict):
        var_names = np.asarray(var_names)
    state_dict = None
    if load_weights:
        state_dict = {
            k: v.detach().clone() for k, v in reference_model.module.state_dict().items()
        }
    return attr_dict, var_names, state_dict, _pyro_param_store_state()


def _match_query_var_names(
    adata: Any, var_names: np.ndarray | dict, subset: bool, used_modalities: list[str] | None
) -> None:
    """Check (after subsetting them in place when ``subset``) the query's variables."""
    from ...data._utils import _is_mudata

    if _is_mudata(adata) and isinstance(var_names, dict):
        for modality in adata.mod:
            if modality not in var_names:
                continue
            if subset:
                logger.debug("Subsetting %s query vars to reference vars.", modality)
                adata.mod[modality]._inplace_subset_var(
                    np.asarray(var_names[modality]).astype(str)
                )
        if subset:
            adata.update()
    elif subset:
        logger.debug("Subsetting query vars to reference vars.")
        adata._inplace_subset_var(np.asarray(var_names).astype(str))
    _validate_var_names(adata, var_names, used_modalities)


def _is_pyro_module(module: torch.nn.Module) -> bool:
    """Whether ``module`` is a ``pyro.nn.PyroModule`` (Pyro is not imported to tell)."""
    pyro_nn = sys.modules.get("pyro.nn")
    return pyro_nn is not None and isinstance(module, pyro_nn.PyroModule)


def _grow_tensor(name: str, old: torch.Tensor, new: torch.Tensor) -> torch.Tensor:
    """``old`` in the leading block of a copy of ``new`` (whose shape is at least as large)."""
    if old.dim() != new.dim() or any(o > n for o, n in zip(old.shape, new.shape, strict=True)):
        raise ValueError(
            f"Cannot transfer {name!r}: the reference's shape {tuple(old.shape)} does not fit "
            f"in the query model's {tuple(new.shape)}."
        )
    merged = new.detach().clone()
    merged[tuple(slice(0, size) for size in old.shape)] = old
    return merged


def _check_query_batches(
    reference_registry: dict, adata: AnnData | None, registry: dict | None
) -> None:
    """With ``transfer_batch=False`` every query batch must be a reference batch."""
    batch_state = reference_registry["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]
    known = {str(b) for b in np.asarray(batch_state["categorical_mapping"]).tolist()}
    if adata is not None:
        batch_key = batch_state["original_key"]
        if batch_key in adata.obs.columns:
            query = pd.unique(adata.obs[batch_key].to_numpy()).tolist()
        elif reference_registry.get(_SETUP_ARGS_KEY, {}).get("batch_key") is None:
            return  # no batch key: every cell is in the single default batch
        else:
            raise KeyError(f"{batch_key} is not a valid key for in adata.obs")
    else:
        query_state = registry["field_registries"][REGISTRY_KEYS.BATCH_KEY]["state_registry"]
        query = np.asarray(query_state["categorical_mapping"]).tolist()
    if any(str(b) not in known for b in query):
        raise ValueError(
            "This model does not allow for query having batch categories missing from the "
            "reference."
        )


def _grow_state_dict(
    reference: dict[str, torch.Tensor], fresh: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """The reference's weights, enlarged to the query module's shapes.

    A tensor that grew along some dimensions keeps the reference values in its leading
    block; the rest comes from the query module's fresh initialisation (new one-hot
    covariate columns are the trailing columns, as new categories are appended).
    """
    grown = {}
    for key, old in reference.items():
        if key not in fresh:
            grown[key] = old
            continue
        new = fresh[key]
        old = old.to(new.device)
        if old.shape == new.shape:
            grown[key] = old
            continue
        grown[key] = _grow_tensor(key, old, new)
    return grown


def _set_params_online_update(
    module: torch.nn.Module,
    unfrozen: bool,
    freeze_decoder_first_layer: bool,
    freeze_batchnorm_encoder: bool,
    freeze_batchnorm_decoder: bool,
    freeze_dropout: bool,
    freeze_expression: bool,
    freeze_classifier: bool,
) -> None:
    """Freeze a module for query training, following scArches' rules.

    Trainable: the linear layers of every ``FCLayers`` stack (whose gradients are masked by
    hooks so that only the covariate-input columns change), the whole library encoder,
    batch embeddings, the batch norms not frozen by the options, and a classifier when not
    frozen. Everything else (output heads, ``px_r``, frozen batch norms) is fixed; frozen
    batch norms also stop updating their running statistics.
    """
    if unfrozen:
        return
    fully_trainable = {"l_encoder"}
    if not freeze_classifier:
        fully_trainable.add("classifier")
    always_trainable = ("background_pro_alpha", "background_pro_log_beta", "_embeddings_dict")
    hierarchical = {"encoder_z2_z1", "decoder_z1_z2"}

    def top(name: str) -> str:
        return name.split(".")[0]

    for name, mod in module.named_modules():
        if top(name) in fully_trainable:
            continue
        if isinstance(mod, FCLayers):
            unhooked_first = (not freeze_expression and "encoder" in name) or (
                not freeze_decoder_first_layer and "px_decoder" in name
            )
            mod.set_online_update_hooks(hook_first_layer=not unhooked_first)
        if isinstance(mod, torch.nn.Dropout) and freeze_dropout:
            mod.p = 0
        bn_frozen = ("decoder" in name and freeze_batchnorm_decoder) or (
            "encoder" in name and freeze_batchnorm_encoder
        )
        if isinstance(mod, torch.nn.BatchNorm1d) and bn_frozen:
            mod.momentum = 0

    def trainable(name: str) -> bool:
        in_fc = "fc_layers" in name
        if in_fc and ".0." in name and top(name) not in hierarchical:
            return True  # linear layers of the stacks (masked by the hooks)
        if top(name) in fully_trainable or any(p in name for p in always_trainable):
            return True
        if in_fc and ".1." in name:  # batch norms
            if "encoder" in name and not freeze_batchnorm_encoder:
                return True
            if "decoder" in name and not freeze_batchnorm_decoder:
                return True
        return False

    for name, param in module.named_parameters():
        param.requires_grad = trainable(name)


def _pad_and_sort_query_anndata(
    adata: AnnData, reference_var_names: pd.Index, inplace: bool
) -> AnnData | None:
    from anndata import AnnData

    query_names = adata.var_names.astype(str)
    n_shared = len(query_names.intersection(reference_var_names))
    if n_shared == 0:
        raise ValueError(
            "No reference var names found in query data. Please rerun with "
            "return_reference_var_names=True to see reference var names."
        )
    ratio = n_shared / len(reference_var_names)
    logger.info("Found %s%% reference vars in query data.", ratio * 100)
    if ratio < MIN_VAR_NAME_RATIO:
        warnings.warn(
            f"Query data contains less than {MIN_VAR_NAME_RATIO:.0%} of reference var names. "
            "This may result in poor performance.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
    missing = reference_var_names[~reference_var_names.isin(query_names)]
    if len(missing) > 0:
        out = AnnData(
            X=_pad_columns(adata.X, len(missing)),
            obs=adata.obs.copy(),
            var=pd.concat([adata.var, pd.DataFrame(index=missing)]),
            uns={
                k: copy.deepcopy(v)
                for k, v in adata.uns.items()
                if k not in (_SCVI_UUID_KEY, _MANAGER_UUID_KEY)
            },
            obsm={k: v.copy() for k, v in adata.obsm.items()},
            obsp={k: v.copy() for k, v in adata.obsp.items()},
            layers={k: _pad_columns(v, len(missing)) for k, v in adata.layers.items()},
        )
        out.var_names = pd.Index(list(query_names) + list(missing))
    else:
        out = adata if inplace else adata.copy()
    if not out.var_names.equals(reference_var_names):
        out._inplace_subset_var(np.asarray(reference_var_names))
    if inplace:
        if out is not adata:
            adata._init_as_actual(out)
        return None
    return out


def _pad_columns(matrix: Any, n_new: int) -> Any:
    """``matrix`` with ``n_new`` all-zero columns appended, in the same format."""
    if sp_sparse.issparse(matrix):
        padding = sp_sparse.csr_matrix((matrix.shape[0], n_new), dtype=matrix.dtype)
        return sp_sparse.hstack([matrix, padding], format="csr")
    matrix = np.asarray(matrix)
    return np.hstack([matrix, np.zeros((matrix.shape[0], n_new), dtype=matrix.dtype)])


__all__ = ["ArchesMixin"]
