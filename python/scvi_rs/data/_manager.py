"""``AnnDataManager``: registers the fields of a model on an AnnData and keeps the registry."""

from __future__ import annotations

import copy
import logging
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..utils._attrdict import attrdict
from ..utils._table import Table, print_renderable
from . import _constants
from ._digest import fingerprint
from ._utils import (
    _assign_adata_uuid,
    _check_if_view,
    _check_mudata_fully_paired,
    get_anndata_attribute,
)
from ._uuids import new_uuid, read_uuid

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

    from .fields import AnnDataField

logger = logging.getLogger("scvi_rs")


@dataclass
class AnnDataManagerValidationCheck:
    """Which global checks ``register_fields`` runs.

    Parameters
    ----------
    check_if_view
        Refuse AnnData views.
    check_fully_paired_mudata
        MuData only: refuse unpaired observations.
    """

    check_if_view: bool = True
    check_fully_paired_mudata: bool = True


class AnnDataManager:
    """Registers a list of fields on one AnnData object and keeps their registry.

    Parameters
    ----------
    fields
        Field instances, registered in this order.
    setup_method_args
        ``{"model_name", "setup_method_name", "setup_args"}`` of the model's setup method,
        merged into the registry.
    validation_checks
        Global checks run before registration.

    Notes
    -----
    The registry layout is the reference's: ``scvi_version``, ``model_name``,
    ``setup_args``, ``field_registries`` (``{registry_key: {"data_registry",
    "state_registry", "summary_stats"}}``), then the setup method args and ``_scvi_uuid``.
    Registration writes ``adata.uns["_scvi_uuid"]`` (once) and
    ``adata.uns["_scvi_manager_uuid"]`` (this manager's id).
    """

    def __init__(
        self,
        fields: Sequence[AnnDataField] | None = None,
        setup_method_args: dict | None = None,
        validation_checks: AnnDataManagerValidationCheck | None = None,
    ) -> None:
        self.id = new_uuid()
        self.adata: AnnData | None = None
        self.fields = list(fields) if fields else []
        self.validation_checks = validation_checks or AnnDataManagerValidationCheck()
        self._registry: dict[str, Any] = {
            _constants._SCVI_VERSION_KEY: _constants._SCVI_COMPAT_VERSION,
            _constants._MODEL_NAME_KEY: None,
            _constants._SETUP_ARGS_KEY: None,
            _constants._FIELD_REGISTRIES_KEY: defaultdict(dict),
        }
        if setup_method_args is not None:
            self._registry.update(setup_method_args)
        self._source_registry: dict | None = None
        self._transfer_kwargs: dict[str, Any] = {}
        # registry key -> fingerprint of what the field read and wrote at registration
        self._replay_fingerprints: dict[str, str] = {}
        self._replaying = False

    # -- checks ----------------------------------------------------------------------------
    def _assert_anndata_registered(self) -> None:
        if self.adata is None:
            raise AssertionError("AnnData object not registered. Please call register_fields.")

    def _validate_anndata_object(self, adata: AnnData) -> None:
        if self.validation_checks.check_if_view:
            _check_if_view(adata, copy_if_view=False)
        if self.validation_checks.check_fully_paired_mudata:
            _check_mudata_fully_paired(adata)

    # -- registration ----------------------------------------------------------------------
    def register_fields(
        self, adata: AnnData, source_registry: dict | None = None, **transfer_kwargs: Any
    ) -> None:
        """Register every field on ``adata``.

        Parameters
        ----------
        adata
            The AnnData to register.
        source_registry
            A registry to transfer from (``transfer_fields``, loading a saved model): fields
            present in it follow its state (category mappings, ...); others register fresh.
        **transfer_kwargs
            Passed to each field's ``transfer_field`` (``extend_categories``, ...); only
            allowed together with ``source_registry``.
        """
        if self.adata is not None:
            raise AssertionError("Existing AnnData object registered with this Manager instance.")
        if source_registry is None and transfer_kwargs:
            raise TypeError(
                f"register_fields() got unexpected keyword arguments {transfer_kwargs} passed "
                "without a source_registry."
            )
        self._validate_anndata_object(adata)
        for field in self.fields:
            self._add_field(field, adata, source_registry, **transfer_kwargs)
        self._source_registry = copy.deepcopy(source_registry)
        self._transfer_kwargs = copy.deepcopy(transfer_kwargs)
        self.adata = adata
        self._assign_uuid()
        self._assign_most_recent_manager_uuid()

    def _add_field(
        self,
        field: AnnDataField,
        adata: AnnData,
        source_registry: dict | None = None,
        **transfer_kwargs: Any,
    ) -> None:
        rk = field.registry_key
        field_registries = self._registry[_constants._FIELD_REGISTRIES_KEY]
        if self._replaying and self._replay_is_noop(field, adata):
            return
        field_registry = {
            _constants._DATA_REGISTRY_KEY: field.get_data_registry(),
            _constants._STATE_REGISTRY_KEY: {},
        }
        field_registries[rk] = field_registry
        state: dict = {}
        if not field.is_empty:
            source_fields = (
                source_registry.get(_constants._FIELD_REGISTRIES_KEY, {})
                if source_registry is not None
                else {}
            )
            if rk in source_fields:
                source_state = source_fields[rk][_constants._STATE_REGISTRY_KEY]
                state = field.transfer_field(source_state, adata, **transfer_kwargs)
            else:
                state = field.register_field(adata)
            field_registry[_constants._STATE_REGISTRY_KEY] = state
        field_registry[_constants._SUMMARY_STATS_KEY] = field.get_summary_stats(state)
        self._record_replay_fingerprint(field, adata, state)

    # -- replay shortcut: skip re-encoding a field whose inputs and outputs are unchanged --
    @staticmethod
    def _field_fingerprint(
        field: AnnDataField, adata: AnnData, state: dict, fresh: bool
    ) -> str | None:
        snapshot_fn = getattr(field, "_replay_snapshot", None)
        if snapshot_fn is None or field.is_empty:
            return None
        try:
            snapshot = snapshot_fn(adata, state, fresh)
            return None if snapshot is None else fingerprint(snapshot)
        except (ValueError, TypeError, KeyError):
            # anything unusual (e.g. a NaN in the state): no shortcut, replay in full
            return None

    def _record_replay_fingerprint(self, field: AnnDataField, adata: AnnData, state: dict) -> None:
        fp = self._field_fingerprint(field, adata, state, fresh=True)
        if fp is None:
            self._replay_fingerprints.pop(field.registry_key, None)
        else:
            self._replay_fingerprints[field.registry_key] = fp

    def _replay_is_noop(self, field: AnnDataField, adata: AnnData) -> bool:
        """True when re-registering ``field`` would rewrite exactly what is already there."""
        rk = field.registry_key
        stored = self._replay_fingerprints.get(rk)
        registry = self._registry[_constants._FIELD_REGISTRIES_KEY].get(rk)
        if stored is None or not registry:
            return False
        state = registry[_constants._STATE_REGISTRY_KEY]
        return self._field_fingerprint(field, adata, state, fresh=False) == stored

    def _replay(self) -> None:
        """Re-register on ``self.adata`` with the original source registry and kwargs."""
        adata = self.adata
        self.adata = None
        self._replaying = True
        try:
            self.register_fields(adata, self._source_registry, **self._transfer_kwargs)
        except BaseException:
            self.adata = adata
            raise
        finally:
            self._replaying = False

    def register_new_fields(self, fields: list[AnnDataField]) -> None:
        """Register additional fields on the already registered AnnData."""
        if self.adata is None:
            raise AssertionError(
                "No AnnData object has been registered with this Manager instance."
            )
        self.validate()
        for field in fields:
            self._add_field(field, self.adata)
        if self._source_registry is not None:
            self._source_registry = copy.deepcopy(self._registry)
        self.fields += list(fields)

    def transfer_fields(self, adata_target: AnnData, **kwargs: Any) -> AnnDataManager:
        """Register the same fields on ``adata_target`` following this manager's registry.

        Returns a new manager (sharing the field instances) registered on ``adata_target``.
        ``extend_categories=True`` appends unseen categories instead of raising.
        """
        self._assert_anndata_registered()
        fields = self.fields
        new_manager = self.__class__(
            fields=fields,
            setup_method_args=self._get_setup_method_args(),
            validation_checks=self.validation_checks,
        )
        new_manager.register_fields(adata_target, self._registry, **kwargs)
        return new_manager

    def validate(self) -> None:
        """Make sure the registered AnnData holds this manager's encodings.

        If another manager registered the same AnnData since (``uns["_scvi_manager_uuid"]``
        differs from ``self.id``), the registration is replayed with the same source registry
        and transfer kwargs. Fields whose inputs and outputs are unchanged since this manager
        wrote them (checked by fingerprint) are not re-encoded.
        """
        self._assert_anndata_registered()
        most_recent = read_uuid(self.adata.uns, _constants._MANAGER_UUID_KEY)
        if most_recent != self.id:
            logger.debug(
                "AnnData was last registered by manager %s; replaying the registration of %s.",
                most_recent,
                self.id,
            )
            self._replay()

    def _assign_uuid(self) -> None:
        self._assert_anndata_registered()
        _assign_adata_uuid(self.adata)
        self._registry[_constants._SCVI_UUID_KEY] = read_uuid(
            self.adata.uns, _constants._SCVI_UUID_KEY
        )

    def _assign_most_recent_manager_uuid(self) -> None:
        self._assert_anndata_registered()
        self.adata.uns[_constants._MANAGER_UUID_KEY] = self.id

    def update_setup_method_args(self, setup_method_args: dict) -> None:
        """Update ``registry["setup_args"]`` with ``setup_method_args``."""
        self._registry[_constants._SETUP_ARGS_KEY].update(setup_method_args)

    def _get_setup_method_args(self) -> dict:
        keys = (_constants._MODEL_NAME_KEY, _constants._SETUP_ARGS_KEY)
        return {k: v for k, v in self._registry.items() if k in keys}

    def create_torch_dataset(
        self,
        indices: Sequence[int] | Sequence[bool] | None = None,
        data_and_attributes: list[str] | dict[str, np.dtype] | None = None,
        load_sparse_tensor: bool = False,
    ):
        """An ``AnnTorchDataset`` over the registered data (a ``Subset`` with ``indices``)."""
        from ._anntorchdataset import AnnTorchDataset

        dataset = AnnTorchDataset(
            self, getitem_tensors=data_and_attributes, load_sparse_tensor=load_sparse_tensor
        )
        if indices is None:
            return dataset
        from torch.utils.data import Subset

        indices = np.asarray(indices)
        if indices.dtype == bool:
            indices = np.flatnonzero(indices)
        return Subset(dataset, indices)

    # -- registry views ----------------------------------------------------------------------
    @property
    def adata_uuid(self) -> str:
        """``_scvi_uuid`` of the registered AnnData."""
        self._assert_anndata_registered()
        return self._registry[_constants._SCVI_UUID_KEY]

    @property
    def registry(self) -> dict:
        """The live registry dictionary (not a copy)."""
        return self._registry

    @property
    def data_registry(self) -> attrdict:
        """``{registry_key: {"attr_name", "attr_key"}}`` for every field holding data."""
        self._assert_anndata_registered()
        return self._get_data_registry_from_registry(self._registry)

    @property
    def summary_stats(self) -> attrdict:
        """All fields' summary statistics merged (``n_vars``, ``n_batch``, ...)."""
        return self._get_summary_stats_from_registry(self._registry)

    @staticmethod
    def _get_data_registry_from_registry(registry: dict) -> attrdict:
        data_registry = {}
        for rk, field_registry in registry[_constants._FIELD_REGISTRIES_KEY].items():
            entry = field_registry[_constants._DATA_REGISTRY_KEY]
            if entry:
                data_registry[rk] = entry
        return attrdict(data_registry)

    @staticmethod
    def _get_summary_stats_from_registry(registry: dict) -> attrdict:
        summary_stats: dict[str, Any] = {}
        for field_registry in registry[_constants._FIELD_REGISTRIES_KEY].values():
            for key, value in field_registry.get(_constants._SUMMARY_STATS_KEY, {}).items():
                if key in summary_stats:
                    raise RuntimeError(
                        "Trying to set a field that is already existing in model's summary stats"
                    )
                summary_stats[key] = value
        return attrdict(summary_stats)

    def get_from_registry(self, registry_key: str) -> np.ndarray | pd.DataFrame:
        """The data registered under ``registry_key`` (array, sparse matrix or DataFrame)."""
        data_loc = self.data_registry[registry_key]
        return get_anndata_attribute(
            self.adata,
            data_loc[_constants._DR_ATTR_NAME],
            data_loc[_constants._DR_ATTR_KEY],
            mod_key=data_loc.get(_constants._DR_MOD_KEY, None),
        )

    def get_state_registry(self, registry_key: str) -> attrdict:
        """The state registry of ``registry_key`` as an ``attrdict``."""
        self._assert_anndata_registered()
        return attrdict(
            self._registry[_constants._FIELD_REGISTRIES_KEY][registry_key][
                _constants._STATE_REGISTRY_KEY
            ]
        )

    # -- printing ----------------------------------------------------------------------------
    @staticmethod
    def _view_summary_stats(summary_stats: attrdict, as_markdown: bool = False) -> Table | str:
        table = Table(title="Summary Statistics")
        table.add_column("Summary Stat Key", justify="center", style="dodger_blue1")
        table.add_column("Value", justify="center", style="dark_violet")
        for key, value in summary_stats.items():
            table.add_row(str(key), str(value))
        return table.to_markdown() if as_markdown else table

    @staticmethod
    def _view_data_registry(data_registry: attrdict, as_markdown: bool = False) -> Table | str:
        table = Table(title="Data Registry")
        table.add_column("Registry Key", justify="center", style="dodger_blue1")
        table.add_column("scvi-tools Location", justify="center", style="dark_violet")
        for rk, entry in data_registry.items():
            attr_name = entry[_constants._DR_ATTR_NAME]
            attr_key = entry[_constants._DR_ATTR_KEY]
            mod_key = entry.get(_constants._DR_MOD_KEY, None)
            prefix = "adata" if mod_key is None else f"adata.mod['{mod_key}']"
            if attr_key is None:
                location = f"{prefix}.{attr_name}"
            else:
                location = f"{prefix}.{attr_name}['{attr_key}']"
            table.add_row(str(rk), location)
        return table.to_markdown() if as_markdown else table

    @staticmethod
    def view_setup_method_args(registry: dict) -> None:
        """Print the setup method and its arguments recorded in ``registry``."""
        model_name = registry.get(_constants._MODEL_NAME_KEY)
        setup_args = registry.get(_constants._SETUP_ARGS_KEY)
        if model_name is not None and setup_args is not None:
            import pprint

            print(f"Setup via `{model_name}.setup_anndata` with arguments:")
            pprint.pprint(setup_args, sort_dicts=False)
            print()

    def view_registry(self, hide_state_registries: bool = False) -> None:
        """Print the setup summary: version, setup args, summary stats, data registry and
        (unless hidden) every field's state registry."""
        version = self._registry[_constants._SCVI_VERSION_KEY]
        print(f"Anndata setup with scvi-tools version {version}.")
        print()
        self.view_setup_method_args(self._registry)
        print_renderable(self._view_summary_stats(self.summary_stats))
        print_renderable(self._view_data_registry(self.data_registry))
        if hide_state_registries:
            return
        for field in self.fields:
            state = self.get_state_registry(field.registry_key)
            table = field.view_state_registry(state)
            if table is not None:
                print_renderable(table)

    def view_summary_stats(self) -> None:
        """Print the summary statistics table."""
        print_renderable(self._view_summary_stats(self.summary_stats))

    def view_data_registry(self) -> None:
        """Print the data registry table."""
        print_renderable(self._view_data_registry(self.data_registry))
