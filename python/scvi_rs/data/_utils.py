"""Helpers shared by the manager and the fields: attribute access, checks, uuids."""

from __future__ import annotations

import logging
import warnings
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from .. import _core
from .._settings import settings
from . import _constants
from ._row_source import RowSource

if TYPE_CHECKING:
    import torch
    from anndata import AnnData

logger = logging.getLogger("scvi_rs")


def _is_mudata(obj: Any) -> bool:
    return hasattr(obj, "mod") and type(obj).__name__ == "MuData"


def registry_key_to_default_dtype(key: str) -> type:
    """``np.int64`` for batch, labels, categorical covariates and indices; else ``np.float32``."""
    from ._anntorchdataset import registry_key_to_default_dtype as default_dtype

    return default_dtype(key)


def scipy_to_torch_sparse(x: sp.csr_matrix | sp.csc_matrix) -> torch.Tensor:
    """Convert a SciPy CSR or CSC matrix to a torch sparse tensor of the same layout.

    Parameters
    ----------
    x
        A :class:`~scipy.sparse.csr_matrix` (becomes a ``torch.sparse_csr`` tensor) or a
        :class:`~scipy.sparse.csc_matrix` (becomes a ``torch.sparse_csc`` tensor); sparse
        arrays (``csr_array``, ``csc_array``) are accepted too.

    Returns
    -------
    torch.Tensor
        A sparse tensor with ``x``'s shape, values and dtype.

    Raises
    ------
    TypeError
        If ``x`` is not a CSR or CSC matrix (dense arrays included).
    """
    import torch

    layout = getattr(x, "format", None) if sp.issparse(x) else None
    if layout not in ("csr", "csc"):
        raise TypeError(
            "`x` must be of type `scipy.sparse.csr_matrix` or `scipy.sparse.csc_matrix`, "
            f"got {type(x).__name__}."
        )
    make = torch.sparse_csr_tensor if layout == "csr" else torch.sparse_csc_tensor
    return make(
        torch.as_tensor(x.indptr),
        torch.as_tensor(x.indices),
        torch.as_tensor(x.data),
        size=x.shape,
    )


def get_anndata_attribute(
    adata: AnnData, attr_name: str, attr_key: str | None, mod_key: str | None = None
) -> Any:
    """Return ``adata.<attr_name>[<attr_key>]``; an obs/var column comes back as ``(n, 1)``."""
    if mod_key is not None:
        if not _is_mudata(adata):
            raise ValueError(f"Cannot access modality {mod_key} on an AnnData object.")
        if mod_key not in adata.mod:
            raise ValueError(f"{mod_key} is not a valid modality in adata.mod.")
        adata = adata.mod[mod_key]
    adata_attr = getattr(adata, attr_name)
    if attr_key is None:
        field = adata_attr
    elif isinstance(adata_attr, pd.DataFrame):
        if attr_key not in adata_attr.columns:
            raise ValueError(f"{attr_key} is not a valid column in adata.{attr_name}.")
        field = adata_attr.loc[:, attr_key]
    else:
        if attr_key not in adata_attr.keys():
            raise ValueError(f"{attr_key} is not a valid key in adata.{attr_name}.")
        field = adata_attr[attr_key]
    if isinstance(field, pd.Series):
        field = field.to_numpy().reshape(-1, 1)
    return field


def _set_data_in_registry(
    adata: AnnData, data: Any, attr_name: str, attr_key: str | None, mod_key: str | None = None
) -> None:
    """Write ``data`` to ``adata.<attr_name>[<attr_key>]`` (or the attribute itself)."""
    if mod_key is not None:
        adata = adata.mod[mod_key]
    if attr_key is None:
        setattr(adata, attr_name, data)
        return
    attribute = getattr(adata, attr_name)
    if isinstance(attribute, pd.DataFrame):
        attribute.loc[:, attr_key] = data
    else:
        attribute[attr_key] = data


def _sample_rows(n: int, n_to_check: int) -> np.ndarray:
    # Same RNG use as the reference: numpy's global legacy generator, with replacement.
    return np.random.choice(n, size=(n_to_check,))  # noqa: NPY002


def _is_backed_matrix(data: Any) -> bool:
    """Whether ``data`` is read on demand: an h5py dataset, a backed sparse one, a RowSource."""
    if type(data).__module__.startswith("h5py") or isinstance(data, RowSource):
        return True
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # pragma: no cover - anndata < 0.10.8
        from anndata.experimental import CSCDataset, CSRDataset
    return isinstance(data, (CSRDataset, CSCDataset))


def _check_nonnegative_integers(data: Any, n_to_check: int = 20) -> bool:
    """Sample ``data`` and tell whether the sampled values are non-negative integers.

    On-disk (backed), on-demand (:class:`RowSource`) and dask matrices are checked on their
    first 100 rows only, which are the only ones read; in-memory data are sampled as they
    are.
    """
    if _is_backed_matrix(data):
        data = data[:100]
    elif type(data).__module__.startswith("dask"):
        data = data[:100, :100].compute()
    if isinstance(data, pd.DataFrame):
        data = data.to_numpy()
    if sp.issparse(data):
        data = data.data
    elif not isinstance(data, np.ndarray):
        raise TypeError(
            "data type not understood: expected a numpy array, a scipy sparse matrix, a "
            f"DataFrame, a backed (h5py) matrix or a dask array, got {type(data).__name__}"
        )
    if data.shape[0] == 0:
        return True
    check = data[_sample_rows(data.shape[0], n_to_check)]
    if check.size == 0:
        return True
    if check.dtype.kind in "biu":
        return not bool(np.any(check < 0))
    negative = bool(np.any(check < 0))
    non_integer = bool(np.any(check % 1 != 0))
    return not (negative or non_integer)


