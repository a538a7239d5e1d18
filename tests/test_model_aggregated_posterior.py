"""VAEMixin.get_aggregated_posterior and differential_abundance."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch

import scvi_rs
from scvi_rs.model import SCVI


@pytest.fixture(scope="module")
def model():
    scvi_rs.settings.seed = 0
    adata = scvi_rs.data.synthetic_iid()
    adata.obs["sample"] = np.repeat(["s0", "s1", "s2", "s3"], 100)
    SCVI.setup_anndata(adata, batch_key="batch")
    model = SCVI(adata, n_latent=4, n_hidden=16)
    model.train(max_epochs=2, enable_progress_bar=False)
    return model


def _mixture_log_prob(z, means, variances, dof):
    """log of the equal-weight mixture of per-cell components (independent dimensions)."""
    loc, scale = torch.as_tensor(means), torch.as_tensor(variances).sqrt()
    if dof is None:
        comp = torch.distributions.Normal(loc, scale)
    else:
        comp = torch.distributions.StudentT(dof, loc, scale)
    log_p = comp.log_prob(torch.as_tensor(z)[:, None, :]).sum(-1)  # (n_query, n_cells)
    return torch.logsumexp(log_p, dim=1) - math.log(loc.shape[0])


@pytest.mark.parametrize("dof", [3.0, None])
def test_aggregated_posterior_is_the_mixture_of_cell_posteriors(model, dof):
    cells = np.arange(0, 400, 7)
    posterior = model.get_aggregated_posterior(indices=cells, dof=dof)
    assert isinstance(posterior, torch.distributions.MixtureSameFamily)
    assert posterior.batch_shape == () and posterior.event_shape == (4,)
    means, variances = model.get_latent_representation(indices=cells, return_dist=True)
    z = model.get_latent_representation()[:25]
    torch.testing.assert_close(
        posterior.log_prob(torch.as_tensor(z)),
        _mixture_log_prob(z, means, variances, dof),
        rtol=1e-4,
        atol=1e-4,
    )


def test_differential_abundance_frame(model):
    adata = model.adata
    frame = model.differential_abundance(sample_key="sample", batch_size=64)
    assert isinstance(frame, pd.DataFrame)
    assert list(frame.columns) == ["s0", "s1", "s2", "s3"]
    assert list(frame.index) == list(adata.obs_names)
    assert frame.equals(adata.obsm["da_log_probs"])
    z = model.get_latent_representation()
    means, variances = model.get_latent_representation(
        indices=np.arange(100, 200), return_dist=True
    )
    expected = _mixture_log_prob(z, means, variances, None).numpy()
    np.testing.assert_allclose(frame["s1"].to_numpy(), expected, rtol=1e-4, atol=1e-3)


def test_differential_abundance_subsamples_and_checks_the_key(model):
    frame = model.differential_abundance(sample_key="sample", num_cells_posterior=10, dof=3.0)
    assert frame.shape == (400, 4) and np.isfinite(frame.to_numpy()).all()
    with pytest.raises(KeyError, match="not_a_column"):
        model.differential_abundance(sample_key="not_a_column")
