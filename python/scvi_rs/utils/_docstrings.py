"""``setup_anndata_dsp``: shared parameter docs for ``setup_anndata`` methods."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

_PARAMS = {
    "param_adata": "adata\n    AnnData object. Rows represent cells, columns represent features.",
    "param_batch_key": "batch_key\n    key in `adata.obs` for batch information. Categories will "
    "automatically be converted into integer categories and saved to "
    "`adata.obs['_scvi_batch']`. If `None`, assigns the same batch to all the data.",
    "param_labels_key": "labels_key\n    key in `adata.obs` for label information. Categories "
    "will automatically be converted into integer categories and saved to "
    "`adata.obs['_scvi_labels']`. If `None`, assigns the same label to all the data.",
    "param_layer": "layer\n    if not `None`, uses this as the key in `adata.layers` for raw "
    "count data.",
    "param_size_factor_key": "size_factor_key\n    key in `adata.obs` for size factor "
    "information. Instead of using library size as a size factor, the provided size factor "
    "column will be used as offset in the mean of the likelihood. Assumed to be on linear "
    "scale.",
    "param_cat_cov_keys": "categorical_covariate_keys\n    keys in `adata.obs` that correspond "
    "to categorical data. These covariates can be added in addition to the batch covariate "
    "and are also treated as nuisance factors (i.e., the model tries to minimize their "
    "effects on the latent space).",
    "param_cont_cov_keys": "continuous_covariate_keys\n    keys in `adata.obs` that correspond "
    "to continuous data. These covariates can be added in addition to the batch covariate "
    "and are also treated as nuisance factors (i.e., the model tries to minimize their "
    "effects on the latent space).",
    "param_copy": "copy\n    if `True`, a copy of adata is returned.",
    "param_unlabeled_category": "unlabeled_category\n    value in `adata.obs[labels_key]` "
    "that indicates unlabeled observations.",
    "returns": "None. Adds the following fields:\n\n.uns['_scvi']\n    `scvi` setup dictionary",
}


class _DocstringProcessor:
    """Substitutes ``%(name)s`` placeholders in docstrings (a small stand-in for docrep)."""

    def __init__(self, **params: str) -> None:
        self.params = dict(params)

    def _substitute(self, doc: str) -> str:
        class _Keep(dict):
            def __missing__(self, key: str) -> str:
                return f"%({key})s"

        try:
            return doc % _Keep(self.params)
        except (TypeError, ValueError):
            return doc

    def __call__(self, func: Callable) -> Callable:
        if func.__doc__:
            func.__doc__ = self._substitute(func.__doc__)
        return func

    def dedent(self, func: Callable) -> Callable:
        """Dedent the docstring of ``func`` and fill in the shared parameters."""
        if func.__doc__:
            func.__doc__ = self._substitute(inspect.cleandoc(func.__doc__))
        return func

    def get_sections(self, *args: Any, **kwargs: Any) -> Callable:
        def deco(func: Callable) -> Callable:
            return func

        return deco


setup_anndata_dsp = _DocstringProcessor(**_PARAMS)
