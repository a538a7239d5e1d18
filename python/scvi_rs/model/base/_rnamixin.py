"""``RNASeqMixin``: expression queries of count models (normalised expression, DE, samples)."""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd
import torch
from scipy import sparse as sp_sparse

from ..._constants import REGISTRY_KEYS
from ..._settings import settings
from ...utils import track, unsupported_if_adata_minified
from ._de_core import _de_core, scrna_raw_counts_properties
from ._differential import _choice

if TYPE_CHECKING:
    from anndata import AnnData


def _batch_codes(adata_manager: Any, categories: Any) -> list[int | None]:
    """Codes of batch categories (``None`` stays ``None``: the observed batch).

    Categories are looked up by label in the registered mapping, as in the reference
    (an integer is only valid when the mapping holds that integer).
    """
    if isinstance(categories, str) or not isinstance(categories, Iterable):
        categories = [categories]
    mapping = list(adata_manager.get_state_registry(REGISTRY_KEYS.BATCH_KEY).categorical_mapping)
    codes: list[int | None] = []
    for category in categories:
        if category is None:
            codes.append(None)
            continue
        matches = [i for i, known in enumerate(mapping) if _same_category(known, category)]
        if not matches:
            raise ValueError(f'"{category}" not a valid batch category.')
        codes.append(matches[0])
    return codes


def _same_category(known: Any, category: Any) -> bool:
    if isinstance(known, str) != isinstance(category, str):
        return False
    try:
        return bool(known == category)
    except (TypeError, ValueError):
        return False


def _gene_mask(adata: AnnData, gene_list: Sequence[str] | None) -> slice | np.ndarray:
    if gene_list is None:
        return slice(None)
    if isinstance(gene_list, str):
        gene_list = [gene_list]
    mask = np.asarray(adata.var_names.isin(list(gene_list)))
    if not mask.any():
        raise ValueError("None of the provided genes in ``gene_list`` were detected in the data.")
    return mask


def _as_indices(adata: AnnData, indices: Sequence[int] | Sequence[bool] | None) -> np.ndarray:
    if indices is None:
        return np.arange(adata.n_obs)
    indices = np.asarray(indices)
    if indices.dtype == bool:
        if indices.shape[0] != adata.n_obs:
            raise ValueError("A boolean `indices` mask must have one entry per cell.")
        return np.flatnonzero(indices)
    return indices.astype(np.int64).reshape(-1)


# Values of log p(x_a | z) computed at once (anchors x samples x cells x genes).
_ANCHOR_CHUNK_ELEMENTS = 1 << 24


def _distribution_params(dist: torch.distributions.Distribution) -> dict[str, torch.Tensor]:
    """The tensors ``dist`` was built from, by constructor argument name.

    Only attributes stored under their constructor argument's name are recovered; a
    distribution that renames a required argument cannot be rebuilt (NotImplementedError).
    """
    params = {}
    for name, parameter in inspect.signature(type(dist).__init__).parameters.items():
        if name in ("self", "validate_args") or parameter.kind in (
            parameter.VAR_POSITIONAL,
            parameter.VAR_KEYWORD,
        ):
            continue
        value = dist.__dict__.get(name)
        if isinstance(value, torch.Tensor):
            params[name] = value
        elif parameter.default is inspect.Parameter.empty:
            raise NotImplementedError(
                f"Importance weighting cannot handle {type(dist).__name__}: its parameter "
                f"{name!r} is not stored under that name."
            )
    return params


def _rebuild(
    dist: torch.distributions.Distribution, params: dict[str, torch.Tensor]
) -> torch.distributions.Distribution:
    return type(dist)(**params, validate_args=False)


def _distribution_to(
    dist: torch.distributions.Distribution, device: torch.device | str
) -> torch.distributions.Distribution:
    """``dist`` with its parameters on ``device``."""
    return _rebuild(dist, {k: v.to(device) for k, v in _distribution_params(dist).items()})


def _concat_distributions(
    dists: Sequence[torch.distributions.Distribution], axis: int
) -> torch.distributions.Distribution:
    """One distribution of the type of ``dists[0]`` with the parameters joined along ``axis``."""
    per_part = []
    for dist in dists:
        params = _distribution_params(dist)
        # Parameters may be stored unbroadcast (e.g. a per-gene dispersion).
        per_part.append(dict(zip(params, torch.broadcast_tensors(*params.values()), strict=True)))
    joined = {name: torch.cat([p[name] for p in per_part], dim=axis) for name in per_part[0]}
    return _rebuild(dists[0], joined)


