"""Bayesian differential expression between two groups of cells: ``DifferentialComputation``.

Two decision rules are offered, as in the reference:

- ``"vanilla"``: the posterior probability that the normalised expression of a gene is
  larger in group 1 than in group 2 (``proba_m1``) and its log Bayes factor.
- ``"change"``: a log2 fold change between paired posterior samples; a gene is called
  differentially expressed when its effect lies outside ``[-delta, delta]``
  (``proba_de``).

Posterior samples come from ``model_fn`` (``get_normalized_expression`` with
``n_samples_overall``); the numpy global RNG and torch's RNG are used, so
``scvi_rs.settings.seed`` makes the results reproducible. The per-group driver that builds
the result table is :func:`scvi_rs.model.base._de_core._de_core`.
"""

from __future__ import annotations

import inspect
import logging
import warnings
from collections.abc import Callable, Sequence
from typing import Any, Literal

import numpy as np
import pandas as pd
from scipy import sparse as sp_sparse

from ..._constants import REGISTRY_KEYS
from ..._settings import settings

logger = logging.getLogger("scvi_rs")

_EPS = 1e-8


class DifferentialComputation:
    """Bayes factors between two groups of cells from posterior samples of a model.

    Parameters
    ----------
    model_fn
        ``model_fn(adata, indices=..., transform_batch=..., n_samples_overall=...)`` returning
        an array ``(n_samples_overall, n_genes)`` of posterior samples of expression.
    representation_fn
        ``representation_fn(adata, indices=...)`` returning a latent representation, used
        to drop outlier cells; None keeps every cell.
    adata_manager
        Manager of the AnnData the groups index into.
    """

    def __init__(
        self,
        model_fn: Callable,
        representation_fn: Callable | None,
        adata_manager: Any,
    ) -> None:
        self.adata_manager = adata_manager
        self.adata = adata_manager.adata
        self.model_fn = model_fn
        self.representation_fn = representation_fn

    def process_selection(
        self, selection: Sequence[int] | Sequence[bool] | np.ndarray
    ) -> np.ndarray:
        """Turn a boolean mask over the cells into indices (indices pass through)."""
        selection = np.asarray(selection)
        if selection.dtype == bool:
            if len(selection) < self.adata.n_obs:
                raise ValueError("Mask must be same length as adata.")
            selection = np.flatnonzero(selection)
        return selection

    def filter_outlier_cells(self, selection: Sequence[int] | Sequence[bool]) -> np.ndarray:
        """Drop the 10% of the selected cells farthest from the bulk of the latent space.

        Distances are Mahalanobis distances under a robust location/covariance estimate
        (concentration steps on the half of the cells closest to the centre, as in a
        minimum covariance determinant fit). Returns the kept cells' indices.
        """
        selection = self.process_selection(selection)
        reps = np.asarray(self.representation_fn(self.adata, indices=selection), dtype=np.float64)
        keep = _robust_inliers(reps, contamination=0.1)
        if keep is None:
            warnings.warn(
                "Could not properly estimate Cov!, using all samples",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            return selection
        return selection[keep]

    def scale_sampler(
        self,
        selection: Sequence[int] | Sequence[bool],
        n_samples_overall: int | None = 5000,
        n_samples_per_cell: int | None = None,
        batchid: Sequence[Any] | None = None,
        use_observed_batches: bool | None = False,
        give_mean: bool | None = False,
    ) -> dict[str, np.ndarray]:
        """Posterior samples of normalised expression of the selected cells.

        Parameters
        ----------
        selection
            Boolean mask or indices of the cells.
        n_samples_overall
            Total number of samples (split evenly over ``batchid``).
        n_samples_per_cell
            Samples per cell, used when ``n_samples_overall`` is None.
        batchid
            Batch categories to condition on; by default every batch of the registry
            (unless ``use_observed_batches``).
        use_observed_batches
            Condition each cell on its own batch.
        give_mean
            Average the samples.

        Returns
        -------
        dict
            ``"scale"``: ``(n_samples, n_genes)`` samples; ``"batch"``: the batch each
            sample was conditioned on (NaN for observed batches).
        """
        if use_observed_batches:
            if batchid is not None:
                raise ValueError("Inconsistent batch policy")
            batchid = [None]
        elif batchid is None:
            mapping = self.adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY)
            batchid = list(mapping.categorical_mapping)
        if n_samples_overall is not None and n_samples_per_cell is not None:
            warnings.warn(
                "`n_samples_overall` and `n_samples_per_cell` were provided. Ignoring "
                "`n_samples_per_cell`",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
        selection = self.process_selection(selection)
        if n_samples_overall is not None:
            n_samples = n_samples_overall
        elif n_samples_per_cell is not None:
            n_samples = n_samples_per_cell * len(selection)
        else:
            n_samples = 5000
        n_samples = int(n_samples / len(batchid))
        if n_samples == 0:
            warnings.warn(
                "very small sample size, please consider increasing `n_samples`",
                UserWarning,
                stacklevel=settings.warnings_stacklevel,
            )
            n_samples = 2
        scales, batch_ids = [], []
        for batch in batchid:
            samples = np.asarray(
                self.model_fn(
                    self.adata,
                    indices=selection,
                    transform_batch=batch,
                    n_samples_overall=n_samples,
                )
            )
            scales.append(samples)
            batch_ids.append(np.full(samples.shape[0], np.nan if batch is None else batch))
        scale = np.concatenate(scales)
        batch_arr = np.concatenate(batch_ids).reshape(-1)
        if give_mean:
            scale = scale.mean(0)
        return {"scale": scale, "batch": batch_arr}

    def get_bayes_factors(
        self,
        idx1: Sequence[int] | Sequence[bool],
        idx2: Sequence[int] | Sequence[bool],
        mode: Literal["vanilla", "change"] = "change",
        batchid1: Sequence[Any] | None = None,
        batchid2: Sequence[Any] | None = None,
        use_observed_batches: bool | None = False,
        n_samples_overall: int = 5000,
        use_permutation: bool = False,
        m_permutation: int = 10000,
        change_fn: str | Callable | None = None,
        m1_domain_fn: Callable | None = None,
        delta: float | None = 0.5,
        pseudocounts: float | None = None,
        threshold_counts: float = 0.01,
        test_mode: Literal["two", "three"] = "three",
        cred_interval_lvls: Sequence[float] | None = None,
    ) -> dict[str, np.ndarray]:
        """Compare the two groups gene by gene.

        Parameters
        ----------
        idx1, idx2
            Boolean masks (or indices) of the two groups.
        mode
            ``"vanilla"`` or ``"change"``.
        batchid1, batchid2
            Batches to condition each group on (default: all batches).
        use_observed_batches
            Condition cells on their own batch (no batch correction).
        n_samples_overall
            Posterior samples drawn per group.
        use_permutation
            Resample ``m_permutation`` random pairs instead of pairing samples in order.
        m_permutation
            Number of pairs with ``use_permutation``.
        change_fn
            Effect size ``f(scales1, scales2, pseudocounts)``; ``None``/``"log-fold"`` is the
            log2 fold change.
        m1_domain_fn
            ``f(effects) -> (is_up, is_down)`` boolean arrays; default ``effect >= delta``
            and ``effect < -delta``.
        delta
            Effect threshold; None estimates it from the effect means.
        pseudocounts
            Added to the scales before the fold change; None estimates it from genes with
            (almost) no counts.
        threshold_counts
            Mean count below which a gene counts as not expressed (pseudocount estimate).
        test_mode
            ``"three"``: ``max(P(up), P(down))``; ``"two"``: ``P(up) + P(down)``.
        cred_interval_lvls
            Levels of highest-density intervals of the effect to report.

        Returns
        -------
        dict
            Column name to per-gene array (or scalar).
        """
        if mode not in ("vanilla", "change"):
            raise NotImplementedError(f"Mode {mode} not recognized")
        if self.representation_fn is not None:
            idx1 = self.filter_outlier_cells(idx1)
            idx2 = self.filter_outlier_cells(idx2)
        sampled1 = self.scale_sampler(
            idx1,
            batchid=batchid1,
            use_observed_batches=use_observed_batches,
            n_samples_overall=n_samples_overall,
        )
        sampled2 = self.scale_sampler(
            idx2,
            batchid=batchid2,
            use_observed_batches=use_observed_batches,
            n_samples_overall=n_samples_overall,
        )
        mean_scale1 = sampled1["scale"].mean(axis=0)
        mean_scale2 = sampled2["scale"].mean(axis=0)
        scales1, scales2 = _paired_samples(
            sampled1, sampled2, use_observed_batches, use_permutation, m_permutation
        )

        if mode == "vanilla":
            proba_m1 = np.mean(scales1 > scales2, 0)
            proba_m2 = 1.0 - proba_m1
            return {
                "proba_m1": proba_m1,
                "proba_m2": proba_m2,
                "bayes_factor": np.log(proba_m1 + _EPS) - np.log(proba_m2 + _EPS),
                "scale1": mean_scale1,
                "scale2": mean_scale2,
            }

        if pseudocounts is None:
            data = self.adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
            unexpressed1 = _column_means(data, self.process_selection(idx1)) < threshold_counts
            unexpressed2 = _column_means(data, self.process_selection(idx2)) < threshold_counts
            pseudocounts = estimate_pseudocounts_offset(
                scales1, scales2, unexpressed1, unexpressed2, quantile=0.9
            )
        logger.debug("Using pseudocounts ~ %s", pseudocounts)

        if change_fn is None or change_fn == "log-fold":
            change_fn = _log2_fold_change
        elif not callable(change_fn):
            raise ValueError("'change_fn' attribute not understood")

        if m1_domain_fn is None:

            def m1_domain_fn(effects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
                threshold = delta if delta is not None else estimate_delta(effects.mean(0))
                return effects >= threshold, effects < -threshold

        if (
            len(inspect.getfullargspec(change_fn).args) != 3
            or len(inspect.getfullargspec(m1_domain_fn).args) != 1
        ):
            raise ValueError(
                "change_fn should take exactly three parameters as inputs; "
                "m1_domain_fn one parameter."
            )
        try:
            effects = change_fn(scales1, scales2, pseudocounts)
            is_up, is_down = m1_domain_fn(effects)
            used_delta = estimate_delta(effects.mean(0)) if delta is None else delta
        except TypeError as err:
            raise TypeError(
                "change_fn or m1_domain_fn have has wrong properties. Please ensure that these "
                "functions have the right signatures and outputs and that they can process "
                "numpy arrays"
            ) from err
        proba_up = np.mean(is_up, 0)
        proba_down = np.mean(is_down, 0)
        if test_mode == "two":
            proba_de = proba_up + proba_down
        else:
            proba_de = np.maximum(proba_up, proba_down)
        # The reported fold change uses a much smaller pseudocount than the decision rule.
        lfc = describe_continuous_distrib(
            change_fn(scales1, scales2, 1e-3 * pseudocounts),
            credible_intervals_levels=cred_interval_lvls,
        )
        return {
            "proba_de": proba_de,
            "proba_not_de": 1.0 - proba_de,
            "bayes_factor": np.log(proba_de + _EPS) - np.log(1.0 - proba_de + _EPS),
            "scale1": mean_scale1,
            "scale2": mean_scale2,
            "pseudocounts": pseudocounts,
            "delta": used_delta,
            **{f"lfc_{key}": value for key, value in lfc.items()},
        }


def _log2_fold_change(x: np.ndarray, y: np.ndarray, pseudocounts: float) -> np.ndarray:
    return np.log2(x + pseudocounts) - np.log2(y + pseudocounts)


def _column_means(data: Any, rows: np.ndarray) -> np.ndarray:
    return np.asarray(data[rows].mean(axis=0)).reshape(-1)


def _paired_samples(
    sampled1: dict[str, np.ndarray],
    sampled2: dict[str, np.ndarray],
    use_observed_batches: bool | None,
    use_permutation: bool,
    m_permutation: int | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pair the samples of both groups, within each batch when both used the same batches."""
    batches1 = _unique_batches(sampled1["batch"])
    batches2 = _unique_batches(sampled2["batch"])
    if batches1 == batches2 and not use_observed_batches:
        n_per_batch = m_permutation // len(batches1) if m_permutation is not None else None
        firsts, seconds = [], []
        for batch in batches1:
            first, second = pairs_sampler(
                sampled1["scale"][sampled1["batch"] == batch],
                sampled2["scale"][sampled2["batch"] == batch],
                use_permutation=use_permutation,
                m_permutation=n_per_batch,
            )
            firsts.append(first)
            seconds.append(second)
        return np.concatenate(firsts, axis=0), np.concatenate(seconds, axis=0)
    if not use_observed_batches and batches1 & batches2:
        warnings.warn(
            "Batchids of cells groups 1 and 2 are different but have an non-null intersection. "
            "Specific handling of such situations is not implemented yet and batch correction "
            "is not trustworthy.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
    return pairs_sampler(
        sampled1["scale"],
        sampled2["scale"],
        use_permutation=use_permutation,
        m_permutation=m_permutation,
    )


def _unique_batches(batch: np.ndarray) -> set:
    values = pd.unique(np.asarray(batch, dtype=object))
    return {v for v in values if not (isinstance(v, float) and np.isnan(v))}


def _choice(n: int, size: int | None, p: np.ndarray | None = None) -> np.ndarray:
    """``size`` draws from ``range(n)`` with replacement, from numpy's global RNG.

    The global RNG (as in the reference) is what ``scvi_rs.settings.seed`` seeds.
    """
    return np.random.choice(n, size=size, p=p, replace=True)  # noqa: NPY002


def pairs_sampler(
    arr1: np.ndarray,
    arr2: np.ndarray,
    use_permutation: bool = True,
    m_permutation: int | None = None,
    sanity_check_perm: bool = False,
    weights1: np.ndarray | None = None,
    weights2: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of samples of two populations.

    Without ``use_permutation`` the arrays are paired row by row as given. With it,
    ``m_permutation`` rows are drawn (with replacement, optionally weighted) from each
    array, or from their union when ``sanity_check_perm``.
    """
    if not use_permutation:
        return arr1, arr2
    n1, n2 = arr1.shape[0], arr2.shape[0]
    if sanity_check_perm:
        pooled = np.concatenate((arr1, arr2))
        first = _choice(n1 + n2, m_permutation)
        second = _choice(n1 + n2, m_permutation)
        return pooled[first], pooled[second]
    first = _choice(n1, m_permutation, weights1)
    second = _choice(n2, m_permutation, weights2)
    return arr1[first], arr2[second]


def estimate_pseudocounts_offset(
    scales_a: np.ndarray,
    scales_b: np.ndarray,
    where_zero_a: np.ndarray,
    where_zero_b: np.ndarray,
    quantile: float | None = 0.9,
) -> float:
    """Pseudocount that shrinks the fold changes of unexpressed genes towards zero.

    For each group, the ``quantile`` of the largest sampled scale among the genes without
    counts in that group; the larger of the two, divided by the number of genes (at least
    ``1e-10``).
    """
    max_a = np.max(scales_a, 0)
    max_b = np.max(scales_b, 0)
    if not (max_a.shape == where_zero_a.shape == where_zero_b.shape == max_b.shape):
        raise ValueError(
            "Dimension mismatch between scales and/or masks to compute the pseudocounts offset."
        )
    eps_a = np.quantile(max_a[where_zero_a], q=quantile) if where_zero_a.sum() >= 1 else 1e-10
    eps_b = np.quantile(max_b[where_zero_b], q=quantile) if where_zero_b.sum() >= 1 else 1e-10
    return float(np.maximum(1e-10, np.maximum(eps_a, eps_b) / len(max_a)))


def estimate_delta(lfc_means: np.ndarray, coef: float = 0.6, min_thres: float = 0.1) -> float:
    """Effect threshold from the per-gene effect means.

    Fits a three-component Gaussian mixture to the means (EM, seeded by quantiles) and
    returns ``coef`` times the mean absolute value of the outer components' means, at least
    ``min_thres``.
    """
    lfc_means = np.asarray(lfc_means, dtype=np.float64)
    if lfc_means.ndim >= 2:
        raise ValueError("lfc_means should be 1-dimensional of shape: (n_genes,).")
    means = np.sort(_gmm_1d_means(lfc_means, n_components=3))
    return float(np.maximum(min_thres, coef * np.abs(means[[0, -1]]).mean()))


def _gmm_1d_means(x: np.ndarray, n_components: int, n_iter: int = 200) -> np.ndarray:
    """Component means of a 1-D Gaussian mixture fitted by EM."""
    x = x[np.isfinite(x)]
    if x.size == 0:
        return np.zeros(n_components)
    means = np.quantile(x, np.linspace(0.1, 0.9, n_components))
    variances = np.full(n_components, max(x.var(), 1e-6))
    weights = np.full(n_components, 1.0 / n_components)
    previous = -np.inf
    for _ in range(n_iter):
        log_p = (
            np.log(weights)
            - 0.5 * np.log(2 * np.pi * variances)
            - 0.5 * (x[:, None] - means) ** 2 / variances
        )
        norm = np.logaddexp.reduce(log_p, axis=1)
        resp = np.exp(log_p - norm[:, None])
        counts = resp.sum(0) + 1e-10
        weights = counts / counts.sum()
        means = (resp * x[:, None]).sum(0) / counts
        variances = (resp * (x[:, None] - means) ** 2).sum(0) / counts + 1e-6
        total = norm.sum()
        if abs(total - previous) < 1e-8 * max(1.0, abs(total)):
            break
        previous = total
    return means


def credible_intervals(
    ary: np.ndarray, confidence_level: float | Sequence[float] | np.ndarray = 0.94
) -> np.ndarray:
    """Highest-density interval(s) of samples (per column for 2-D input).

    Returns ``[min, max]`` for 1-D samples, else an array ``(n_columns, 2)``.
    """
    ary = np.asarray(ary)
    if ary.ndim > 1:
        return np.array([credible_intervals(col, confidence_level) for col in ary.T])
    ordered = np.sort(ary)
    n = len(ordered)
    span = int(np.floor(confidence_level * n))
    widths = ordered[span:] - ordered[: n - span]
    if len(widths) == 0:
        raise ValueError(
            "Too few elements for interval calculation. "
            "Check that credible_interval meets condition 0 =< credible_interval < 1"
        )
    start = int(np.argmin(widths))
    return np.array([ordered[start], ordered[start + span]])


def describe_continuous_distrib(
    samples: np.ndarray, credible_intervals_levels: Sequence[float] | None = None
) -> dict[str, np.ndarray]:
    """Mean, median, std, min and max per column (and requested credible intervals)."""
    samples = np.asarray(samples)
    props = {
        "mean": samples.mean(0),
        "median": np.median(samples, 0),
        "std": samples.std(0),
        "min": samples.min(0),
        "max": samples.max(0),
    }
    for level in credible_intervals_levels or []:
        bounds = credible_intervals(samples, confidence_level=level)
        name = str(level)[:5]
        props[f"confidence_interval_{name}_min"] = bounds[:, 0]
        props[f"confidence_interval_{name}_max"] = bounds[:, 1]
    return props


def _robust_inliers(reps: np.ndarray, contamination: float = 0.1) -> np.ndarray | None:
    """Boolean mask of the cells kept by a robust Mahalanobis-distance cut (None on failure)."""
    n, p = reps.shape
    if n <= p + 1:
        return None
    h = (n + p + 1) // 2
    subset = np.arange(n)
    try:
        for _ in range(30):
            center = reps[subset].mean(0)
            cov = np.cov(reps[subset], rowvar=False).reshape(p, p)
            precision = np.linalg.inv(cov)
            diff = reps - center
            dist = np.einsum("ij,jk,ik->i", diff, precision, diff)
            new_subset = np.sort(np.argsort(dist, kind="stable")[:h])
            if np.array_equal(new_subset, subset):
                break
            subset = new_subset
    except np.linalg.LinAlgError:
        return None
    if not np.all(np.isfinite(dist)):
        return None
    threshold = np.percentile(dist, 100 * (1 - contamination))
    return dist <= threshold


def save_cluster_xlsx(
    filepath: str, de_results: Sequence[pd.DataFrame], cluster_names: Sequence[Any]
) -> None:
    """Write one DE table per cluster, each to its own sheet of an ``.xlsx`` workbook.

    Parameters
    ----------
    filepath
        Path of the workbook to write.
    de_results
        DE tables, one per cluster.
    cluster_names
        Sheet names, aligned with ``de_results``.
    """
    if len(de_results) != len(cluster_names):
        raise ValueError("`de_results` and `cluster_names` must have the same length.")
    with pd.ExcelWriter(filepath, engine="xlsxwriter") as writer:
        for table, name in zip(de_results, cluster_names, strict=True):
            table.to_excel(writer, sheet_name=str(name))


def densify(arr: Any) -> Any:
    """A dense, squeezed numpy array from a SciPy sparse matrix; anything else unchanged."""
    if sp_sparse.issparse(arr):
        return np.asarray(arr.todense()).squeeze()
    return arr


__all__ = [
    "DifferentialComputation",
    "credible_intervals",
    "densify",
    "describe_continuous_distrib",
    "estimate_delta",
    "estimate_pseudocounts_offset",
    "pairs_sampler",
    "save_cluster_xlsx",
]
