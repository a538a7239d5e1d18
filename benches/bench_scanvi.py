"""scANVI beside scvi-tools, one process, same data, seed and epochs.

    ~/.venvs/scvi-rs-compat/bin/python benches/bench_scanvi.py [--cells 20000] [--epochs 5]

(the compat venv has both libraries). The counts are sparse (about 11% non-zero), a tenth of
the genes depend weakly on the cell type (the types overlap), and a third of the cells are
unlabelled. For each library: SCVI is trained, SCANVI is built from
it with ``from_scvi_model`` and trained; the figures are SCANVI's training cells/s, its last
validation ELBO, and the accuracy of ``predict()`` on the unlabelled cells against their true
types.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from scipy import sparse

UNLABELED = "Unknown"


def typed_counts(
    n_cells: int,
    n_genes: int,
    n_types: int,
    seed: int = 0,
    informative: float = 0.1,
    effect_sigma: float = 0.6,
    base_mean: float = -2.5,
) -> AnnData:
    """NB counts in which only some genes tell the cell types apart; two batches; labels
    hidden for a third of the cells (``obs["type"]`` keeps the truth).

    Each gene has a base mean (log-normal around ``exp(base_mean)``; -2.5 gives about 11%
    non-zero counts, as sparse as the SCVI bench and single-cell data); the first
    ``informative`` fraction of the genes is scaled per type by a log-normal factor of
    spread ``effect_sigma``, the other genes are the same in every type. Each cell has a
    log-normal size factor. Small effects on few genes make the types overlap, so that a
    classifier is not trivially right.
    """
    rng = np.random.default_rng(seed)
    types = rng.integers(0, n_types, n_cells)
    base = rng.lognormal(mean=base_mean, sigma=1.0, size=n_genes)
    effect = np.ones((n_types, n_genes))
    n_informative = max(1, int(informative * n_genes))
    effect[:, :n_informative] = rng.lognormal(0.0, effect_sigma, size=(n_types, n_informative))
    size_factor = rng.lognormal(0.0, 0.3, size=n_cells)[:, None]
    mu = base * effect[types] * size_factor
    theta = 2.0
    counts = rng.negative_binomial(theta, theta / (theta + mu)).astype(np.float32)
    labels = np.array([f"type_{t}" for t in types], dtype=object)
    observed = labels.copy()
    observed[rng.random(n_cells) < 1 / 3] = UNLABELED
    obs = pd.DataFrame(
        {
            "batch": pd.Categorical(np.where(np.arange(n_cells) % 2 == 0, "b0", "b1")),
            "type": pd.Categorical(labels),
            "label": pd.Categorical(observed),
        },
        index=pd.RangeIndex(n_cells).astype(str),
    )
    var = pd.DataFrame(index=[f"gene_{i}" for i in range(n_genes)])
    return AnnData(X=sparse.csr_matrix(counts), obs=obs, var=var)


def run(library: str, adata: AnnData, scvi_epochs: int, epochs: int, seed: int) -> dict:
    lib = __import__(library)
    lib.settings.seed = seed
    adata = adata.copy()
    lib.model.SCVI.setup_anndata(adata, batch_key="batch", labels_key="label")
    vae = lib.model.SCVI(adata, n_latent=10)
    vae.train(max_epochs=scvi_epochs, enable_progress_bar=False)
    model = lib.model.SCANVI.from_scvi_model(vae, unlabeled_category=UNLABELED)
    load = os.getloadavg()[0]
    start = time.perf_counter()
    model.train(max_epochs=epochs, check_val_every_n_epoch=1, enable_progress_bar=False)
    seconds = time.perf_counter() - start
    hidden = (adata.obs["label"] == UNLABELED).to_numpy()
    predicted = np.asarray(model.predict())
    truth = adata.obs["type"].astype(str).to_numpy()
    elbo = model.history["elbo_validation"].to_numpy().ravel()[-1]
    return {
        "cells_per_s": len(model.train_indices) * epochs / seconds,
        "seconds": seconds,
        "load": load,
        "elbo_validation": float(elbo),
        "accuracy_unlabelled": float((predicted[hidden] == truth[hidden]).mean()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", type=int, default=20_000)
    parser.add_argument("--genes", type=int, default=2_000)
    parser.add_argument("--types", type=int, default=6)
    parser.add_argument("--scvi-epochs", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--informative", type=float, default=0.1, help="share of type genes")
    parser.add_argument("--effect-sigma", type=float, default=0.6)
    parser.add_argument("--base-mean", type=float, default=-2.5)
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    adata = typed_counts(
        args.cells,
        args.genes,
        args.types,
        args.seed,
        informative=args.informative,
        effect_sigma=args.effect_sigma,
        base_mean=args.base_mean,
    )
    density = adata.X.nnz / (adata.n_obs * adata.n_vars)
    results = {}
    for library in ("scvi_rs", "scvi"):
        results[library] = run(library, adata, args.scvi_epochs, args.epochs, args.seed)
    print(
        f"{args.cells} cells x {args.genes} genes ({density:.1%} non-zero), {args.types} types "
        f"({args.informative:.0%} of the genes informative, effect sigma {args.effect_sigma}), SCVI "
        f"{args.scvi_epochs} epochs then SCANVI {args.epochs}, seed {args.seed}, torch "
        f"{torch.__version__}, {torch.get_num_threads()} threads"
    )
    print(
        "| library | SCANVI cells/s | train s | validation ELBO | accuracy (unlabelled) "
        "| load at start |"
    )
    print("|---|---|---|---|---|---|")
    for library, r in results.items():
        print(
            f"| {library} | {r['cells_per_s']:,.0f} | {r['seconds']:.1f} | "
            f"{r['elbo_validation']:.2f} | {r['accuracy_unlabelled']:.4f} | {r['load']:.2f} |"
        )
    ours, ref = results["scvi_rs"], results["scvi"]
    print(
        f"speed {ours['cells_per_s'] / ref['cells_per_s']:.2f}x; ELBO differs by "
        f"{abs(ours['elbo_validation'] / ref['elbo_validation'] - 1):.2%}; accuracy "
        f"{ours['accuracy_unlabelled'] - ref['accuracy_unlabelled']:+.4f}"
    )


if __name__ == "__main__":
    main()
