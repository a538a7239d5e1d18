"""Batch embeddings: nn.Embedding loading, VAE(batch_representation="embedding"), SCVI queries.

Also the return types of the VAEMixin summary queries (ELBO, marginal likelihood,
reconstruction error) and the aggregated posterior over a set of cells.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import scvi_rs
from scvi_rs import REGISTRY_KEYS
from scvi_rs.model import SCVI
from scvi_rs.module import VAE
from scvi_rs.nn import Embedding

N_GENES, N_BATCH, N_LATENT, EMB_DIM = 30, 3, 4, 6


# -- scvi_rs.nn.Embedding ----------------------------------------------------------------------
def test_embedding_adopts_the_row_count_of_a_loaded_state_dict():
    torch.manual_seed(0)
    extended = Embedding.extend(Embedding(10, 5), init=2)
    fresh = Embedding(10, 5)
    fresh.load_state_dict(extended.state_dict())
    assert fresh.num_embeddings == 12 and fresh.embedding_dim == 5
    assert fresh.weight.shape == (12, 5) and fresh.weight.requires_grad
    torch.testing.assert_close(fresh.weight, extended.weight)
    torch.testing.assert_close(fresh(torch.tensor([11])), extended.weight[11:12])


def test_embedding_load_with_the_same_shape_keeps_the_parameter():
    emb = Embedding(4, 3)
    parameter = emb.weight
    emb.load_state_dict({"weight": torch.ones(4, 3)})
    assert emb.weight is parameter
    torch.testing.assert_close(emb.weight, torch.ones(4, 3))


def test_nested_embeddings_each_load_their_own_weight():
    # the saved weight is looked up under each embedding's own prefix
    source = nn.ModuleDict({"a": Embedding(2, 3), "b": Embedding(7, 3)})
    target = nn.ModuleDict({"a": Embedding(2, 3), "b": Embedding(5, 3)})
    target.load_state_dict(source.state_dict())
    assert target["a"].weight.shape == (2, 3) and target["b"].weight.shape == (7, 3)
    torch.testing.assert_close(target["b"].weight, source["b"].weight)


def test_embedding_load_reports_a_missing_weight():
    with pytest.raises(RuntimeError, match="Missing key"):
        Embedding(3, 2).load_state_dict({})


# -- VAE(batch_representation="embedding") -----------------------------------------------------
def _vae(**kwargs) -> VAE:
    torch.manual_seed(0)
    return VAE(
        N_GENES,
        n_batch=N_BATCH,
        n_latent=N_LATENT,
        n_hidden=16,
        batch_representation="embedding",
        batch_embedding_kwargs={"embedding_dim": EMB_DIM},
        **kwargs,
    )


def _tensors(n: int = 8) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return {
        REGISTRY_KEYS.X_KEY: torch.poisson(torch.full((n, N_GENES), 3.0), generator=gen) + 1,
        REGISTRY_KEYS.BATCH_KEY: torch.arange(n).remainder(N_BATCH).reshape(-1, 1).float(),
        REGISTRY_KEYS.LABELS_KEY: torch.zeros(n, 1),
    }


def test_vae_embedding_parameters_and_layer_widths():
    module = _vae()
    state = module.state_dict()
    assert state["_embeddings_dict.batch.weight"].shape == (N_BATCH, EMB_DIM)
    # decoder reads z and the embedding; no one-hot batch anywhere
    first_decoder_layer = module.decoder.px_decoder.fc_layers[0][0]
    assert first_decoder_layer.in_features == N_LATENT + EMB_DIM
    assert module.z_encoder.encoder.fc_layers[0][0].in_features == N_GENES
    encoded = _vae(encode_covariates=True)
    assert encoded.z_encoder.encoder.fc_layers[0][0].in_features == N_GENES + EMB_DIM
    assert encoded.l_encoder.encoder.fc_layers[0][0].in_features == N_GENES + EMB_DIM


@pytest.mark.parametrize("encode_covariates", [False, True])
def test_vae_uses_the_embedding_where_the_reference_does(encode_covariates):
    module = _vae(encode_covariates=encode_covariates).eval()
    tensors = _tensors()
    before_inf, before_gen = module(tensors, compute_loss=False)
    with torch.no_grad():
        module.get_embedding(REGISTRY_KEYS.BATCH_KEY).weight.add_(1.0)
    after_inf, after_gen = module(tensors, compute_loss=False)
    qz_changed = not torch.allclose(before_inf["qz"].loc, after_inf["qz"].loc)
    assert qz_changed == encode_covariates
    # the decoder always sees the embedding (z is sampled, so compare from the same z)
    gen_inputs = module._get_generative_input(tensors, before_inf)
    scale_after = module.generative(**gen_inputs)["px"].scale
    assert not torch.allclose(before_gen["px"].scale, scale_after)
    assert not torch.allclose(before_gen["px"].scale, after_gen["px"].scale)


def test_vae_embedding_trains_and_samples_several_posteriors():
    module = _vae(
        use_observed_lib_size=False,
        library_log_means=np.zeros((1, N_BATCH)),
        library_log_vars=np.ones((1, N_BATCH)),
    )
    tensors = _tensors()
    _, _, loss = module(tensors)
    loss.loss.backward()
    assert module.get_embedding(REGISTRY_KEYS.BATCH_KEY).weight.grad.abs().sum() > 0
    module.eval()
    samples = module.sample(tensors, n_samples=3)
    assert samples.shape == (8, N_GENES, 3)


def test_compute_embedding_takes_column_float_codes():
    module = _vae()
    codes = torch.tensor([[2.0], [0.0]])
    out = module.compute_embedding(REGISTRY_KEYS.BATCH_KEY, codes)
    weight = module.get_embedding(REGISTRY_KEYS.BATCH_KEY).weight
    torch.testing.assert_close(out, weight[[2, 0]])


def test_vae_rejects_an_unknown_batch_representation():
    with pytest.raises(ValueError, match="batch_representation"):
        VAE(N_GENES, n_batch=N_BATCH, batch_representation="bogus")


# -- SCVI models -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def adata():
    scvi_rs.settings.seed = 0
    data = scvi_rs.data.synthetic_iid(batch_size=60, n_genes=N_GENES, n_batches=N_BATCH)
    SCVI.setup_anndata(data, batch_key="batch")
    return data


@pytest.fixture(scope="module")
def embedding_model(adata):
    model = SCVI(
        adata,
        n_hidden=16,
        n_latent=N_LATENT,
        batch_representation="embedding",
        batch_embedding_kwargs={"embedding_dim": EMB_DIM},
    )
    model.train(max_epochs=1, enable_progress_bar=False)
    return model


def test_batch_representation_is_the_embedding_row_of_each_cell(embedding_model, adata):
    rep = embedding_model.get_batch_representation()
    assert isinstance(rep, np.ndarray) and rep.shape == (adata.n_obs, EMB_DIM)
    weight = embedding_model.module.get_embedding(REGISTRY_KEYS.BATCH_KEY).weight
    codes = adata.obs["batch"].cat.codes.to_numpy()
    np.testing.assert_allclose(rep, weight.detach().cpu().numpy()[codes], rtol=0, atol=0)
    subset = embedding_model.get_batch_representation(indices=[5, 0], batch_size=1)
    np.testing.assert_allclose(subset, rep[[5, 0]])


def test_batch_embedding_survives_save_and_load(embedding_model, adata, tmp_path):
    embedding_model.save(tmp_path / "model", overwrite=True)
    state = torch.load(tmp_path / "model" / "model.pt", weights_only=False)
    assert "_embeddings_dict.batch.weight" in state["model_state_dict"]
    loaded = SCVI.load(tmp_path / "model", adata)
    np.testing.assert_allclose(
        loaded.get_batch_representation(), embedding_model.get_batch_representation()
    )


def test_missing_batch_embedding_is_a_key_error(adata):
    model = SCVI(adata, n_hidden=16, batch_representation="embedding")
    model.module.remove_embedding(REGISTRY_KEYS.BATCH_KEY)
    with pytest.raises(KeyError, match="batch_representation='embedding'"):
        model.get_batch_representation()
    with pytest.raises(KeyError, match="Embedding labels not found"):
        model.module.remove_embedding(REGISTRY_KEYS.LABELS_KEY)


# -- VAEMixin summary queries ------------------------------------------------------------------
def test_elbo_and_reconstruction_error_are_tensors(embedding_model, adata):
    torch.manual_seed(3)
    elbo = embedding_model.get_elbo()
    assert isinstance(elbo, torch.Tensor) and elbo.ndim == 0
    torch.manual_seed(3)
    per_cell = embedding_model.get_elbo(return_mean=False)
    assert per_cell.shape == (adata.n_obs,)
    torch.testing.assert_close(per_cell.mean(), elbo)
    recon = embedding_model.get_reconstruction_error()
    assert recon["reconstruction_loss"].ndim == 0 and recon["reconstruction_loss"] > 0
    per_cell_recon = embedding_model.get_reconstruction_error(return_mean=False)
    assert per_cell_recon["reconstruction_loss"].shape == (adata.n_obs,)


def test_marginal_ll_mean_is_a_numpy_scalar(embedding_model, adata):
    mean = embedding_model.get_marginal_ll(n_mc_samples=3, batch_size=50)
    assert isinstance(mean, np.float64) and mean.ndim == 0 and np.isfinite(mean)
    per_cell = embedding_model.get_marginal_ll(n_mc_samples=3, return_mean=False)
    assert isinstance(per_cell, torch.Tensor) and per_cell.shape == (adata.n_obs,)


def test_aggregated_posterior_over_no_indices_uses_every_cell(embedding_model, adata):
    everyone = embedding_model.get_aggregated_posterior(dof=None)
    empty = embedding_model.get_aggregated_posterior(indices=np.array([]), dof=None)
    listed = embedding_model.get_aggregated_posterior(indices=[], dof=None)
    assert everyone.event_shape == (N_LATENT,) and everyone.batch_shape == ()
    z = torch.as_tensor(embedding_model.get_latent_representation()[:10])
    torch.testing.assert_close(empty.log_prob(z), everyone.log_prob(z))
    torch.testing.assert_close(listed.log_prob(z), everyone.log_prob(z))
    assert everyone.mixture_distribution.probs.shape == (adata.n_obs,)
