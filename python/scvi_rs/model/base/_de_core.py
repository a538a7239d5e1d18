"""The differential-expression driver: group selection, comparisons and the result table.

``_de_core`` turns the user's groups (an ``obs`` column and its categories, or two
selections of cells given as masks, indices or ``obs.query`` strings) into pairs of cell
masks, runs :meth:`DifferentialComputation.get_bayes_factors` on each pair and assembles
one table per comparison, as scvi-tools' ``scvi.model.base._de_core`` does. Unlike the
reference it never writes a temporary column into ``adata.obs`` (so views stay views).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from scipy import sparse as sp_sparse

from ..._constants import REGISTRY_KEYS
from ..._settings import settings
from ...utils import track
from ._differential import DifferentialComputation

if TYPE_CHECKING:
    from anndata import AnnData

_RAW_NORM_SCALING_KEY = "_scvi_raw_norm_scaling"
_MINIFY_TYPE_UNS_KEY = "_scvi_adata_minify_type"
_LATENT_POSTERIOR = "latent_posterior_parameters"
_GROUP1_LABEL = "one"
_GROUP2_LABEL = "two"
_UNSELECTED_LABEL = "None"
_OUTSIDE_SUBSET_LABEL = "other"


def _selection_rows(selection: Any, obs: pd.DataFrame) -> np.ndarray:
    """A boolean mask (from a query string or a mask) or integer indices over ``obs``."""
    if isinstance(selection, str):
        return obs.index.isin(obs.query(selection).index)
    selection = np.asarray(selection).ravel()
    if selection.dtype == bool and selection.shape[0] != obs.shape[0]:
        raise ValueError(
            f"Mask must be same length as adata: got {selection.shape[0]} entries for "
            f"{obs.shape[0]} cells."
        )
    if selection.size == 0:
        return selection.astype(np.int64)
    if selection.dtype != bool and not np.issubdtype(selection.dtype, np.integer):
        raise TypeError(
            "A cell selection must be a boolean mask, integer indices or an `obs.query` string, "
            f"got an array of {selection.dtype}."
        )
    return selection


def _prepare_obs(
    idx1: Sequence[int] | Sequence[bool] | np.ndarray | str,
    idx2: Sequence[int] | Sequence[bool] | np.ndarray | str | None,
    adata: AnnData,
) -> tuple[np.ndarray, list[str], str | None]:
    """Label the cells of two selections for a comparison.

    Parameters
    ----------
    idx1
        First group: a boolean mask over the cells, integer indices or an ``obs.query``
        string.
    idx2
        Second group, as ``idx1``; None compares ``idx1`` with every other cell. A cell in
        both selections belongs to the second group.
    adata
        The AnnData the selections index into.

    Returns
    -------
    tuple
        ``obs_col`` (one string label per cell: ``"one"``, ``"two"`` or ``"None"``), the list
        ``["one"]`` of first-group labels and the second group's label (``"two"``, or None
        when ``idx2`` is None).
    """
    obs = adata.obs
    rows1 = _selection_rows(idx1, obs)
    obs_col = np.full(adata.n_obs, _UNSELECTED_LABEL)
    obs_col[rows1] = _GROUP1_LABEL
    group2 = None
    rows2 = None
    if idx2 is not None:
        rows2 = _selection_rows(idx2, obs)
        obs_col[rows2] = _GROUP2_LABEL
        group2 = _GROUP2_LABEL
    if obs_col[rows1].shape[0] == 0 or (rows2 is not None and obs_col[rows2].shape[0] == 0):
        raise ValueError("One of idx1 or idx2 has size zero.")
    return obs_col, [_GROUP1_LABEL], group2


def _subset_group(
    subset_idx: Sequence[int] | Sequence[bool] | np.ndarray | str,
    groupby: str,
    adata: AnnData,
) -> pd.Series:
    """The ``groupby`` labels (as strings) with every cell outside ``subset_idx`` set to "other".

    Parameters
    ----------
    subset_idx
        Cells to keep: a boolean mask, integer indices or an ``obs.query`` string.
    groupby
        Column of ``adata.obs`` holding the groups.
    adata
        The AnnData.
    """
    labels = adata.obs[groupby].astype(str).to_numpy()
    restricted = _restrict_to_subset(labels, subset_idx, adata.obs)
    return pd.Series(restricted, index=adata.obs_names, name=groupby)


def _restrict_to_subset(labels: np.ndarray, subset_idx: Any, obs: pd.DataFrame) -> np.ndarray:
    """A copy of ``labels`` with every cell outside ``subset_idx`` labelled "other"."""
    outside = np.ones(obs.shape[0], dtype=bool)
    outside[_selection_rows(subset_idx, obs)] = False
    restricted = np.asarray(labels).astype(str).astype(object)
    restricted[outside] = _OUTSIDE_SUBSET_LABEL
    return restricted


def _fdr_de_prediction(posterior_probas: pd.Series, fdr: float = 0.05) -> pd.Series:
    """Tag the genes whose posterior expected FDR (taken in decreasing probability) <= ``fdr``."""
    if posterior_probas.ndim != 1:
        raise ValueError("posterior_probas should be 1-dimensional")
    ordered = posterior_probas.sort_values(ascending=False)
    expected_fdr = (1.0 - ordered).cumsum() / (1.0 + np.arange(len(ordered)))
    n_de = int((expected_fdr <= fdr).sum())
    is_de = pd.Series(np.zeros(len(ordered), dtype=bool), index=ordered.index)
    is_de.iloc[:n_de] = True
    return is_de.loc[posterior_probas.index]


def scrna_raw_counts_properties(
    adata_manager: Any,
    idx1: Sequence[int] | Sequence[bool],
    idx2: Sequence[int] | Sequence[bool],
    var_idx: Sequence[int] | None = None,
) -> dict[str, np.ndarray]:
    """Per-gene raw count statistics of two groups of cells.

    ``raw_mean*`` (mean counts), ``non_zeros_proportion*`` and ``raw_normalized_mean*``
    (mean of counts scaled to 1e4 per cell; the scaling is cached in
    ``adata.obs["_scvi_raw_norm_scaling"]``, as the reference does).
    """
    adata = adata_manager.adata
    data = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    data1 = data[idx1]
    data2 = data[idx2]
    if var_idx is not None:
        data1 = data1[:, var_idx]
        data2 = data2[:, var_idx]

    if _RAW_NORM_SCALING_KEY not in adata.obs.columns:
        with np.errstate(divide="ignore"):
            scaling = 1e4 / np.asarray(data.sum(axis=1), dtype=np.float64).reshape(-1, 1)
        adata.obs[_RAW_NORM_SCALING_KEY] = scaling.reshape(-1)
    else:
        scaling = adata.obs[_RAW_NORM_SCALING_KEY].to_numpy().reshape(-1, 1)

    def _mean(x: Any) -> np.ndarray:
        return np.asarray(x.mean(axis=0)).reshape(-1)

    if sp_sparse.issparse(data):
        norm1 = data1.multiply(scaling[idx1])
        norm2 = data2.multiply(scaling[idx2])
    else:
        norm1 = data1 * scaling[idx1]
        norm2 = data2 * scaling[idx2]
    return {
        "raw_mean1": _mean(data1),
        "raw_mean2": _mean(data2),
        "non_zeros_proportion1": _mean(data1 != 0),
        "non_zeros_proportion2": _mean(data2 != 0),
        "raw_normalized_mean1": _mean(norm1),
        "raw_normalized_mean2": _mean(norm2),
    }


def _comparisons(
    adata: AnnData,
    groupby: str | None,
    group1: Iterable[Any] | Any,
    group2: Any,
    idx1: Any,
    idx2: Any,
    subset_idx: Any,
) -> tuple[list[tuple[Any, np.ndarray, np.ndarray]], Any]:
    """The ``(group label, mask1, mask2)`` of every comparison, and the second group's label."""
    if idx1 is None:
        if groupby is None:
            raise ValueError("Either `groupby` or `idx1` must be given.")
        if groupby not in adata.obs.columns:
            raise KeyError(f"`groupby` key {groupby!r} not found in adata.obs.")
        if group1 is None:
            group1 = adata.obs[groupby].astype("category").cat.categories.tolist()
            if len(group1) == 1:
                raise ValueError(
                    "Only a single group in the data. Can't run DE on a single group."
                )
        labels = adata.obs[groupby].astype(str).to_numpy()
    else:
        labels, group1, group2 = _prepare_obs(idx1, idx2, adata)
    if subset_idx is not None:
        labels = _restrict_to_subset(labels, subset_idx, adata.obs)
    if isinstance(group1, str) or not isinstance(group1, Iterable):
        group1 = [group1]

    comparisons = []
    for g1 in group1:
        mask1 = labels == str(g1)
        mask2 = ~mask1 if group2 is None else labels == str(group2)
        if not mask1.any() or not mask2.any():
            if idx1 is not None:
                raise ValueError("One of idx1 or idx2 has size zero.")
            empty = g1 if not mask1.any() else ("Rest" if group2 is None else group2)
            raise ValueError(f"Group {empty!r} has no cells in adata.obs[{groupby!r}].")
        comparisons.append((g1, mask1, mask2))
    return comparisons, group2


