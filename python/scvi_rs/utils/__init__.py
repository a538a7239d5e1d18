"""Utilities shared across scvi_rs (``scvi.utils`` compatible names)."""

from ._attrdict import attrdict
from ._dependencies import (
    dependencies,
    error_on_missing_dependencies,
    unsupported_if_adata_minified,
)
from ._docstrings import setup_anndata_dsp
from ._table import Table
from ._track import track

__all__ = [
    "Table",
    "attrdict",
    "dependencies",
    "error_on_missing_dependencies",
    "setup_anndata_dsp",
    "track",
    "unsupported_if_adata_minified",
]
