"""The ids scvi writes into ``adata.uns`` (``_scvi_uuid``, ``_scvi_manager_uuid``).

They are made and checked by the Rust core (``_core.new_uuid`` / ``_core.validate_uuid``). An
id that is not a UUID was edited by hand or written by something else; looking it up would
only fail later with a confusing "set up your AnnData first", so it is refused here.
"""

from __future__ import annotations

from typing import Any

from .. import _core


def new_uuid() -> str:
    """A new random UUID4 string (lower case), like ``str(uuid.uuid4())``."""
    return _core.new_uuid()


def read_uuid(uns: Any, key: str) -> str | None:
    """``uns[key]`` if it is a well-formed UUID, None if absent; ``ValueError`` otherwise.

    Parameters
    ----------
    uns
        ``adata.uns``.
    key
        ``"_scvi_uuid"`` or ``"_scvi_manager_uuid"``.
    """
    if key not in uns:
        return None
    value = uns[key]
    if not isinstance(value, str) or not _core.validate_uuid(value):
        raise ValueError(
            f"adata.uns[{key!r}] = {value!r} is not a UUID (was it edited?); delete it and set "
            "up the AnnData again."
        )
    return value
