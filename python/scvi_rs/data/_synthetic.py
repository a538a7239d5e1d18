"""``synthetic_iid``: a small random AnnData for tests and tutorials (no downloads)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

logger = logging.getLogger("scvi_rs")

_SPARSE_FORMATS = {"csr_matrix": sp.csr_matrix, "csc_matrix": sp.csc_matrix}


def _generate(
    batch_size: int,
    n_genes: int,
    n_proteins: int,
    n_regions: int,
    n_batches: int,
    n_labels: int,
    dropout_ratio: float,
    sparse_format: str | None,
    generate_coordinates: bool,
    batch_key: str = "batch",
    labels_key: str = "labels",
    rna_key: str = "rna",
    gene_names_prefix: str = "gene",
    protein_expression_key: str = "protein_expression",
    protein_names_key: str = "protein_names",
    protein_names_prefix: str = "protein",
    accessibility_key: str = "accessibility",
    region_names_prefix: str = "region",
    coordinates_key: str = "coordinates",
    rna_dist: str = "nb",
) -> dict[str, Any]:
    """Draw every array from numpy's global legacy RNG, in the reference's order."""
    n_obs = batch_size * n_batches

    def to_format(x: np.ndarray) -> Any:
        if sparse_format is None:
            return x
        if sparse_format not in _SPARSE_FORMATS:
            raise ValueError(f"Sparse format {sparse_format} not supported.")
        return _SPARSE_FORMATS[sparse_format](x)

    # 1-3: RNA counts, then a binomial mask; each entry is kept with prob. dropout_ratio
    if rna_dist == "nb":
        rna = np.random.negative_binomial(5, 0.3, size=(n_obs, n_genes))  # noqa: NPY002
    elif rna_dist == "normal":
        rna = np.random.normal(5, 2, size=(n_obs, n_genes))  # noqa: NPY002
    else:
        raise ValueError(f"Unsupported `rna_dist`: {rna_dist}. Use 'nb' or 'normal'.")
    mask = np.random.binomial(1, dropout_ratio, size=(n_obs, n_genes))  # noqa: NPY002
    rna = rna * mask
    out: dict[str, Any] = {
        "X": to_format(rna),
        "var_names": [f"{gene_names_prefix}_{i}" for i in range(n_genes)],
        "obsm": {},
        "uns": {},
        "obs": {},
        "keys": {
            "rna": rna_key,
            "accessibility": accessibility_key,
            "protein": protein_expression_key,
        },
    }
    protein = accessibility = None
    if n_proteins > 0:
        protein = np.random.negative_binomial(5, 0.3, size=(n_obs, n_proteins))  # noqa: NPY002
    if n_regions > 0:
        accessibility = np.random.negative_binomial(5, 0.3, size=(n_obs, n_regions))  # noqa: NPY002
        region_mask = np.random.binomial(1, dropout_ratio, size=(n_obs, n_regions))  # noqa: NPY002
        accessibility = accessibility * region_mask
    # 1.5 order: accessibility before protein expression
    if accessibility is not None:
        out["obsm"][accessibility_key] = to_format(accessibility)
        out["region_names"] = [f"{region_names_prefix}_{i}" for i in range(n_regions)]
    if protein is not None:
        out["obsm"][protein_expression_key] = to_format(protein)
        out["uns"][protein_names_key] = np.array(
            [f"{protein_names_prefix}_{i}" for i in range(n_proteins)]
        )
        out["protein_names"] = out["uns"][protein_names_key]
    batch = []
    for i in range(n_batches):
        batch += [f"batch_{i}"] * batch_size
    out["obs"][batch_key] = pd.Categorical(batch)
    if n_labels > 0:
        labels = np.random.randint(0, n_labels, size=(n_obs,))  # noqa: NPY002
        out["obs"][labels_key] = pd.Categorical([f"label_{i}" for i in labels])
    if generate_coordinates:
        out["obsm"][coordinates_key] = np.random.normal(size=(n_obs, 2))  # noqa: NPY002
    out["n_obs"] = n_obs
    return out


def synthetic_iid(
    batch_size: int = 200,
    n_genes: int = 100,
    n_proteins: int = 100,
    n_regions: int = 100,
    n_batches: int = 2,
    n_labels: int = 3,
    dropout_ratio: float = 0.7,
    sparse_format: str | None = None,
    generate_coordinates: bool = False,
    return_mudata: bool = False,
    **kwargs: Any,
):
    """Synthetic count data, identically distributed across batches.

    Counts are negative binomial (numpy's ``negative_binomial(5, 0.3)``); each RNA and
    accessibility entry is *kept* with probability ``dropout_ratio`` (as in the reference,
    so the default gives about 30 % zeros). Draws use numpy's global RNG, so
    ``scvi_rs.settings.seed`` makes the result reproducible.

    Parameters
    ----------
    batch_size
        Cells per batch.
    n_genes
        Number of genes (``adata.X`` columns).
    n_proteins
        Number of proteins in ``obsm["protein_expression"]`` (0 to omit).
    n_regions
        Number of regions in ``obsm["accessibility"]`` (0 to omit).
    n_batches
        Number of batches (``obs["batch"]``: ``batch_0``, ``batch_1``, ...).
    n_labels
        Number of labels (``obs["labels"]``: ``label_0``, ...; 0 to omit).
    dropout_ratio
        Probability that an RNA/accessibility entry is kept.
    sparse_format
        ``None`` (dense), ``"csr_matrix"`` or ``"csc_matrix"``.
    generate_coordinates
        Add ``obsm["coordinates"]`` (standard normal, 2 columns).
    return_mudata
        Return a MuData (needs the ``mudata`` package).
    **kwargs
        Key names and ``rna_dist`` (``"nb"`` or ``"normal"``), as in the reference.

    Returns
    -------
    AnnData (or MuData) with ``batch_size * n_batches`` cells.
    """
    if n_batches < 1:
        raise ValueError("`n_batches` must be greater than 0")
    if n_genes < 1:
        raise ValueError("`n_genes` must be greater than 0")
    from anndata import AnnData

    data = _generate(
        batch_size,
        n_genes,
        n_proteins,
        n_regions,
        n_batches,
        n_labels,
        dropout_ratio,
        sparse_format,
        generate_coordinates,
        **kwargs,
    )
    n_obs = data["n_obs"]
    obs_names = [str(i) for i in range(n_obs)]
    obs = pd.DataFrame(data["obs"], index=pd.Index(obs_names))
    if not return_mudata:
        return AnnData(
            X=data["X"],
            obs=obs,
            var=pd.DataFrame(index=pd.Index(data["var_names"])),
            obsm=data["obsm"] or None,
            uns=data["uns"] or None,
        )

    try:
        from mudata import MuData
    except ImportError as err:
        raise ModuleNotFoundError("Please install ['mudata'] to use this functionality.") from err
    keys = data["keys"]
    modalities = {
        keys["rna"]: AnnData(
            X=data["X"],
            obs=pd.DataFrame(index=obs.index),
            var=pd.DataFrame(index=pd.Index(data["var_names"])),
        )
    }
    acc_key = kwargs.get("accessibility_key", "accessibility")
    prot_key = kwargs.get("protein_expression_key", "protein_expression")
    if acc_key in data["obsm"]:
        modalities[keys["accessibility"]] = AnnData(
            X=data["obsm"][acc_key],
            obs=pd.DataFrame(index=obs.index),
            var=pd.DataFrame(index=pd.Index(data["region_names"])),
        )
    if prot_key in data["obsm"]:
        modalities[keys["protein"]] = AnnData(
            X=data["obsm"][prot_key],
            obs=pd.DataFrame(index=obs.index),
            var=pd.DataFrame(index=pd.Index(list(data["protein_names"]))),
        )
    mdata = MuData(modalities)
    for column, values in data["obs"].items():
        mdata.obs[column] = values
    coord_key = kwargs.get("coordinates_key", "coordinates")
    if coord_key in data["obsm"]:
        mdata.obsm[coord_key] = data["obsm"][coord_key]
    return mdata
