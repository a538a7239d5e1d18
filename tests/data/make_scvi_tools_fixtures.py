"""Write (or read back) the scvi-tools model files used by ``tests/test_model_files.py``.

Run with an interpreter that has scvi-tools installed (the reference, 1.4.2)::

    ~/.venvs/scvi-tools/bin/python tests/data/make_scvi_tools_fixtures.py

It trains two tiny SCVI models with scvi-tools and saves each, with its AnnData and the
latent representation scvi-tools computes after reloading the files, under
``tests/data/scvi_tools_<version>_<name>/``:

- ``scvi``: SCVI defaults on ``synthetic_iid(batch_size=100, n_genes=50)`` set up with
  ``batch_key="batch", labels_key="labels"``.
- ``scvi_covs``: a learned library size (``use_observed_lib_size=False``), ``"nb"``,
  ``"gene-batch"`` dispersion, two hidden layers, one extra categorical and one continuous
  covariate.

Each directory holds ``model.pt``, ``adata.h5ad``, ``latent.npy`` (``float32``, cells x
latent) and ``info.json`` (scvi-tools version and the arguments used).

The second form loads model directories (each with its ``adata.h5ad``) with scvi-tools and
writes their latent representations, which is how the tests check that scvi-tools reads
scvi-rs files::

    python make_scvi_tools_fixtures.py latent MODEL_DIR OUT.npy [MODEL_DIR OUT.npy ...]
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import warnings

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


def _small_adata(scvi, n_genes: int = 50):
    scvi.settings.seed = 0
    adata = scvi.data.synthetic_iid(batch_size=100, n_genes=n_genes)
    # Only the counts and obs are needed; dropping the protein/ATAC blocks keeps files small.
    for key in list(adata.obsm):
        del adata.obsm[key]
    adata.uns.pop("protein_names", None)
    return adata


def _train_and_save(scvi, name: str, setup_kwargs: dict, model_kwargs: dict, prep=None) -> None:
    import anndata

    adata = _small_adata(scvi)
    if prep is not None:
        prep(adata)
    scvi.model.SCVI.setup_anndata(adata, **setup_kwargs)
    model = scvi.model.SCVI(adata, **model_kwargs)
    model.train(max_epochs=2, batch_size=64, enable_progress_bar=False, accelerator="cpu")

    out_dir = os.path.join(HERE, f"scvi_tools_{scvi.__version__}_{name}")
    if os.path.exists(out_dir):
        shutil.rmtree(out_dir)
    model.save(out_dir, save_anndata=True, compression="gzip")

    # The expected latent comes from a fresh load, exactly what a reader of the files sees.
    reloaded = scvi.model.SCVI.load(out_dir, accelerator="cpu")
    latent = reloaded.get_latent_representation().astype(np.float32)
    direct = model.get_latent_representation()
    np.testing.assert_allclose(latent, direct, rtol=0, atol=1e-6)
    np.save(os.path.join(out_dir, "latent.npy"), latent)
    # The saved AnnData must be the one the latent was computed on.
    saved = anndata.read_h5ad(os.path.join(out_dir, "adata.h5ad"))
    assert saved.shape == adata.shape
    info = {
        "scvi_tools_version": scvi.__version__,
        "setup_anndata": setup_kwargs,
        "model": model_kwargs,
        "train": {"max_epochs": 2, "batch_size": 64, "seed": 0},
        "data": "synthetic_iid(batch_size=100, n_genes=50), obsm and uns dropped",
    }
    with open(os.path.join(out_dir, "info.json"), "w") as fh:
        json.dump(info, fh, indent=2, sort_keys=True)
        fh.write("\n")
    sizes = {f: os.path.getsize(os.path.join(out_dir, f)) for f in sorted(os.listdir(out_dir))}
    print(out_dir, sizes)


def _add_covariates(adata) -> None:
    rng = np.random.default_rng(0)
    adata.obs["donor"] = rng.choice(["d0", "d1", "d2"], size=adata.n_obs)
    adata.obs["percent_mito"] = rng.uniform(0.0, 0.2, size=adata.n_obs).astype(np.float32)


def make_fixtures() -> None:
    import scvi

    warnings.filterwarnings("ignore")
    _train_and_save(scvi, "scvi", {"batch_key": "batch", "labels_key": "labels"}, {})
    _train_and_save(
        scvi,
        "scvi_covs",
        {
            "batch_key": "batch",
            "labels_key": "labels",
            "categorical_covariate_keys": ["donor"],
            "continuous_covariate_keys": ["percent_mito"],
        },
        {
            "n_hidden": 32,
            "n_latent": 5,
            "n_layers": 2,
            "gene_likelihood": "nb",
            "dispersion": "gene-batch",
            "use_observed_lib_size": False,
        },
        prep=_add_covariates,
    )


def write_latents(pairs: list[str]) -> None:
    """Load each ``MODEL_DIR`` with scvi-tools and save its latent representation to ``OUT``.

    ``pairs`` alternates ``MODEL_DIR OUT.npy``; each directory must hold ``adata.h5ad``.
    Prints one JSON line per model.
    """
    import scvi

    warnings.filterwarnings("ignore")
    if len(pairs) % 2:
        raise SystemExit("usage: latent MODEL_DIR OUT.npy [MODEL_DIR OUT.npy ...]")
    for model_dir, out_path in zip(pairs[::2], pairs[1::2], strict=True):
        model = scvi.model.SCVI.load(model_dir, accelerator="cpu")
        latent = model.get_latent_representation().astype(np.float32)
        np.save(out_path, latent)
        summary = {
            "model_dir": model_dir,
            "shape": list(latent.shape),
            "is_trained": bool(model.is_trained),
            "n_batch": int(model.summary_stats.n_batch),
        }
        print(json.dumps(summary))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "latent":
        write_latents(sys.argv[2:])
    else:
        make_fixtures()
