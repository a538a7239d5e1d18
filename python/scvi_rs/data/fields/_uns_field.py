"""Fields on ``adata.uns`` entries."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .. import _constants
from ._base_field import BaseAnnDataField

if TYPE_CHECKING:
    from anndata import AnnData


class BaseUnsField(BaseAnnDataField):
    """A field pointing at ``adata.uns[uns_key]``."""

    _attr_name = _constants._ADATA_ATTRS.UNS

    def __init__(self, registry_key: str, uns_key: str | None, required: bool = True) -> None:
        super().__init__()
        if required and uns_key is None:
            raise ValueError(
                "`uns_key` cannot be `None` if `required=True`. Please provide an `uns_key`."
            )
        self._registry_key = registry_key
        self._attr_key = uns_key
        self._is_empty = uns_key is None

    @property
    def registry_key(self) -> str:
        return self._registry_key

    @property
    def attr_name(self) -> str:
        return self._attr_name

    @property
    def attr_key(self) -> str | None:
        return self._attr_key

    @property
    def is_empty(self) -> bool:
        return self._is_empty


class StringUnsField(BaseUnsField):
    """A string value stored in ``adata.uns[uns_key]``.

    Parameters
    ----------
    registry_key
        Key to register the field under.
    uns_key
        Key in ``adata.uns``; ``None`` (with ``required=False``) makes the field empty.
    required
        Whether ``uns_key`` must be given.
    """

    def validate_field(self, adata: AnnData) -> None:
        super().validate_field(adata)
        if self.attr_key not in adata.uns:
            raise KeyError(f"{self.attr_key} not found in adata.uns.")
        value = adata.uns[self.attr_key]
        if not isinstance(value, str):
            raise ValueError(
                f"adata.uns['{self.attr_key}'] must be a string, found {type(value).__name__}."
            )

    def register_field(self, adata: AnnData) -> dict:
        return super().register_field(adata)

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs: Any) -> dict:
        super().transfer_field(state_registry, adata_target, **kwargs)
        return self.register_field(adata_target)

    def get_summary_stats(self, _state_registry: dict) -> dict:
        return {}

    def view_state_registry(self, _state_registry: dict) -> None:
        return None
