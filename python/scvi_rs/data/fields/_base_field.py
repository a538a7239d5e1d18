"""``BaseAnnDataField``: the contract every registered field follows."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING, Any

from .. import _constants
from .._utils import get_anndata_attribute

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd
    from anndata import AnnData


class BaseAnnDataField(ABC):
    """Abstract class for a single AnnData (or MuData) field.

    A field knows where its data lives (``attr_name``/``attr_key``), validates it,
    registers it (possibly writing encoded data onto the object) into a *state registry*,
    transfers a source state registry onto a new object, and derives summary statistics.
    """

    @property
    @abstractmethod
    def registry_key(self) -> str:
        """Key of the field in the registry and in minibatch dictionaries."""

    @property
    @abstractmethod
    def attr_name(self) -> str:
        """Name of the AnnData attribute holding the data (``"X"``, ``"obs"``, ...)."""

    @property
    @abstractmethod
    def attr_key(self) -> str | None:
        """Key within ``attr_name``, or ``None`` for the attribute itself."""

    @property
    def mod_key(self) -> str | None:
        """Modality key for MuData fields; ``None`` for AnnData fields."""
        return None

    @property
    @abstractmethod
    def is_empty(self) -> bool:
        """An empty field registers no data but still reports summary stats."""

    @abstractmethod
    def validate_field(self, adata: AnnData) -> None:
        """Raise if ``adata`` is incompatible with this field."""

    @abstractmethod
    def register_field(self, adata: AnnData) -> dict:
        """Register the field on ``adata`` and return its state registry."""
        self.validate_field(adata)
        return {}

    @abstractmethod
    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs: Any) -> dict:
        """Register the field on ``adata_target`` following a source state registry."""
        return {}

    @abstractmethod
    def get_summary_stats(self, state_registry: dict) -> dict:
        """Summary statistics derived from a state registry."""

    @abstractmethod
    def view_state_registry(self, state_registry: dict) -> Any:
        """A table describing the state registry, or ``None``."""

    def get_field_data(self, adata: AnnData) -> np.ndarray | pd.DataFrame:
        """The data this field points at on ``adata``."""
        if self.is_empty:
            raise AssertionError(f"The {self.registry_key} field is empty.")
        return get_anndata_attribute(adata, self.attr_name, self.attr_key, mod_key=self.mod_key)

    def get_data_registry(self) -> dict:
        """``{"attr_name", "attr_key"[, "mod_key"]}``, or ``{}`` for an empty field."""
        if self.is_empty:
            return {}
        data_registry = {
            _constants._DR_ATTR_NAME: self.attr_name,
            _constants._DR_ATTR_KEY: self.attr_key,
        }
        if self.mod_key is not None:
            data_registry[_constants._DR_MOD_KEY] = self.mod_key
        return data_registry

    # -- replay shortcut (scvi_rs addition) ---------------------------------------------
    def _replay_snapshot(self, adata: AnnData, state_registry: dict, fresh: bool) -> dict | None:
        """Everything a replay of this field would read and write on ``adata``.

        ``fresh=True`` is asked right after registration. The manager fingerprints the
        snapshot (``_core.registry_fingerprint``); when a replay finds the same fingerprint
        it keeps the field's registry instead of re-registering. ``None`` (the default):
        always re-register. Only fields whose registration is expensive (encoding) opt in.
        """
        return None


AnnDataField = type[BaseAnnDataField]
