"""MuData fields: an AnnData field applied to one modality of a MuData object.

``MuDataWrapper(FieldClass)`` builds a field class taking the wrapped class's arguments plus
``mod_key`` and ``mod_required``; it registers ``FieldClass`` on ``mdata.mod[mod_key]`` (or
on the MuData itself when ``mod_key`` is None) and records ``mod_key`` in the data registry.
None of this imports ``mudata``: a MuData is recognised by its ``mod`` mapping.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from .._utils import _is_mudata
from ._base_field import AnnDataField, BaseAnnDataField

if TYPE_CHECKING:
    from anndata import AnnData

_MUDATA_EXTRA_HINT = "pip install scvi-rs[mudata]"


def require_mudata() -> Any:
    """Import and return the ``mudata`` package, or explain how to install it.

    Raises
    ------
    ImportError
        If ``mudata`` is not installed; the message names the ``scvi-rs[mudata]`` extra.
    """
    try:
        import mudata
    except ImportError as err:
        raise ImportError(
            f"MuData support needs the optional `mudata` package: run `{_MUDATA_EXTRA_HINT}` "
            "(or `pip install mudata`)."
        ) from err
    return mudata


class BaseMuDataWrapperClass(BaseAnnDataField):
    """Base of the MuData fields: forwards every call to a wrapped AnnData field.

    Parameters
    ----------
    mod_key
        Modality holding the data; ``None`` uses the MuData's own attributes
        (``mdata.obs``, ``mdata.obsm``, ...).
    mod_required
        Refuse ``mod_key=None`` (``ValueError``).
    """

    def __init__(self, mod_key: str | None = None, mod_required: bool = False) -> None:
        super().__init__()
        if mod_required and mod_key is None:
            raise ValueError(f"Modality required for {self.__class__.__name__} but not provided.")
        self._mod_key = mod_key
        self._preregister: Callable[[BaseMuDataWrapperClass, Any], None] = _no_preregister
        self._adata_field: BaseAnnDataField

    @property
    def adata_field(self) -> BaseAnnDataField:
        """The wrapped AnnData field instance."""
        return self._adata_field

    @property
    def registry_key(self) -> str:
        return self.adata_field.registry_key

    @property
    def mod_key(self) -> str | None:
        return self._mod_key

    @property
    def attr_name(self) -> str:
        return self.adata_field.attr_name

    @property
    def attr_key(self) -> str | None:
        return self.adata_field.attr_key

    @property
    def is_empty(self) -> bool:
        return self.adata_field.is_empty

    def get_modality(self, mdata: Any) -> Any:
        """The AnnData of modality ``mod_key`` (the MuData itself when ``mod_key`` is None).

        Raises
        ------
        AssertionError
            If ``mdata`` is not a MuData.
        ValueError
            If ``mdata`` has no modality ``mod_key``.
        """
        if not _is_mudata(mdata):
            raise AssertionError(
                f"{self.__class__.__name__} can only be registered on MuData objects, got "
                f"{type(mdata).__name__}; use setup_anndata for AnnData."
            )
        if self.mod_key is None:
            return mdata
        if self.mod_key not in mdata.mod:
            raise ValueError(
                f"Modality {self.mod_key} not found in mdata.mod (modalities: "
                f"{list(mdata.mod.keys())})."
            )
        return mdata.mod[self.mod_key]

    def preregister(self, mdata: Any) -> None:
        """Hook run before registering or transferring (data shared across modalities)."""
        self._preregister(self, mdata)

    def validate_field(self, mdata: Any) -> None:
        self.adata_field.validate_field(self.get_modality(mdata))

    def register_field(self, mdata: Any) -> dict:
        self.preregister(mdata)
        return self.adata_field.register_field(self.get_modality(mdata))

    def transfer_field(self, state_registry: dict, mdata_target: Any, **kwargs: Any) -> dict:
        self.preregister(mdata_target)
        return self.adata_field.transfer_field(
            state_registry, self.get_modality(mdata_target), **kwargs
        )

    def get_summary_stats(self, state_registry: dict) -> dict:
        return self.adata_field.get_summary_stats(state_registry)

    def view_state_registry(self, state_registry: dict) -> Any:
        return self.adata_field.view_state_registry(state_registry)

    def _replay_snapshot(self, mdata: Any, state_registry: dict, fresh: bool) -> dict | None:
        # A preregister hook writes across modalities: no shortcut, always replay in full.
        if self._preregister is not _no_preregister or not _is_mudata(mdata):
            return None
        if self.mod_key is not None and self.mod_key not in mdata.mod:
            return None
        return self.adata_field._replay_snapshot(self.get_modality(mdata), state_registry, fresh)


def _no_preregister(field: BaseMuDataWrapperClass, mdata: Any) -> None:
    return None


def MuDataWrapper(
    adata_field_cls: AnnDataField, preregister_fn: Callable | None = None
) -> AnnDataField:
    """Build the MuData version of an AnnData field class.

    Parameters
    ----------
    adata_field_cls
        The AnnData field class to wrap (a class, not an instance).
    preregister_fn
        ``fn(field, mdata)`` run at the start of ``register_field`` and ``transfer_field``.

    Returns
    -------
    type
        ``MuData<ClassName>``, a :class:`BaseMuDataWrapperClass` subclass whose constructor
        takes the wrapped class's arguments plus ``mod_key`` and ``mod_required``.
    """
    if not isinstance(adata_field_cls, type):
        raise ValueError("`adata_field_cls` must be a class, not an instance.")

    def __init__(
        self: BaseMuDataWrapperClass,
        *args: Any,
        mod_key: str | None = None,
        mod_required: bool = False,
        **kwargs: Any,
    ) -> None:
        BaseMuDataWrapperClass.__init__(self, mod_key=mod_key, mod_required=mod_required)
        self._adata_field = adata_field_cls(*args, **kwargs)
        if preregister_fn is not None:
            self._preregister = preregister_fn

    name = f"MuData{adata_field_cls.__name__}"
    return type(
        name,
        (BaseMuDataWrapperClass,),
        {
            "__init__": __init__,
            "__doc__": f"{adata_field_cls.__name__} registered on one modality of a MuData.",
            "__module__": __name__,
            "__qualname__": name,
        },
    )


def copy_batch_to_modality(field: BaseMuDataWrapperClass, mdata: Any) -> None:
    """Preregister hook of protein fields: copy the encoded batch into the field's modality.

    The protein batch mask groups cells by batch, and the batch is registered on another
    modality (or on the MuData); the wrapped field reads it from its own modality.
    """
    inner = field.adata_field
    if isinstance(inner.batch_field, BaseMuDataWrapperClass):
        # the MuData batch field for reading, its AnnData field for the wrapped field
        field.batch_field = inner.batch_field
        inner.batch_field = field.batch_field.adata_field
    batch_field = getattr(field, "batch_field", inner.batch_field)
    if batch_field is None:  # use_batch_mask=False: nothing to copy
        return
    batch = np.asarray(batch_field.get_field_data(mdata))
    modality: AnnData = field.get_modality(mdata)
    getattr(modality, batch_field.attr_name)[batch_field.attr_key] = batch.reshape(-1)
