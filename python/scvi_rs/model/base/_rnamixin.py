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
from ._de import _choice, _de_core, scrna_raw_counts_properties

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


class RNASeqMixin:
    """Queries of models with a count likelihood over genes (mixed into ``SCVI``).

    Notes
    -----
    Departures from the reference (scvi-tools 1.4.2):

    - ``posterior_predictive_sample`` returns a SciPy CSR matrix (one sample) or a dense
      ``(n_obs, n_vars, n_samples)`` array instead of a ``sparse.GCXS`` array.
    - ``weights="importance"`` raises ``NotImplementedError`` (uniform weights only).
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
            ``None``/``"uniform"``. ``"importance"`` is not supported (NotImplementedError).
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
            Accepted for compatibility (importance weighting is not supported).

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
        if weights == "importance":
            raise NotImplementedError(
                "weights='importance' (importance-weighted sampling of the posterior) is not "
                "implemented in scvi-rs; use weights='uniform'."
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

        key, scaling = ("mu", 1.0) if library_size == "latent" else ("scale", library_size)
        parts = []
        for tensors in loader:
            per_batch = []
            for code in track(codes, disable=silent):
                _, generative_outputs = self.module.forward(
                    tensors=tensors,
                    inference_kwargs={"n_samples": n_samples},
                    generative_kwargs=self._get_transform_batch_gen_kwargs(code),
                    compute_loss=False,
                )
                px = generative_outputs["px"]
                values = px if isinstance(px, torch.Tensor) else px.get_normalized(key)
                per_batch.append(values[..., gene_mask] * scaling)
            parts.append(torch.stack(per_batch).mean(0).cpu().numpy())
        cell_axis = 1 if n_samples > 1 else 0
        exprs = np.concatenate(parts, axis=cell_axis)

        if n_samples_overall is not None:
            flat = exprs.reshape(-1, exprs.shape[-1])
            exprs = flat[_choice(flat.shape[0], n_samples_overall)]
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

    def get_importance_weights(self, *args: Any, **kwargs: Any) -> np.ndarray:
        """Importance weights of posterior samples (not implemented in scvi-rs)."""
        raise NotImplementedError(
            "Importance weighting is not implemented in scvi-rs; use weights='uniform'."
        )

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
            ``"uniform"`` (``"importance"`` raises NotImplementedError).
        filter_outlier_cells
            Drop latent-space outliers of each group before sampling.
        importance_weighting_kwargs
            Accepted for compatibility.
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
            px = generative_outputs["px"]
            if not hasattr(px, "theta"):
                raise ValueError(
                    "Denoised samples need a negative-binomial likelihood ('nb' or 'zinb')."
                )
            rate = rna_size_factor * px.scale
            theta = px.theta
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