def _check_fragment_counts(data: Any, n_to_check: int = 100) -> bool:
    """Tell whether sampled values look like fragment counts (non-negative integers)."""
    return _check_nonnegative_integers(data, n_to_check=n_to_check)


def _verify_and_correct_data_format(
    adata: AnnData, attr_name: str, attr_key: str | None, mod_key: str | None = None
) -> None:
    """Make dense data C-contiguous in place; warn on sparse data that is not CSR."""
    data = get_anndata_attribute(adata, attr_name, attr_key, mod_key=mod_key)
    data_loc = f"adata.{attr_name}" + (f"['{attr_key}']" if attr_key is not None else "")
    if sp.issparse(data) and data.format != "csr":
        warnings.warn(
            f"Training will be faster when sparse matrix is formatted as CSR. It is safe to "
            f"cast before model initialization. ({data_loc} is {data.format.upper()})",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
    elif isinstance(data, np.ndarray) and not data.flags["C_CONTIGUOUS"]:
        logger.debug("%s is not C_CONTIGUOUS. Overwriting to C_CONTIGUOUS.", data_loc)
        _set_data_in_registry(adata, np.ascontiguousarray(data), attr_name, attr_key, mod_key)
    elif isinstance(data, pd.DataFrame) and not data.to_numpy().flags["C_CONTIGUOUS"]:
        logger.debug("%s is not C_CONTIGUOUS. Overwriting to C_CONTIGUOUS.", data_loc)
        fixed = pd.DataFrame(
            np.ascontiguousarray(data.to_numpy()), index=data.index, columns=data.columns
        )
        _set_data_in_registry(adata, fixed, attr_name, attr_key, mod_key)


def _assign_adata_uuid(adata: AnnData, overwrite: bool = False) -> None:
    """Give ``adata`` a fresh ``uns['_scvi_uuid']`` (if it has none, or ``overwrite``)."""
    if overwrite or _constants._SCVI_UUID_KEY not in adata.uns:
        adata.uns[_constants._SCVI_UUID_KEY] = _core.new_uuid()


def _check_if_view(adata: AnnData, copy_if_view: bool = False) -> bool:
    """Raise on a view, or (``copy_if_view``) turn it into an actual object in place."""
    if _is_mudata(adata):
        for mod in adata.mod.values():
            _check_if_view(mod, copy_if_view=copy_if_view)
        return False
    if adata.is_view:
        if copy_if_view:
            logger.info("Received view of anndata, making copy.")
            adata._init_as_actual(adata.copy())
            _assign_adata_uuid(adata, overwrite=True)
            return True
        raise ValueError("Please run `adata = adata.copy()`")
    return False


def _check_mudata_fully_paired(mdata: Any) -> None:
    """MuData only: every modality mask in ``mdata.obsm`` must be all True."""
    if not _is_mudata(mdata):
        return
    for mod_key in mdata.mod:
        if mod_key in mdata.obsm and not np.all(np.asarray(mdata.obsm[mod_key])):
            raise ValueError(
                f"Detected unpaired observations in modality {mod_key}. Please make sure that "
                "data is fully paired in all MuData inputs. Either pad the unpaired "
                "modalities or take the intersection with muon.pp.intersect_obs()."
            )


def _get_adata_minify_type(adata: AnnData) -> str | None:
    return adata.uns.get(_constants._ADATA_MINIFY_TYPE_UNS_KEY, None)


def _is_minified(adata: AnnData | str) -> bool:
    """Whether an AnnData (or an h5ad path) has been minified."""
    uns_key = _constants._ADATA_MINIFY_TYPE_UNS_KEY
    if isinstance(adata, str):
        import h5py

        with h5py.File(adata) as fp:
            return uns_key in fp["uns"].keys()
    return uns_key in adata.uns


def _modalities_by_setup_arg(modalities: dict[str, str] | None, setup_method_args: dict) -> Any:
    """Map every argument of a ``setup_mudata`` call to its modality (None when unnamed).

    Parameters
    ----------
    modalities
        ``{setup argument name: modality name}`` given by the user.
    setup_method_args
        What ``_get_setup_method_args`` recorded for the call.

    Returns
    -------
    attrdict
        One entry per setup argument.

    Raises
    ------
    ValueError
        If ``modalities`` is None or names an argument the setup method does not take.
    """
    from ..utils._attrdict import attrdict

    if modalities is None:
        raise ValueError(
            "Modalities cannot be None: pass `modalities`, e.g. {'rna_layer': 'rna'}, mapping "
            "setup arguments to the MuData modalities holding their data."
        )
    setup_args = setup_method_args[_constants._SETUP_ARGS_KEY]
    unknown = set(modalities) - set(setup_args)
    if unknown:
        raise ValueError(f"Extraneous modality mapping(s) detected: {unknown}")
    return attrdict({name: modalities.get(name, None) for name in setup_args})
