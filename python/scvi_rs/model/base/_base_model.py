"""``BaseModelClass``: registration stores, AnnData validation, loaders, save and load."""

from __future__ import annotations

import inspect
import logging
import os
import sys
import warnings
from abc import ABCMeta, abstractmethod
from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from anndata import AnnData

from ..._settings import settings
from ...data import AnnDataManager
from ...data._constants import _SCVI_UUID_KEY
from ...data._uuids import new_uuid, read_uuid
from ...dataloaders import AnnDataLoader
from ...train._device import parse_device_args
from ...utils import attrdict
from ._constants import SAVE_KEYS
from ._files import (
    check_regular_file,
    safe_pickle_load,
    safe_torch_load,
    write_files_atomically,
)

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger("scvi_rs")

_SETUP_ARGS_KEY = "setup_args"
_SETUP_METHOD_NAME = "setup_method_name"
_MODEL_NAME_KEY = "model_name"
_MODELS_WITHOUT_DATA = ("SCVI", "GIMVI", "DIAGVI")
_PYRO_PARAM_STORE_KEY = "pyro_param_store"


class BaseModelMetaClass(ABCMeta):
    """Metaclass giving every model class its own AnnData manager stores."""

    def __init__(cls, name: str, bases: tuple, dct: dict) -> None:
        cls._setup_adata_manager_store: dict[str, AnnDataManager] = {}
        cls._per_instance_manager_store: dict[str, dict[str, AnnDataManager]] = {}
        super().__init__(name, bases, dct)