def _de_core(
    adata_manager: Any,
    model_fn: Callable,
    representation_fn: Callable | None,
    groupby: str | None,
    group1: Iterable[Any] | Any,
    group2: Any,
    idx1: Any,
    idx2: Any,
    all_stats: bool,
    all_stats_fn: Callable,
    col_names: pd.Index,
    mode: str,
    batchid1: Sequence[Any] | None,
    batchid2: Sequence[Any] | None,
    delta: float | None,
    batch_correction: bool,
    fdr: float,
    silent: bool,
    subset_idx: Any = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """Run the group comparisons and assemble the result table.

    Parameters
    ----------
    adata_manager
        Manager of the AnnData the groups index into.
    model_fn, representation_fn
        As :class:`DifferentialComputation`.
    groupby, group1, group2
        ``obs`` column of the groups, the first groups (each compared in turn; all
        categories by default) and the second group (every other cell by default).
    idx1, idx2
        Selections of cells (masks, indices or ``obs.query`` strings) used instead of
        ``groupby``.
    all_stats, all_stats_fn
        Add ``all_stats_fn(adata_manager, mask1, mask2)``'s per-gene statistics.
    col_names
        Index of the result rows (the gene names).
    mode, delta, batchid1, batchid2
        As :meth:`DifferentialComputation.get_bayes_factors`.
    batch_correction
        Decode in every batch (otherwise each cell in its observed batch).
    fdr
        Target FDR of the ``is_de_fdr_<fdr>`` column (``"change"`` mode).
    silent
        Hide the progress bar.
    subset_idx
        Only these cells take part; every other cell is labelled ``"other"``.
    **kwargs
        Passed to :meth:`DifferentialComputation.get_bayes_factors`.

    Returns
    -------
    pandas.DataFrame
        One row per gene and comparison, sorted within each comparison.
    """
    if mode not in ("vanilla", "change"):
        raise ValueError(f"`mode` must be 'vanilla' or 'change', got {mode!r}.")
    adata = adata_manager.adata
    if adata.uns.get(_MINIFY_TYPE_UNS_KEY) == _LATENT_POSTERIOR:
        warnings.warn(
            "Count statistics make no sense for minified model. Consider disabling all_stats.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
    comparisons, group2 = _comparisons(adata, groupby, group1, group2, idx1, idx2, subset_idx)

    dc = DifferentialComputation(model_fn, representation_fn, adata_manager)
    sort_key = "proba_de" if mode == "change" else "bayes_factor"
    results = []
    for g1, mask1, mask2 in track(comparisons, description="DE...", disable=silent):
        info = dc.get_bayes_factors(
            mask1,
            mask2,
            mode=mode,
            delta=delta,
            batchid1=batchid1,
            batchid2=batchid2,
            use_observed_batches=not batch_correction,
            **kwargs,
        )
        if all_stats:
            info = {**info, **all_stats_fn(adata_manager, mask1, mask2)}
        table = pd.DataFrame(info, index=col_names).sort_values(by=sort_key, ascending=False)
        if mode == "change":
            table[f"is_de_fdr_{fdr}"] = _fdr_de_prediction(table["proba_de"], fdr=fdr)
        if idx1 is None:
            g2 = "Rest" if group2 is None else group2
            table["comparison"] = f"{g1} vs {g2}"
            table["group1"] = g1
            table["group2"] = g2
        results.append(table)
    return pd.concat(results, axis=0)


__all__ = ["_de_core", "_fdr_de_prediction", "_prepare_obs", "scrna_raw_counts_properties"]
