"""Data registration (``scvi.data`` compatible): ``AnnDataManager``, fields, synthetic data."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

try:  # anndata >= 0.11
    from anndata.io import read_csv, read_h5ad, read_loom, read_text
except ImportError:  # pragma: no cover - older anndata
    from anndata import read_csv, read_h5ad, read_loom, read_text

from . import fields
from ._constants import _ADATA_MINIFY_TYPE_UNS_KEY, ADATA_MINIFY_TYPE
from ._manager import AnnDataManager, AnnDataManagerValidationCheck
from ._synthetic import synthetic_iid

if TYPE_CHECKING:
    from ._anntorchdataset import AnnTorchDataset

__all__ = [
    "ADATA_MINIFY_TYPE",
    "_ADATA_MINIFY_TYPE_UNS_KEY",
    "AnnDataManager",
    "AnnDataManagerValidationCheck",
    "AnnTorchDataset",
    "fields",
    "read_csv",
    "read_h5ad",
    "read_loom",
    "read_text",
    "synthetic_iid",
]


def __getattr__(name: str) -> Any:
    # AnnTorchDataset pulls in torch; load it on first use only.
    if name == "AnnTorchDataset":
        from ._anntorchdataset import AnnTorchDataset

        return AnnTorchDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