class BaseModelClass(metaclass=BaseModelMetaClass):
    """Abstract base of user-facing models.

    Subclasses build ``self.module`` in ``__init__`` from ``self.summary_stats``, set
    ``self._model_summary_string`` and end with
    ``self.init_params_ = self._get_init_params(locals())``.

    Parameters
    ----------
    adata
        AnnData registered with the subclass's ``setup_anndata``.
    registry
        A saved registry, to build the model without data.
    """

    _data_loader_cls = AnnDataLoader

    def __init__(self, adata: AnnData | None = None, registry: dict | None = None) -> None:
        from ._minification import refuse_minified_data_without_support

        refuse_minified_data_without_support(self, adata)
        self.id = new_uuid()
        if adata is not None:
            self._adata = adata
            self._adata_manager = self._get_most_recent_anndata_manager(adata, required=True)
            self._register_manager_for_instance(self._adata_manager)
            self.registry_ = self._adata_manager._registry
            self.summary_stats = AnnDataManager._get_summary_stats_from_registry(self.registry_)
        elif registry is not None:
            self._adata = None
            self._adata_manager = None
            self.registry_ = registry
            self.summary_stats = AnnDataManager._get_summary_stats_from_registry(registry)
        elif type(self).__name__ in _MODELS_WITHOUT_DATA:
            self._adata = None
            self._adata_manager = None
            self.registry_ = None
            self.summary_stats = attrdict({})
        else:
            raise ValueError("adata or registry must be provided.")

        self._module_init_on_train = adata is None and registry is None
        self.is_trained_ = False
        self._model_summary_string = ""
        self.train_indices_ = None
        self.test_indices_ = None
        self.validation_indices_ = None
        self.history_ = None
        self._datamodule = None
        self.get_normalized_function_name_ = "get_normalized_expression"
        self.run_name_ = f"run_{datetime.now().strftime('%Y-%m-%d_%H-%M-%S')}"
        self.run_id_ = ""

    # -- data ----------------------------------------------------------------------------
    @property
    def adata(self) -> AnnData | None:
        """The AnnData the model was set up with."""
        return self._adata

    @adata.setter
    def adata(self, adata: AnnData) -> None:
        if adata is None:
            raise ValueError("adata cannot be None.")
        self._validate_anndata(adata)
        self._adata = adata
        self._adata_manager = self.get_anndata_manager(adata, required=True)
        self.registry_ = self._adata_manager._registry
        self.summary_stats = AnnDataManager._get_summary_stats_from_registry(self.registry_)

    @property
    def adata_manager(self) -> AnnDataManager | None:
        """The manager of :attr:`adata`."""
        return self._adata_manager

    @property
    def registry(self) -> dict | None:
        """The registry of the model's setup."""
        return self.registry_

    @property
    def device(self) -> torch.device:
        """Device of the module's parameters."""
        return self.module.device

    def to_device(self, device: str | int | torch.device) -> None:
        """Move the module to ``device``.

        Parameters
        ----------
        device
            ``"cpu"``, ``"cuda:0"``, a CUDA index or a :class:`torch.device`.
        """
        self.module.to(torch.device(device))

    @property
    def is_trained(self) -> bool:
        """Whether the model has been trained."""
        return self.is_trained_

    @is_trained.setter
    def is_trained(self, value: bool) -> None:
        self.is_trained_ = value

    @property
    def history(self) -> dict[str, pd.DataFrame] | None:
        """Training history: metric name to a DataFrame indexed by epoch."""
        return self.history_

    @property
    def train_indices(self) -> np.ndarray | None:
        """Indices of the training cells of the last training."""
        return self.train_indices_

    @train_indices.setter
    def train_indices(self, value: np.ndarray | None) -> None:
        self.train_indices_ = value

    @property
    def validation_indices(self) -> np.ndarray | None:
        """Indices of the validation cells of the last training."""
        return self.validation_indices_

    @validation_indices.setter
    def validation_indices(self, value: np.ndarray | None) -> None:
        self.validation_indices_ = value

    @property
    def test_indices(self) -> np.ndarray | None:
        """Indices of the test cells of the last training."""
        return self.test_indices_

    @test_indices.setter
    def test_indices(self, value: np.ndarray | None) -> None:
        self.test_indices_ = value

    @property
    def run_name(self) -> str:
        """Name of the training run."""
        return self.run_name_

    @property
    def run_id(self) -> str:
        """Id of the training run."""
        return self.run_id_

    @property
    def get_normalized_function_name(self) -> str:
        """Name of the method returning normalised expression."""
        return self.get_normalized_function_name_

    # -- manager stores ------------------------------------------------------------------
    @classmethod
    def register_manager(cls, adata_manager: AnnDataManager) -> None:
        """Store ``adata_manager`` in the class's setup store under its AnnData's UUID.

        Parameters
        ----------
        adata_manager
            A manager whose ``register_fields`` has run.
        """
        cls._setup_adata_manager_store[adata_manager.adata_uuid] = adata_manager

    def _register_manager_for_instance(self, adata_manager: AnnDataManager) -> None:
        store = self._per_instance_manager_store.setdefault(self.id, {})
        store[adata_manager.adata_uuid] = adata_manager

    def deregister_manager(self, adata: AnnData | None = None) -> None:
        """Remove managers from the class and instance stores.

        Parameters
        ----------
        adata
            Remove only this AnnData's managers; by default every manager except the one
            of :attr:`adata`.

        Raises
        ------
        ValueError
            If ``adata`` has no manager in the class store (never set up, set up with
            another model class, or already deregistered).
        """
        cls = type(self)
        instance_store = cls._per_instance_manager_store.get(self.id, {})
        if adata is not None:
            uuid = self._get_most_recent_anndata_manager(adata, required=True).adata_uuid
            cls._setup_adata_manager_store.pop(uuid, None)
            instance_store.pop(uuid, None)
            return
        keep = self.adata.uns.get(_SCVI_UUID_KEY) if self.adata is not None else None
        for store in (cls._setup_adata_manager_store, instance_store):
            for uuid in [u for u in store if u != keep]:
                del store[uuid]

    @classmethod
    def _get_most_recent_anndata_manager(
        cls, adata: AnnData, required: bool = False
    ) -> AnnDataManager | None:
        adata_id = read_uuid(adata.uns, _SCVI_UUID_KEY)
        if adata_id is None:
            if required:
                raise ValueError(
                    f"Please set up your AnnData with {cls.__name__}.setup_anndata first."
                )
            return None
        if adata_id not in cls._setup_adata_manager_store:
            if required:
                raise ValueError(
                    f"Please set up your AnnData with {cls.__name__}.setup_anndata first. "
                    "It appears the AnnData object has been setup with a different model."
                )
            return None
        manager = cls._setup_adata_manager_store[adata_id]
        if manager.adata is not adata:
            raise ValueError(
                "The provided AnnData object does not match the AnnData object previously "
                "provided for setup. Did you make a copy?"
            )
        return manager

    def get_anndata_manager(self, adata: AnnData, required: bool = False) -> AnnDataManager | None:
        """Return this instance's manager of ``adata``.

        Parameters
        ----------
        adata
            An AnnData this model has validated.
        required
            Raise instead of returning None when it has no manager.

        Returns
        -------
        AnnDataManager or None
            The manager, transferred anew when ``adata`` is a copy of a registered object.
        """
        cls = type(self)
        if not adata:
            return None
        adata_id = read_uuid(adata.uns, _SCVI_UUID_KEY)
        if adata_id is None:
            if required:
                raise ValueError(
                    f"Please set up your AnnData with {cls.__name__}.setup_anndata first."
                )
            return None
        if self.id not in cls._per_instance_manager_store:
            raise AssertionError(
                "Unable to find instance specific manager store. The model has likely not "
                "been initialized with an AnnData object."
            )
        instance_store = cls._per_instance_manager_store[self.id]
        if adata_id not in instance_store:
            if required:
                raise AssertionError(
                    "Please call ``self._validate_anndata`` on this AnnData or MuData object."
                )
            return None
        manager = instance_store[adata_id]
        if manager.adata is not adata:
            logger.info("AnnData object appears to be a copy. Attempting to transfer setup.")
            adata.uns[_SCVI_UUID_KEY] = new_uuid()
            manager = self.adata_manager.transfer_fields(adata)
            self._register_manager_for_instance(manager)
        return manager

    def _validate_anndata(
        self, adata: AnnData | None = None, copy_if_view: bool = True
    ) -> AnnData:
        """Check ``adata`` against the model's setup, transferring or replaying it as needed.

        Parameters
        ----------
        adata
            AnnData to validate; None returns the model's own AnnData.
        copy_if_view
            Turn a view into an actual AnnData in place (else a view is an error).

        Returns
        -------
        AnnData
            The same object, possibly with its ``_scvi_*`` fields (re)written.
        """
        if adata is None:
            adata = self.adata
        if adata is None:
            raise ValueError("The model has no AnnData; pass one explicitly.")
        if adata.is_view:
            if not copy_if_view:
                raise ValueError("Please run `adata = adata.copy()`")
            logger.info("Received view of anndata, making copy.")
            adata._init_as_actual(adata.copy())
            adata.uns[_SCVI_UUID_KEY] = new_uuid()

        manager = self.get_anndata_manager(adata)
        if manager is None:
            if self.adata_manager is None:
                manager = self._setup_from_saved_registry(adata)
            else:
                logger.info(
                    "Input AnnData not setup with scvi-tools. attempting to transfer AnnData setup"
                )
                manager = self.adata_manager.transfer_fields(adata)
            self._register_manager_for_instance(manager)
        else:
            manager.validate()
        return adata

    def _setup_from_saved_registry(self, adata: AnnData) -> AnnDataManager:
        logger.info(
            "Model was loaded without AnnData. Setting up provided AnnData using saved registry."
        )
        registry = self.registry_
        if not registry or _SETUP_ARGS_KEY not in registry:
            raise ValueError(
                "Saved model does not contain original setup inputs. "
                "Cannot setup the provided AnnData."
            )
        cls = type(self)
        setup_method = getattr(cls, _setup_method_name(registry))
        setup_method(adata, source_registry=registry, **registry[_SETUP_ARGS_KEY])
        manager = cls._get_most_recent_anndata_manager(adata, required=True)
        self._adata = adata
        self._adata_manager = manager
        return manager

    def _make_data_loader(
        self,
        adata: AnnData,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        data_loader_class: type | None = None,
        **data_loader_kwargs: Any,
    ) -> AnnDataLoader:
        """Create a loader over (a subset of) ``adata``'s registered data.

        Parameters
        ----------
        adata
            An AnnData validated by :meth:`_validate_anndata`.
        indices
            Cells to load; all by default.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        shuffle
            Shuffle the cells.
        data_loader_class
            Loader class; :class:`~scvi_rs.dataloaders.AnnDataLoader` by default.
        **data_loader_kwargs
            Further loader arguments.

        Returns
        -------
        AnnDataLoader
            The loader.
        """
        manager = self.get_anndata_manager(adata)
        if manager is None:
            raise AssertionError(
                "AnnDataManager not found. Call `self._validate_anndata` prior to calling this "
                "function."
            )
        adata = manager.adata
        if batch_size is None:
            batch_size = settings.batch_size
        if indices is None:
            indices = np.arange(adata.n_obs)
        if data_loader_class is None:
            data_loader_class = self._data_loader_cls
        data_loader_kwargs.setdefault("num_workers", settings.dl_num_workers)
        data_loader_kwargs.setdefault("persistent_workers", settings.dl_persistent_workers)
        return data_loader_class(
            manager, shuffle=shuffle, indices=indices, batch_size=batch_size, **data_loader_kwargs
        )

    def _make_dataloader(
        self,
        adata: AnnData,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
        shuffle: bool = False,
        data_loader_class: type | None = None,
        **data_loader_kwargs: Any,
    ) -> AnnDataLoader:
        """Alias of :meth:`_make_data_loader` (the name used by older scvi-tools tutorials)."""
        return self._make_data_loader(
            adata,
            indices=indices,
            batch_size=batch_size,
            shuffle=shuffle,
            data_loader_class=data_loader_class,
            **data_loader_kwargs,
        )

    # -- registry helpers ----------------------------------------------------------------
    def data_registry(self, registry_key: str) -> np.ndarray | pd.DataFrame:
        """Return the data registered under ``registry_key`` for :attr:`adata`.

        Parameters
        ----------
        registry_key
            A registry key, e.g. ``"X"`` or ``"batch"``.

        Returns
        -------
        array or DataFrame
            The registered data.
        """
        if self.adata is None:
            raise ValueError("self.adata is None. Please register AnnData object to access data.")
        return self.adata_manager.get_from_registry(registry_key)

    def get_from_registry(self, adata: AnnData, registry_key: str) -> np.ndarray:
        """Return ``adata``'s data registered under ``registry_key``.

        Parameters
        ----------
        adata
            An AnnData validated by this model.
        registry_key
            A registry key.

        Returns
        -------
        array
            The registered data.
        """
        manager = self.get_anndata_manager(adata)
        if manager is None:
            raise AssertionError(
                "AnnData not registered with model. Call `self._validate_anndata` prior to "
                "calling this function."
            )
        return manager.get_from_registry(registry_key)

    def get_state_registry(self, registry_key: str) -> attrdict:
        """Return the state registry of ``registry_key`` in the model's registry.

        Parameters
        ----------
        registry_key
            A registry key.

        Returns
        -------
        attrdict
            The field's state registry.
        """
        return attrdict(self.registry_["field_registries"][registry_key]["state_registry"])

    def get_setup_arg(self, setup_arg: str) -> Any:
        """Return the value of ``setup_arg`` given to ``setup_anndata``.

        Parameters
        ----------
        setup_arg
            Name of a ``setup_anndata`` argument.

        Returns
        -------
        Any
            Its value.
        """
        return self.registry_[_SETUP_ARGS_KEY][setup_arg]

    def get_var_names(self, legacy_mudata_format: bool = False) -> np.ndarray | dict:
        """Return the variable names the model was set up with.

        Parameters
        ----------
        legacy_mudata_format
            For a MuData, return one flat array of every modality's names concatenated
            (the layout of older model files) instead of one array per modality.

        Returns
        -------
        numpy.ndarray or dict
            Variable names as strings; for a MuData (unless ``legacy_mudata_format``) a
            dict from modality name to its variable names. Without data, the names of the
            registered ``X``.
        """
        if self.adata is not None:
            return _get_var_names(self.adata, legacy_mudata_format=legacy_mudata_format)
        state = self.registry_["field_registries"]["X"]["state_registry"]
        return np.asarray(state["column_names"]).astype(str)

    def transfer_fields(self, adata: AnnData, **kwargs: Any) -> AnnData:
        """Transfer the model's setup onto ``adata``.

        Parameters
        ----------
        adata
            AnnData to set up like the model's own.
        **kwargs
            Passed to :meth:`AnnDataManager.transfer_fields`.

        Returns
        -------
        AnnData
            ``adata``.
        """
        if self.adata_manager is None:
            raise ValueError("Model need to be initialized with AnnData to transfer fields.")
        self.adata_manager.transfer_fields(adata, **kwargs)
        return adata

    def view_anndata_setup(
        self, adata: AnnData | None = None, hide_state_registries: bool = False
    ) -> None:
        """Print the setup summary of ``adata`` (the model's own by default).

        Parameters
        ----------
        adata
            An AnnData validated by this model.
        hide_state_registries
            Do not print the state registries.
        """
        if adata is None:
            adata = self.adata
        try:
            manager = self.get_anndata_manager(adata, required=True)
        except ValueError as err:
            raise ValueError(
                f"Given AnnData not setup with {type(self).__name__}. Cannot view setup summary."
            ) from err
        manager.view_registry(hide_state_registries=hide_state_registries)

    def view_setup_method_args(self) -> None:
        """Print the arguments given to ``setup_anndata``."""
        registry = self.registry_ or {}
        print(f"Setup via `{registry.get(_MODEL_NAME_KEY)}.{_setup_method_name(registry)}`")
        for key, value in registry.get(_SETUP_ARGS_KEY, {}).items():
            print(f"  {key}: {value!r}")

    def view_registry(self, hide_state_registries: bool = False) -> None:
        """Print the model's registry (the manager's view).

        Parameters
        ----------
        hide_state_registries
            Do not print the state registries.
        """
        if self.adata_manager is None:
            raise ValueError("The model has no AnnData manager to view.")
        self.adata_manager.view_registry(hide_state_registries=hide_state_registries)

    def update_setup_method_args(self, setup_method_args: dict) -> None:
        """Update the stored ``setup_anndata`` arguments.

        Parameters
        ----------
        setup_method_args
            Items to merge into the registry's ``setup_args``.
        """
        if self.adata_manager is not None:
            self.adata_manager.update_setup_method_args(setup_method_args)
        else:
            self.registry_[_SETUP_ARGS_KEY].update(setup_method_args)

    # -- summary and init params ---------------------------------------------------------
    @property
    def summary_string(self) -> str:
        """The model's summary with its training status."""
        status = "Trained" if self.is_trained_ else "Not Trained"
        return f"{self._model_summary_string}\nTraining status: {status}"

    def __repr__(self) -> str:
        return self.summary_string

    def _check_if_trained(
        self,
        warn: bool = True,
        message: str = "Trying to query inferred values from an untrained model. Please train "
        "the model first.",
    ) -> bool:
        if self.is_trained_:
            return True
        if warn:
            warnings.warn(message, UserWarning, stacklevel=settings.warnings_stacklevel)
            return False
        raise RuntimeError(message)

    def _get_user_attributes(self) -> list[tuple[str, Any]]:
        attributes = inspect.getmembers(self, lambda a: not inspect.isroutine(a))
        return [
            (name, value)
            for name, value in attributes
            if not (name.startswith("__") and name.endswith("__")) and not name.startswith("_abc_")
        ]

    def _get_init_params(self, locals: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Record the ``__init__`` arguments found in ``locals`` (AnnData objects excluded).

        Parameters
        ----------
        locals
            ``locals()`` of the subclass's ``__init__``.

        Returns
        -------
        dict
            ``{"kwargs": {var-keyword name: dict}, "non_kwargs": {name: value}}``.
        """
        parameters = inspect.signature(self.__init__).parameters.values()
        names = {p.name for p in parameters}
        var_keyword = {p.name for p in parameters if p.kind == inspect.Parameter.VAR_KEYWORD}
        params = {
            key: value
            for key, value in locals.items()
            if key in names and key not in ("adata", "registry") and not isinstance(value, AnnData)
        }
        return {
            "kwargs": {k: v for k, v in params.items() if k in var_keyword},
            "non_kwargs": {k: v for k, v in params.items() if k not in var_keyword},
        }

    @staticmethod
    def _create_modalities_attr_dict(modalities: dict[str, str], setup_method_args: dict) -> Any:
        """``{setup_mudata argument: modality}`` for every argument (None when unnamed)."""
        from ...data._utils import _modalities_by_setup_arg

        return _modalities_by_setup_arg(modalities, setup_method_args)

    @staticmethod
    def _get_setup_method_args(**setup_locals: Any) -> dict[str, Any]:
        """Record a setup method's arguments from its ``locals()``.

        Parameters
        ----------
        **setup_locals
            ``locals()`` of ``setup_anndata`` (must include ``cls``).

        Returns
        -------
        dict
            ``{"model_name", "setup_method_name", "setup_args"}``.
        """
        cls = setup_locals.pop("cls")
        if "adata" in setup_locals:
            method_name = "setup_anndata"
        elif "mdata" in setup_locals:
            method_name = "setup_mudata"
        else:
            method_name = None
        args = {k: v for k, v in setup_locals.items() if k not in ("adata", "mdata", "kwargs")}
        return {
            _MODEL_NAME_KEY: cls.__name__,
            _SETUP_METHOD_NAME: method_name,
            _SETUP_ARGS_KEY: args,
        }

    # -- abstract interface --------------------------------------------------------------
    @abstractmethod
    def train(self) -> None:
        """Train the model."""

    @classmethod
    @abstractmethod
    def setup_anndata(cls, adata: AnnData, *args: Any, **kwargs: Any) -> AnnData | None:
        """Register ``adata`` with this model class."""

    def get_normalized_expression(self, *args: Any, **kwargs: Any) -> Any:
        """Not provided by this model (see :class:`RNASeqMixin`)."""
        raise NotImplementedError

    def differential_abundance(self, *args: Any, **kwargs: Any) -> Any:
        """Not provided by this model."""
        raise NotImplementedError

    # -- save and load ---------------------------------------------------------------------
    def save(
        self,
        dir_path: str,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        save_kwargs: dict | None = None,
        legacy_mudata_format: bool = False,
        datamodule: Any = None,
        **anndata_write_kwargs: Any,
    ) -> None:
        """Save the model's weights, setup and attributes to ``dir_path``.

        Writes ``{prefix}model.pt`` (and ``{prefix}adata.h5ad`` with ``save_anndata``)
        through temporary files renamed into place, so an interrupted save leaves the
        previous files intact. As in scvi-tools, the state dict also holds
        ``"pyro_param_store"``: the state of Pyro's parameter store (parameters a guide
        creates with ``pyro.param`` live only there).

        Parameters
        ----------
        dir_path
            Directory to write to.
        prefix
            Prefix of the file names.
        overwrite
            Allow writing into an existing directory.
        save_anndata
            Also write the AnnData.
        save_kwargs
            Keyword arguments of :func:`torch.save`.
        legacy_mudata_format
            For a model set up with a MuData, save ``var_names`` as one flat array of every
            modality's names (the older layout) instead of a dict from modality to names.
        datamodule
            Accepted for compatibility.
        **anndata_write_kwargs
            Keyword arguments of :meth:`anndata.AnnData.write_h5ad`.
        """
        if os.path.exists(dir_path) and not overwrite:
            raise ValueError(
                f"{dir_path} already exists. Please provide another directory for saving."
            )
        prefix = prefix or ""
        save_kwargs = save_kwargs or {}
        state_dict = self.module.state_dict()
        state_dict[_PYRO_PARAM_STORE_KEY] = _pyro_param_store_state()
        payload = {
            SAVE_KEYS.MODEL_STATE_DICT_KEY: state_dict,
            SAVE_KEYS.VAR_NAMES_KEY: self.get_var_names(legacy_mudata_format),
            SAVE_KEYS.ATTR_DICT_KEY: {
                name: value for name, value in self._get_user_attributes() if name[-1] == "_"
            },
        }
        writers = {
            os.path.join(dir_path, f"{prefix}{SAVE_KEYS.MODEL_FNAME}"): lambda tmp: torch.save(
                payload, tmp, **save_kwargs
            )
        }
        if save_anndata:
            if self.adata is None:
                warnings.warn(
                    "The model has no AnnData to save; only the model file is written.",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
            else:
                adata = self.adata
                from ...data._utils import _is_mudata

                if _is_mudata(adata):  # MuData: mdata.h5mu, as the reference
                    writers[os.path.join(dir_path, f"{prefix}{SAVE_KEYS.MDATA_FNAME}")] = (
                        lambda tmp: adata.write_h5mu(tmp, **anndata_write_kwargs)
                    )
                else:
                    writers[os.path.join(dir_path, f"{prefix}{SAVE_KEYS.ADATA_FNAME}")] = (
                        lambda tmp: adata.write_h5ad(tmp, **anndata_write_kwargs)
                    )
        os.makedirs(dir_path, exist_ok=True)
        write_files_atomically(writers)

    @classmethod
    def load(
        cls,
        dir_path: str,
        adata: AnnData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        backup_url: str | None = None,
        datamodule: Any = None,
        allowed_classes_names_list: list[str] | None = None,
    ) -> BaseModelClass:
        """Load a model saved by :meth:`save` (or by scvi-tools).

        Parameters
        ----------
        dir_path
            Directory holding ``{prefix}model.pt``.
        adata
            AnnData to attach; the saved ``adata.h5ad`` when None. Its genes must equal the
            saved ``var_names``.
        accelerator
            ``"auto"``, ``"cpu"``, ``"gpu"`` or ``"cuda"``.
        device
            One device (``"auto"``, an index or a device string).
        prefix
            Prefix of the file names.
        backup_url
            Not supported (no downloads); must be None unless the file exists.
        datamodule
            Accepted for compatibility.
        allowed_classes_names_list
            Other model class names whose files may be loaded into this class.

        Returns
        -------
        BaseModelClass
            The loaded model, in eval mode.
        """
        _, _, torch_device = parse_device_args(
            accelerator, device, return_device="torch", validate_single_device=True
        )
        load_adata = adata is None
        attr_dict, var_names, state_dict, new_adata = _load_saved_files(
            dir_path, load_adata, prefix=prefix, map_location=torch_device, backup_url=backup_url
        )
        adata = new_adata if new_adata is not None else adata
        registry = attr_dict.pop("registry_")
        model_name = registry.get(_MODEL_NAME_KEY)
        allowed = {cls.__name__, *(allowed_classes_names_list or [])}
        if model_name not in allowed:
            raise ValueError("It appears you are loading a model from a different class.")
        if adata is not None and adata is not False:
            if _SETUP_ARGS_KEY not in registry:
                raise ValueError(
                    "Saved model does not contain original setup inputs. "
                    "Cannot load the original setup."
                )
            _validate_var_names(adata, var_names, _used_modalities(registry))
            setup_method = getattr(cls, _setup_method_name(registry))
            setup_method(adata, source_registry=registry, **registry[_SETUP_ARGS_KEY])
        model = _initialize_model(cls, adata if adata is not False else None, registry, attr_dict)
        pyro_param_store = state_dict.pop(_PYRO_PARAM_STORE_KEY, None)
        model.module.on_load(model, pyro_param_store=pyro_param_store)
        try:
            model.module.load_state_dict(state_dict)
        except RuntimeError as err:
            raise ValueError(f"The saved weights do not fit the model's module: {err}") from err
        model.to_device(torch_device)
        model.module.eval()
        if adata is not None and adata is not False:
            from ._minification import check_minified_adata_at_load

            check_minified_adata_at_load(registry, adata)
            model._validate_anndata(adata)
        return model

    @classmethod
    def convert_legacy_save(
        cls,
        dir_path: str,
        output_dir_path: str,
        overwrite: bool = False,
        prefix: str | None = None,
        **save_kwargs: Any,
    ) -> None:
        """Convert a model saved by scvi-tools < 0.15 to today's file format.

        The legacy directory holds ``model_params.pt`` (the module's state dict),
        ``var_names.csv`` and ``attr.pkl`` (the model's attributes, with the old setup
        dictionary); the converted one holds ``model.pt``.

        Parameters
        ----------
        dir_path
            Directory of the legacy files.
        output_dir_path
            Directory to write ``{prefix}model.pt`` to; it may be ``dir_path``.
        overwrite
            Write into ``output_dir_path`` even if it exists.
        prefix
            Prefix of the file names (in both directories).
        **save_kwargs
            Passed to :func:`torch.save`.
        """
        if os.path.exists(output_dir_path) and not overwrite:
            raise ValueError(
                f"{output_dir_path} already exists. Please provide an unexisting directory for "
                "saving."
            )
        prefix = prefix or ""
        state_dict, var_names, attr_dict = _load_legacy_files(dir_path, prefix)
        if "scvi_setup_dict_" in attr_dict:
            from ...data._compat import registry_from_setup_dict

            setup_dict = attr_dict.pop("scvi_setup_dict_")
            attr_dict["registry_"] = registry_from_setup_dict(
                cls, setup_dict, unlabeled_category=attr_dict.get("unlabeled_category_")
            )
        os.makedirs(output_dir_path, exist_ok=True)
        content = {
            SAVE_KEYS.MODEL_STATE_DICT_KEY: state_dict,
            SAVE_KEYS.VAR_NAMES_KEY: var_names,
            SAVE_KEYS.ATTR_DICT_KEY: attr_dict,
        }
        path = os.path.join(output_dir_path, f"{prefix}{SAVE_KEYS.MODEL_FNAME}")
        write_files_atomically({path: lambda tmp: torch.save(content, tmp, **save_kwargs)})

    @staticmethod
    def load_registry(dir_path: str, prefix: str | None = None) -> dict:
        """Return the registry saved in ``dir_path``.

        Parameters
        ----------
        dir_path
            Directory holding ``{prefix}model.pt``.
        prefix
            Prefix of the file names.

        Returns
        -------
        dict
            The saved registry.
        """
        path = os.path.join(dir_path, f"{prefix or ''}{SAVE_KEYS.MODEL_FNAME}")
        if not os.path.exists(path):
            raise ValueError(f"No model file at {path}.")
        attr_dict = safe_torch_load(path, map_location="cpu")[SAVE_KEYS.ATTR_DICT_KEY]
        if "scvi_setup_dict_" in attr_dict:
            raise NotImplementedError("Loading pre-0.15 (legacy) model files is not supported.")
        return attr_dict["registry_"]

    @staticmethod
    def view_setup_args(dir_path: str, prefix: str | None = None) -> None:
        """Print the ``setup_anndata`` arguments of a saved model.

        Parameters
        ----------
        dir_path
            Directory holding ``{prefix}model.pt``.
        prefix
            Prefix of the file names.
        """
        registry = BaseModelClass.load_registry(dir_path, prefix)
        print(f"Setup via `{registry.get(_MODEL_NAME_KEY)}.{_setup_method_name(registry)}`")
        for key, value in registry.get(_SETUP_ARGS_KEY, {}).items():
            print(f"  {key}: {value!r}")


def _setup_method_name(registry: dict) -> str:
    name = registry.get(_SETUP_METHOD_NAME) or "setup_anndata"
    return "setup_anndata" if name == "setup_datamodule" else name


def _load_saved_files(
    dir_path: str,
    load_adata: bool,
    prefix: str | None = None,
    map_location: Any = None,
    backup_url: str | None = None,
) -> tuple[dict, np.ndarray | dict, dict, AnnData | bool | None]:
    """``(attr_dict, var_names, state_dict, adata)`` of a saved model.

    The state dict keeps its ``"pyro_param_store"`` entry (when saved), as in scvi-tools;
    ``adata`` is None unless ``load_adata``, and False when no data was saved.
    """
    import anndata

    prefix = prefix or ""
    model_path = os.path.join(dir_path, f"{prefix}{SAVE_KEYS.MODEL_FNAME}")
    if os.path.exists(model_path):
        logger.info("File %s already downloaded", model_path)
    elif backup_url is not None:
        raise ValueError(
            f"{model_path} does not exist and scvi-rs does not download files "
            f"(backup_url={backup_url!r}); download it first."
        )
    else:
        raise ValueError(f"Failed to load model file at {model_path}.")
    model = safe_torch_load(model_path, map_location=map_location)
    if not isinstance(model, dict) or not {
        SAVE_KEYS.MODEL_STATE_DICT_KEY,
        SAVE_KEYS.VAR_NAMES_KEY,
        SAVE_KEYS.ATTR_DICT_KEY,
    } <= set(model):
        raise ValueError(
            f"{model_path} is not a model file: it lacks the keys "
            f"{SAVE_KEYS.MODEL_STATE_DICT_KEY!r}, {SAVE_KEYS.VAR_NAMES_KEY!r} and "
            f"{SAVE_KEYS.ATTR_DICT_KEY!r}."
        )
    state_dict = dict(model[SAVE_KEYS.MODEL_STATE_DICT_KEY])
    var_names = _saved_var_names(model[SAVE_KEYS.VAR_NAMES_KEY], model_path)
    attr_dict = dict(model[SAVE_KEYS.ATTR_DICT_KEY])
    adata: AnnData | bool | None = None
    if load_adata:
        is_mudata = attr_dict.get("registry_", {}).get(_SETUP_METHOD_NAME) == "setup_mudata"
        file_name = SAVE_KEYS.MDATA_FNAME if is_mudata else SAVE_KEYS.ADATA_FNAME
        adata_path = os.path.join(dir_path, f"{prefix}{file_name}")
        if os.path.exists(adata_path):
            check_regular_file(adata_path, "saved AnnData")
            try:
                if is_mudata:
                    from ...data.fields._mudata import require_mudata

                    adata = require_mudata().read_h5mu(adata_path)
                else:
                    adata = anndata.read_h5ad(adata_path)
            except Exception as err:
                raise ValueError(f"Could not read {adata_path}: {err}") from err
        else:
            warnings.warn(
                "Save path contains no saved anndata and no adata was passed. "
                "Model will be loaded without anndata.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            adata = False
    return attr_dict, var_names, state_dict, adata


def _load_legacy_files(dir_path: str, prefix: str) -> tuple[dict, np.ndarray, dict]:
    """(state dict, var names, attributes) of a model saved by scvi-tools < 0.15."""
    paths = {
        name: os.path.join(dir_path, f"{prefix}{name}")
        for name in (
            SAVE_KEYS.LEGACY_MODEL_FNAME,
            SAVE_KEYS.LEGACY_VAR_NAMES_FNAME,
            SAVE_KEYS.LEGACY_SETUP_DICT_FNAME,
        )
    }
    for path in paths.values():
        if not os.path.isfile(path):
            raise ValueError(f"{path} is missing: {dir_path} holds no legacy (< 0.15) model.")
    state_dict = safe_torch_load(paths[SAVE_KEYS.LEGACY_MODEL_FNAME], map_location="cpu")
    with open(paths[SAVE_KEYS.LEGACY_VAR_NAMES_FNAME], encoding="utf-8") as fh:
        var_names = np.array([line.rstrip("\r\n") for line in fh if line.strip()], dtype=str)
    attr_dict = safe_pickle_load(paths[SAVE_KEYS.LEGACY_SETUP_DICT_FNAME])
    if not isinstance(state_dict, dict) or not isinstance(attr_dict, dict):
        raise ValueError(f"{dir_path} does not hold a legacy model's state dict and attributes.")
    return dict(state_dict), var_names, dict(attr_dict)


def _get_var_names(adata: Any, legacy_mudata_format: bool = False) -> np.ndarray | dict:
    """The variable names of an AnnData, or of a MuData per modality (or flat if legacy)."""
    from ...data._utils import _is_mudata

    if _is_mudata(adata) and not legacy_mudata_format:
        return {str(name): mod.var_names.astype(str).to_numpy() for name, mod in adata.mod.items()}
    if not isinstance(adata, AnnData) and not _is_mudata(adata):
        raise TypeError(
            f"`adata` must be an AnnData or MuData object, got {type(adata).__name__}."
        )
    return adata.var_names.astype(str).to_numpy()


def _saved_var_names(saved: Any, path: str) -> np.ndarray | dict:
    """The ``var_names`` of a model file: an array, or a dict from modality to an array."""
    if isinstance(saved, dict):
        return {str(name): np.asarray(names) for name, names in saved.items()}
    names = np.asarray(saved)
    if names.ndim != 1:
        raise ValueError(
            f"{path} is not a model file: its var_names are neither a list of names nor a "
            f"dict from modality to names (an array of shape {names.shape})."
        )
    return names


def _validate_var_names(
    adata: Any, source_var_names: np.ndarray | dict, used_modalities: Sequence[str] | None = None
) -> None:
    """Raise ``ValueError`` unless ``adata``'s variables are the saved ones, in order.

    Saved per modality (a dict, as a MuData model is saved), the MuData must have each of
    ``used_modalities`` (every saved one when None) with the saved names; a modality the
    model does not read only gets a warning when its names differ (scvi-tools warns for
    every modality). Saved flat: the AnnData's names, or a MuData's names of every
    modality concatenated (older MuData files).
    """
    from ...data._utils import _is_mudata

    if not isinstance(source_var_names, dict):
        where = "the MuData (every modality's, in order)" if _is_mudata(adata) else "the AnnData"
        _check_same_var_names(
            _get_var_names(adata, legacy_mudata_format=True), source_var_names, where
        )
        return
    if not _is_mudata(adata):
        raise ValueError(
            "The model was saved with a MuData (var_names per modality: "
            f"{sorted(source_var_names)}); load it with a MuData, not an AnnData."
        )
    required = source_var_names if used_modalities is None else used_modalities
    missing = [m for m in required if m in source_var_names and m not in adata.mod]
    if missing:
        raise ValueError(
            f"The MuData lacks the modalities {missing} that the model was saved with "
            f"(its modalities: {sorted(adata.mod)})."
        )
    for modality, names in source_var_names.items():
        if modality not in adata.mod:
            continue
        user_names = adata.mod[modality].var_names.astype(str).to_numpy()
        try:
            _check_same_var_names(user_names, names, f"modality {modality!r}")
        except ValueError as err:
            if modality in required:
                raise
            warnings.warn(
                f"{err} The model does not read this modality.",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )


def _used_modalities(registry: dict) -> list[str] | None:
    """The modalities a ``setup_mudata`` registry reads (None when it names none)."""
    modalities = registry.get(_SETUP_ARGS_KEY, {}).get("modalities")
    if not isinstance(modalities, dict):
        return None
    return [str(m) for m in dict.fromkeys(modalities.values()) if m is not None]


def _check_same_var_names(
    user_var_names: np.ndarray, source_var_names: np.ndarray, where: str
) -> None:
    source = np.asarray(source_var_names).astype(str)
    if user_var_names.shape != source.shape or not np.array_equal(user_var_names, source):
        source_set, user_set = set(source), set(user_var_names)
        extra = [str(g) for g in user_var_names[:100_000] if g not in source_set][:5]
        missing = [str(g) for g in source[:100_000] if g not in user_set][:5]
        raise ValueError(
            f"The var_names of {where} do not match the var_names the model was saved with "
            f"({len(user_var_names)} genes given, {len(source)} saved; not saved: {extra}; "
            f"missing: {missing}). Reorder or subset the genes to the model's var_names."
        )


def _pyro_param_store_state() -> dict:
    """The state of Pyro's parameter store, which scvi-tools saves beside every state dict.

    Pyro is not imported for it: while it is not loaded its store is empty.
    """
    pyro = sys.modules.get("pyro")
    if pyro is None or not hasattr(pyro, "get_param_store"):
        return {"params": {}, "constraints": {}}
    return pyro.get_param_store().get_state()


def _initialize_model(
    cls: type[BaseModelClass], adata: AnnData | None, registry: dict, attr_dict: dict
) -> BaseModelClass:
    if "init_params_" not in attr_dict:
        raise ValueError(
            "No init_params_ were saved by the model. Check out the developers guide if "
            "creating custom models."
        )
    init_params = attr_dict.pop("init_params_")
    non_kwargs = dict(init_params.get("non_kwargs", {}))
    kwargs = {}
    for value in init_params.get("kwargs", {}).values():
        kwargs.update(value)
    for legacy in ("unlabeled_category", "pretrained_model", "use_cuda"):
        non_kwargs.pop(legacy, None)
        kwargs.pop(legacy, None)
    params = {**non_kwargs, **kwargs}
    if "registry" in inspect.signature(cls.__init__).parameters:
        model = cls(adata, registry=registry, **params)
    else:
        if adata is None:
            raise ValueError(
                f"{cls.__name__} cannot be built without AnnData; pass `adata` to load()."
            )
        model = cls(adata, **params)
    for name, value in attr_dict.items():
        setattr(model, name, value)
    return model