def _subset_distribution(
    dist: torch.distributions.Distribution, rows: np.ndarray, axis: int
) -> torch.distributions.Distribution:
    """``dist`` restricted to ``rows`` along ``axis`` of its parameters."""
    params = _distribution_params(dist)
    index = torch.as_tensor(rows, dtype=torch.long)
    subset = {}
    for name, value in zip(params, torch.broadcast_tensors(*params.values()), strict=True):
        subset[name] = value.index_select(axis, index.to(value.device))
    return _rebuild(dist, subset)


def _with_library(
    px: torch.distributions.Distribution, library: torch.Tensor
) -> torch.distributions.Distribution:
    """The count distribution ``px`` with its mean set to ``scale * library``."""
    params = _distribution_params(px)
    mean_name = "mu" if "mu" in params else "rate" if "rate" in params else None
    if mean_name is None or params.get("scale") is None:
        raise NotImplementedError(
            "Importance weights need a count likelihood with a normalised mean `scale` and a "
            f"mean `mu` or `rate`; {type(px).__name__} has neither."
        )
    params[mean_name] = params["scale"] * library
    return _rebuild(px, params)


def _denoising_parameters(generative_outputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised mean and inverse dispersion of the decoded negative binomial.

    Read from ``"px"``, or from the ``"px_scale"``/``"px_r"`` outputs of modules written for
    scvi-tools versions before distributions were returned.
    """
    if "px" in generative_outputs:
        px = generative_outputs["px"]
        if not hasattr(px, "theta"):
            raise ValueError(
                "Denoised samples need a negative-binomial likelihood ('nb' or 'zinb')."
            )
        return px.scale, px.theta
    if "px_scale" in generative_outputs and "px_r" in generative_outputs:
        return generative_outputs["px_scale"], generative_outputs["px_r"]
    raise KeyError(
        "The module's generative outputs hold neither 'px' nor 'px_scale' and 'px_r'; got "
        f"{sorted(generative_outputs)}."
    )


class RNASeqMixin:
    """Queries of models with a count likelihood over genes (mixed into ``SCVI``).

    Notes
    -----
    Departures from the reference (scvi-tools 1.4.2):

    - ``posterior_predictive_sample`` returns a SciPy CSR matrix (one sample) or a dense
      ``(n_obs, n_vars, n_samples)`` array instead of a ``sparse.GCXS`` array.
    - ``get_importance_weights`` loads the anchor cells' counts in minibatches of the
      loader's default size (the reference loads them one cell at a time); results agree.
    - ``get_normalized_expression(n_samples_overall=...)`` returns a numpy array by default
      (the reference fails unless ``return_numpy=True``); a ``gene_list`` matching no gene
      is a ``ValueError`` as in ``posterior_predictive_sample``.
    - ``get_likelihood_parameters`` works for ``"poisson"`` (only ``"mean"``) and
      ``"normal"`` (``"dispersions"`` is the standard deviation).
    - ``differential_expression(filter_outlier_cells=True)`` uses a numpy robust
      Mahalanobis cut (no scikit-learn); ``delta=None`` fits a numpy Gaussian mixture.
    """

    # -- helpers ---------------------------------------------------------------------------
    def _get_transform_batch_gen_kwargs(self, batch: int | None) -> dict[str, Any]:
        if "transform_batch" in inspect.signature(self.module.generative).parameters:
            return {"transform_batch": batch}
        raise NotImplementedError("Transforming batches is not implemented for this model.")

    def _rna_loader(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        batch_size: int | None,
        dataloader: Iterable | None,
        **data_loader_kwargs: Any,
    ) -> tuple[AnnData | None, Iterable]:
        if adata is not None and dataloader is not None:
            raise ValueError("Only one of `adata` or `dataloader` can be provided.")
        if dataloader is not None:
            if indices is not None or batch_size is not None:
                warnings.warn(
                    "`indices` and `batch_size` are ignored when a `dataloader` is given.",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
            return None, dataloader
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(
            adata=adata, indices=indices, batch_size=batch_size, **data_loader_kwargs
        )
        return adata, loader

    # -- normalised expression -------------------------------------------------------------
    @torch.inference_mode()
    def get_normalized_expression(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Sequence[int | float | str] | str | None = None,
        gene_list: Sequence[str] | None = None,
        library_size: float | Literal["latent"] = 1,
        n_samples: int = 1,
        n_samples_overall: int | None = None,
        weights: Literal["uniform", "importance"] | None = None,
        batch_size: int | None = None,
        return_mean: bool = True,
        return_numpy: bool | None = None,
        silent: bool = True,
        dataloader: Iterable | None = None,
        data_loader_kwargs: dict | None = None,
        **importance_weighting_kwargs: Any,
    ) -> np.ndarray | pd.DataFrame:
        r"""Return the decoded (normalised) expression :math:`\rho_n` of each cell.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use (indices or a boolean mask); all by default.
        transform_batch
            Batch category (or list of categories, averaged) to decode every cell in;
            None uses each cell's observed batch.
        gene_list
            Genes to return; all by default.
        library_size
            Scale the expression proportions to this library size; ``"latent"`` returns
            the means under each cell's (latent or observed) library size.
        n_samples
            Posterior samples per cell.
        n_samples_overall
            Draw this many samples in total from the selected cells (rows are samples, not
            cells); ``n_samples`` must stay 1.
        weights
            How ``n_samples_overall`` samples are drawn from the cells' posterior samples:
            ``None``/``"uniform"`` (equally), or ``"importance"`` (in proportion to
            :meth:`get_importance_weights`; needs ``adata``, not a ``dataloader``, and a
            single ``transform_batch``). Unused without ``n_samples_overall``.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        return_mean
            Average over the ``n_samples`` samples.
        return_numpy
            Return a numpy array instead of a DataFrame (cells x genes, indexed by
            ``obs_names`` and ``var_names``).
        silent
            Hide the progress bar over transform batches.
        dataloader
            A loader to use instead of ``adata`` (always returns numpy).
        data_loader_kwargs
            Extra loader arguments.
        **importance_weighting_kwargs
            Passed to :meth:`get_importance_weights` (``max_cells``, ``truncation``,
            ``n_mc_samples``, ``n_mc_samples_per_pass``, loader arguments).

        Returns
        -------
        pandas.DataFrame or numpy.ndarray
            ``(n_cells, n_genes)``; ``(n_samples, n_cells, n_genes)`` with ``n_samples > 1``
            and ``return_mean=False``; ``(n_samples_overall, n_genes)`` with
            ``n_samples_overall`` (a numpy array unless ``return_numpy=False``, then a
            DataFrame with a plain integer index).
        """
        if weights not in (None, "uniform", "importance"):
            raise ValueError("`weights` must be None, 'uniform' or 'importance'.")
        if weights == "importance" and dataloader is not None:
            raise ValueError(
                "weights='importance' needs `adata` (the cells' counts); it cannot be used "
                "with a `dataloader`."
            )
        if library_size != "latent" and (
            isinstance(library_size, bool | str) or not np.isscalar(library_size)
        ):
            raise ValueError("`library_size` must be a number or 'latent'.")
        if int(n_samples) < 1:
            raise ValueError("`n_samples` must be at least 1.")
        if adata is not None and dataloader is not None:
            raise ValueError("Only one of `adata` or `dataloader` can be provided.")

        if dataloader is None:
            adata = self._validate_anndata(adata)
            indices = _as_indices(adata, indices)
            if len(indices) == 0:
                raise ValueError("`indices` selects no cells.")
            if n_samples_overall is not None:
                if n_samples != 1:
                    raise ValueError("Give either `n_samples` or `n_samples_overall`, not both.")
                n_samples = n_samples_overall // len(indices) + 1
            manager = self.get_anndata_manager(adata, required=True)
            codes = _batch_codes(manager, transform_batch)
            gene_mask = _gene_mask(adata, gene_list)
            loader = self._make_data_loader(
                adata=adata, indices=indices, batch_size=batch_size, **(data_loader_kwargs or {})
            )
        else:
            if indices is not None or batch_size is not None:
                warnings.warn(
                    "`indices` and `batch_size` are ignored when a `dataloader` is given.",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
            codes = [None]
            gene_mask = slice(None)
            loader = dataloader

        if n_samples > 1 and not return_mean and n_samples_overall is None:
            if return_numpy is False:
                warnings.warn(
                    "`return_numpy` must be `True` if `n_samples > 1` and `return_mean` is"
                    "`False`, returning an `np.ndarray`.",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
            return_numpy = True

        importance = weights == "importance"
        if importance and len(codes) > 1:
            raise NotImplementedError(
                "Importance weights cannot be computed when expression levels are averaged across "
                "batches."
            )
        keep_posterior = importance and n_samples_overall is not None
        key, scaling = ("mu", 1.0) if library_size == "latent" else ("scale", library_size)
        parts = []
        qz_parts, px_parts, z_parts = [], [], []
        for tensors in loader:
            per_batch = []
            for code in track(codes, disable=silent):
                inference_outputs, generative_outputs = self.module.forward(
                    tensors=tensors,
                    inference_kwargs={"n_samples": n_samples},
                    generative_kwargs=self._get_transform_batch_gen_kwargs(code),
                    compute_loss=False,
                )
                px = generative_outputs["px"]
                values = px if isinstance(px, torch.Tensor) else px.get_normalized(key)
                per_batch.append(values[..., gene_mask] * scaling)
            if keep_posterior:
                qz_parts.append(_distribution_to(inference_outputs["qz"], "cpu"))
                px_parts.append(_distribution_to(generative_outputs["px"], "cpu"))
                z_parts.append(inference_outputs["z"].cpu())
            parts.append(torch.stack(per_batch).mean(0).cpu().numpy())
        cell_axis = 1 if n_samples > 1 else 0
        exprs = np.concatenate(parts, axis=cell_axis)

        if n_samples_overall is not None:
            flat = exprs.reshape(-1, exprs.shape[-1])
            probs = None
            if keep_posterior:
                probs = self.get_importance_weights(
                    adata,
                    indices,
                    qz=_concat_distributions(qz_parts, axis=0),
                    px=_concat_distributions(px_parts, axis=cell_axis),
                    zs=torch.cat(z_parts, dim=cell_axis),
                    **importance_weighting_kwargs,
                )
            exprs = flat[_choice(flat.shape[0], n_samples_overall, p=probs)]
            if return_numpy is False and dataloader is None:
                return pd.DataFrame(exprs, columns=adata.var_names[gene_mask])
            return exprs
        if n_samples > 1 and return_mean:
            exprs = exprs.mean(0)
        if not return_numpy and dataloader is None:
            return pd.DataFrame(
                exprs, columns=adata.var_names[gene_mask], index=adata.obs_names[indices]
            )
        return exprs

    @torch.inference_mode()
    def get_importance_weights(
        self,
        adata: AnnData | None,
        indices: Sequence[int] | None,
        qz: torch.distributions.Distribution,
        px: torch.distributions.Distribution,
        zs: torch.Tensor,
        max_cells: int = 1024,
        truncation: bool = False,
        n_mc_samples: int = 500,
        n_mc_samples_per_pass: int = 250,
        **data_loader_kwargs: Any,
    ) -> np.ndarray:
        r"""Self-normalised importance weights of posterior samples of a group of cells.

        The samples ``zs`` were drawn from the mixture of the cells' variational posteriors
        :math:`\sum_n q(z \mid x_n)`; each is reweighted towards the mixture of their true
        posteriors :math:`\sum_a p(z \mid x_a) = \sum_a p(z) p(x_a \mid z) / p(x_a)` over
        up to ``max_cells`` anchor cells, so that latent codes that explain many cells of the
        group well weigh more. :math:`\log p(x_a)` is estimated with
        :meth:`get_marginal_ll`; the prior is a standard normal.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            The group's cells, aligned with the cell axis of ``qz``, ``px`` and ``zs``.
        qz
            Variational posteriors of the cells (batch shape ``(n_cells, n_latent)``).
        px
            Count distributions of the samples (``(n_cells, n_genes)`` or
            ``(n_samples, n_cells, n_genes)``), with a normalised mean ``scale``.
        zs
            Latent samples, ``(n_cells, n_latent)`` or ``(n_samples, n_cells, n_latent)``.
        max_cells
            Largest number of anchor cells (drawn at random without replacement).
        truncation
            Raise every log weight below the log of the mean weight to it, as the reference
            does, to reduce the estimator's variance.
        n_mc_samples
            Importance samples of each anchor's marginal log-likelihood.
        n_mc_samples_per_pass
            Of these, how many are drawn at once.
        **data_loader_kwargs
            Arguments of the loader of the anchors' counts.

        Returns
        -------
        numpy.ndarray
            ``(n_samples * n_cells,)`` weights summing to one, in the order of
            ``zs.reshape(-1, n_latent)``.
        """
        adata = self._validate_anndata(adata)
        indices = _as_indices(adata, indices)
        n_cells = len(indices)
        if zs.shape[-2] != n_cells or qz.batch_shape[0] != n_cells:
            raise ValueError(
                f"`qz` and `zs` must have one entry per cell of `indices` ({n_cells}); got "
                f"{qz.batch_shape[0]} and {zs.shape[-2]}."
            )
        if n_cells > max_cells:
            anchors = np.random.choice(n_cells, size=max_cells, replace=False)  # noqa: NPY002
        else:
            anchors = np.arange(n_cells)
        anchor_cells = indices[anchors]
        device = self.device

        log_px = torch.as_tensor(
            self.get_marginal_ll(
                adata,
                indices=anchor_cells,
                return_mean=False,
                n_mc_samples=n_mc_samples,
                n_mc_samples_per_pass=n_mc_samples_per_pass,
            ),
            device=device,
        ).reshape(1, -1)
        zs = zs.to(device)
        log_pz = torch.distributions.Normal(0.0, 1.0).log_prob(zs).sum(-1)
        qz_anchor = _subset_distribution(_distribution_to(qz, device), anchors, axis=0)
        log_qz = qz_anchor.log_prob(zs.unsqueeze(-2)).sum(-1)
        log_px_z = self._anchor_log_likelihoods(
            adata, anchor_cells, _distribution_to(px, device), **data_loader_kwargs
        )

        n_anchors = len(anchors)
        log_weights = torch.logsumexp(
            log_pz.reshape(-1, 1) + log_px_z.reshape(-1, n_anchors) - log_px, dim=1
        ) - torch.logsumexp(log_qz.reshape(-1, n_anchors), dim=1)
        log_weights = log_weights.double()
        if truncation:
            log_mean = torch.logsumexp(log_weights, 0) - np.log(log_weights.shape[0])
            log_weights = torch.clamp(log_weights, min=log_mean)
        probs = torch.exp(log_weights - torch.logsumexp(log_weights, 0)).cpu().numpy()
        # np.random.choice checks the sum to ~1e-8; renormalise in float64.
        return probs / probs.sum()

    def _anchor_log_likelihoods(
        self,
        adata: AnnData,
        anchor_cells: np.ndarray,
        px: torch.distributions.Distribution,
        **data_loader_kwargs: Any,
    ) -> torch.Tensor:
        """``log p(x_a | z)`` of every anchor's counts under every sample's decoded mean.

        Each sample's normalised mean is scaled to the anchor's observed library size.
        Returns ``(..., n_cells, n_anchors)`` (the leading shape of ``px`` without genes).
        Anchors are evaluated in chunks of about ``_ANCHOR_CHUNK_ELEMENTS`` values.
        """
        # Not ``px.batch_shape``: count distributions here do not all set it.
        shape = torch.broadcast_shapes(*(v.shape for v in _distribution_params(px).values()))
        chunk = max(1, _ANCHOR_CHUNK_ELEMENTS // max(1, shape.numel()))
        # Anchor counts broadcast against every leading (sample, cell) axis of ``px``.
        view = (-1,) + (1,) * (len(shape) - 1) + (shape[-1],)
        library_view = (-1,) + (1,) * len(shape)
        loader = self._make_data_loader(adata=adata, indices=anchor_cells, **data_loader_kwargs)
        columns = []
        for tensors in loader:
            counts = tensors[REGISTRY_KEYS.X_KEY].to(self.device)
            for x_anchors in torch.split(counts, chunk):
                libraries = x_anchors.sum(-1).reshape(library_view)
                px_anchors = _with_library(px, libraries)
                log_lik = px_anchors.log_prob(x_anchors.reshape(view)).sum(-1)
                columns.append(torch.movedim(log_lik, 0, -1))
        return torch.cat(columns, dim=-1)

    # -- differential expression -----------------------------------------------------------
    def differential_expression(
        self,
        adata: AnnData | None = None,
        groupby: str | None = None,
        group1: Sequence[str] | str | None = None,
        group2: str | None = None,
        idx1: Sequence[int] | Sequence[bool] | str | None = None,
        idx2: Sequence[int] | Sequence[bool] | str | None = None,
        mode: Literal["vanilla", "change"] = "vanilla",
        delta: float = 0.25,
        batch_size: int | None = None,
        all_stats: bool = True,
        batch_correction: bool = False,
        batchid1: Sequence[str] | None = None,
        batchid2: Sequence[str] | None = None,
        fdr_target: float = 0.05,
        silent: bool = False,
        weights: Literal["uniform", "importance"] | None = "uniform",
        filter_outlier_cells: bool = False,
        importance_weighting_kwargs: dict | None = None,
        **kwargs: Any,
    ) -> pd.DataFrame:
        r"""Bayesian differential expression between groups of cells.

        ``mode="vanilla"`` (Lopez et al. 2018) reports ``proba_m1`` (expression higher in
        group 1), ``proba_m2`` and their log Bayes factor; ``mode="change"`` (Boyeau et al.
        2019) reports the probability that the log2 fold change lies outside
        ``[-delta, delta]`` (``proba_de``) with fold-change summaries and an FDR call.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        groupby
            ``obs`` column defining the groups.
        group1
            Group(s) to test, each against ``group2``; every category when None.
        group2
            Reference group; all other cells (``"Rest"``) when None.
        idx1
            Instead of ``groupby``: first group as a boolean mask, indices or an
            ``obs.query`` string.
        idx2
            Second group likewise (all other cells when None).
        mode
            ``"vanilla"`` or ``"change"``.
        delta
            Fold-change threshold of ``"change"`` mode (None estimates it).
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        all_stats
            Add raw count statistics of both groups.
        batch_correction
            Decode every cell in each batch (``batchid1``/``batchid2``) instead of its own.
        batchid1, batchid2
            Batches to decode each group in (with ``batch_correction``).
        fdr_target
            Target posterior FDR of the ``is_de_fdr_<target>`` column (``"change"``).
        silent
            Hide the progress bar.
        weights
            ``"uniform"`` or ``"importance"`` (posterior samples drawn in proportion to
            :meth:`get_importance_weights`).
        filter_outlier_cells
            Drop latent-space outliers of each group before sampling.
        importance_weighting_kwargs
            Passed to :meth:`get_importance_weights`.
        **kwargs
            Passed to :meth:`DifferentialComputation.get_bayes_factors`
            (``n_samples_overall``, ``use_permutation``, ``m_permutation``, ``change_fn``,
            ``m1_domain_fn``, ``pseudocounts``, ``test_mode``, ``cred_interval_lvls``, ...).

        Returns
        -------
        pandas.DataFrame
            One row per gene (per comparison), with the reference's columns; sorted by
            ``bayes_factor`` (vanilla) or ``proba_de`` (change), descending.
        """
        adata = self._validate_anndata(adata)
        model_fn = partial(
            self.get_normalized_expression,
            return_numpy=True,
            n_samples=1,
            batch_size=batch_size,
            weights=weights,
            **(importance_weighting_kwargs or {}),
        )
        representation_fn = self.get_latent_representation if filter_outlier_cells else None
        return _de_core(
            self.get_anndata_manager(adata, required=True),
            model_fn,
            representation_fn,
            groupby,
            group1,
            group2,
            idx1,
            idx2,
            all_stats,
            scrna_raw_counts_properties,
            adata.var_names,
            mode,
            batchid1,
            batchid2,
            delta,
            batch_correction,
            fdr_target,
            silent,
            **kwargs,
        )

    # -- samples and likelihood parameters ---------------------------------------------------
    @torch.inference_mode()
    def posterior_predictive_sample(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        transform_batch: Sequence[int | float | str] | str | None = None,
        n_samples: int = 1,
        gene_list: Sequence[str] | None = None,
        batch_size: int | None = None,
        dataloader: Iterable | None = None,
        silent: bool = True,
        **data_loader_kwargs: Any,
    ) -> sp_sparse.csr_matrix | np.ndarray:
        r"""Draw counts from the posterior predictive :math:`p(\hat{x} \mid x)`.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        transform_batch
            Batch category (or list, averaged) to decode the cells in; observed by default.
        n_samples
            Samples per cell.
        gene_list
            Genes to return; all by default.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        dataloader
            A loader to use instead of ``adata``.
        silent
            Hide the progress bar over transform batches.
        **data_loader_kwargs
            Extra loader arguments.

        Returns
        -------
        scipy.sparse.csr_matrix or numpy.ndarray
            A CSR matrix ``(n_obs, n_vars)`` when ``n_samples == 1``, else a dense array
            ``(n_obs, n_vars, n_samples)``. (The reference returns a ``sparse.GCXS`` array in
            both cases; scvi-rs does not depend on the ``sparse`` package.)
        """
        if int(n_samples) < 1:
            raise ValueError("`n_samples` must be at least 1.")
        if adata is not None and dataloader is not None:
            raise ValueError("Only one of `adata` or `dataloader` can be provided.")
        if dataloader is None:
            adata = self._validate_anndata(adata)
            codes = _batch_codes(self.get_anndata_manager(adata, required=True), transform_batch)
            gene_mask = _gene_mask(adata, gene_list)
            loader = self._make_data_loader(
                adata=adata, indices=indices, batch_size=batch_size, **data_loader_kwargs
            )
        else:
            if indices is not None or batch_size is not None or gene_list is not None:
                warnings.warn(
                    "`indices`, `batch_size` and `gene_list` are ignored when a `dataloader` "
                    "is given.",
                    UserWarning,
                    stacklevel=settings.warnings_stacklevel,
                )
            codes = [None]
            gene_mask = slice(None)
            loader = dataloader

        parts = []
        for tensors in loader:
            per_batch = []
            for code in track(codes, disable=silent):
                samples = self.module.sample(
                    tensors,
                    n_samples=n_samples,
                    generative_kwargs=self._get_transform_batch_gen_kwargs(code),
                )
                per_batch.append(samples[:, gene_mask])
            if len(per_batch) == 1:
                parts.append(per_batch[0].numpy())
            else:
                parts.append(torch.stack(per_batch).mean(0).numpy())
        samples = np.concatenate(parts, axis=0)
        if n_samples == 1:
            return sp_sparse.csr_matrix(samples)
        return samples

    @torch.inference_mode()
    def _get_denoised_samples(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 25,
        batch_size: int = 64,
        rna_size_factor: int = 1000,
        transform_batch: int | None = None,
        dataloader: Iterable | None = None,
        **data_loader_kwargs: Any,
    ) -> np.ndarray:
        """Gamma draws of the decoded expression at library ``rna_size_factor``.

        Shape ``(n_cells, n_genes)`` or ``(n_cells, n_genes, n_samples)``.
        """
        adata, loader = self._rna_loader(
            adata, indices, batch_size, dataloader, **data_loader_kwargs
        )
        if dataloader is not None:
            transform_batch = None
        parts = []
        for tensors in loader:
            _, generative_outputs = self.module.forward(
                tensors=tensors,
                inference_kwargs={"n_samples": n_samples},
                generative_kwargs=self._get_transform_batch_gen_kwargs(transform_batch),
                compute_loss=False,
            )
            scale, theta = _denoising_parameters(generative_outputs)
            rate = rna_size_factor * scale
            if theta.dim() < rate.dim():
                theta = torch.ones_like(rate) * theta
            p = rate / (rate + theta)
            draws = torch.distributions.Gamma(theta, (1 - p) / p).sample().cpu().numpy()
            if n_samples > 1:
                draws = np.transpose(draws, (1, 2, 0))
            parts.append(draws)
        return np.concatenate(parts, axis=0)

    @torch.inference_mode()
    def get_feature_correlation_matrix(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int = 10,
        batch_size: int = 64,
        rna_size_factor: int = 1000,
        transform_batch: Sequence[int | float | str] | str | None = None,
        correlation_type: Literal["spearman", "pearson"] = "spearman",
        silent: bool = True,
    ) -> pd.DataFrame:
        """Gene-gene correlation of denoised posterior samples.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        n_samples
            Posterior samples per cell.
        batch_size
            Minibatch size.
        rna_size_factor
            Library size of the denoised samples.
        transform_batch
            Batch(es) to decode in; correlations are averaged over them.
        correlation_type
            ``"spearman"`` or ``"pearson"``.
        silent
            Hide the progress bar.

        Returns
        -------
        pandas.DataFrame
            ``(n_genes, n_genes)`` indexed by gene names.
        """
        if correlation_type not in ("spearman", "pearson"):
            raise ValueError("Unknown correlation type. Choose one of 'spearman', 'pearson'.")
        adata = self._validate_anndata(adata)
        codes = _batch_codes(self.get_anndata_manager(adata, required=True), transform_batch)
        matrices = []
        for code in track(codes, disable=silent):
            denoised = self._get_denoised_samples(
                adata=adata,
                indices=indices,
                n_samples=n_samples,
                batch_size=batch_size,
                rna_size_factor=rna_size_factor,
                transform_batch=code,
            )
            if denoised.ndim == 3:
                flat = np.concatenate([denoised[:, :, i] for i in range(denoised.shape[2])])
            else:
                flat = denoised
            if correlation_type == "pearson":
                matrices.append(np.corrcoef(flat, rowvar=False))
            else:
                from scipy.stats import spearmanr

                matrices.append(np.asarray(spearmanr(flat)[0]))
        corr = np.mean(np.stack(matrices), axis=0)
        return pd.DataFrame(corr, index=adata.var_names, columns=adata.var_names)

    @torch.inference_mode()
    def get_likelihood_parameters(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        n_samples: int | None = 1,
        give_mean: bool | None = False,
        batch_size: int | None = None,
        dataloader: Iterable | None = None,
        **data_loader_kwargs: Any,
    ) -> dict[str, np.ndarray]:
        r"""Parameters of the count likelihood :math:`p(x \mid z)` of each cell.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        n_samples
            Posterior samples per cell.
        give_mean
            Average over the samples (when ``n_samples > 1``).
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        dataloader
            A loader to use instead of ``adata``.
        **data_loader_kwargs
            Extra loader arguments.

        Returns
        -------
        dict
            ``"mean"``; ``"dropout"`` (zero-inflation probabilities, ``"zinb"`` only);
            ``"dispersions"`` (inverse dispersion θ, or the standard deviation for
            ``"normal"``; not for ``"poisson"``). Each ``(n_cells, n_genes)``, or
            ``(n_samples, n_cells, n_genes)`` with ``n_samples > 1`` and not ``give_mean``.
        """
        n_samples = 1 if n_samples is None else int(n_samples)
        if n_samples < 1:
            raise ValueError("`n_samples` must be at least 1.")
        _, loader = self._rna_loader(adata, indices, batch_size, dataloader, **data_loader_kwargs)
        likelihood = getattr(self.module, "gene_likelihood", "zinb")
        means, dropouts, dispersions = [], [], []
        for tensors in loader:
            _, generative_outputs = self.module.forward(
                tensors=tensors, inference_kwargs={"n_samples": n_samples}, compute_loss=False
            )
            px = generative_outputs["px"]
            mean = px.get_normalized("mu")
            means.append(mean.cpu().numpy())
            if likelihood == "zinb":
                dropouts.append(px.zi_probs.cpu().numpy())
            if likelihood in ("nb", "zinb"):
                dispersions.append(torch.broadcast_to(px.theta, mean.shape).cpu().numpy())
            elif likelihood == "normal":
                dispersions.append(torch.broadcast_to(px.scale, mean.shape).cpu().numpy())
        result = {"mean": np.concatenate(means, axis=-2)}
        if dropouts:
            result["dropout"] = np.concatenate(dropouts, axis=-2)
        if dispersions:
            result["dispersions"] = np.concatenate(dispersions, axis=-2)
        if give_mean and n_samples > 1:
            result = {key: value.mean(0) for key, value in result.items()}
        # Keep the reference's key order: mean, dropout, dispersions.
        return {k: result[k] for k in ("mean", "dropout", "dispersions") if k in result}

    @torch.inference_mode()
    @unsupported_if_adata_minified
    def get_latent_library_size(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        give_mean: bool = True,
        batch_size: int | None = None,
        dataloader: Iterable | None = None,
        **data_loader_kwargs: Any,
    ) -> np.ndarray:
        r"""Library size :math:`\ell_n` of each cell.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        give_mean
            Posterior mean of the latent library (needs ``use_observed_lib_size=False``);
            otherwise ``exp`` of the encoder's library (the observed total counts under the
            observed library size).
        batch_size
            Minibatch size; ``settings.batch_size`` by default.
        dataloader
            A loader to use instead of ``adata``.
        **data_loader_kwargs
            Extra loader arguments.

        Returns
        -------
        numpy.ndarray
            ``(n_cells, 1)``.
        """
        if dataloader is None:
            self._check_if_trained(warn=False)
        _, loader = self._rna_loader(adata, indices, batch_size, dataloader, **data_loader_kwargs)
        libraries = []
        for tensors in loader:
            outputs = self.module.inference(**self.module._get_inference_input(tensors))
            if not give_mean:
                library = torch.exp(outputs["library"])
            else:
                ql = outputs["ql"]
                if ql is None:
                    raise RuntimeError(
                        "The module for this model does not compute the posterior distribution "
                        "for the library size. Set `give_mean` to False to use the observed "
                        "library size instead."
                    )
                library = torch.distributions.LogNormal(ql.loc, ql.scale).mean
            libraries.append(library.cpu())
        return torch.cat(libraries).numpy()


__all__ = ["RNASeqMixin"]
