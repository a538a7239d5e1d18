"""scvi_rs.module.VAE: every option builds and trains, state-dict layout, loss terms, no syncs."""

from __future__ import annotations

import contextlib
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Normal

from scvi_rs import REGISTRY_KEYS
from scvi_rs.distributions import NegativeBinomial, Poisson, ZeroInflatedNegativeBinomial
from scvi_rs.distributions import Normal as NormalLikelihood
from scvi_rs.distributions import _negative_binomial as nb_module
from scvi_rs.module import VAE
from scvi_rs.module.base import LossOutput

N_CELLS, N_GENES, N_BATCH, N_LABELS = 24, 12, 3, 2
N_CONT, CATS = 2, [2, 3]
FIXTURE = Path(__file__).parent / "data" / "vae_state_dict_keys.json"


def _tensors(seed: int = 0, n: int = N_CELLS) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    rates = torch.rand(n, N_GENES, generator=g) * 8
    x = torch.poisson(rates, generator=g)
    x[:, 0] += 1  # no empty cells: log library size stays finite
    return {
        REGISTRY_KEYS.X_KEY: x,
        REGISTRY_KEYS.BATCH_KEY: torch.randint(0, N_BATCH, (n, 1), generator=g),
        REGISTRY_KEYS.LABELS_KEY: torch.randint(0, N_LABELS, (n, 1), generator=g),
        REGISTRY_KEYS.CONT_COVS_KEY: torch.randn(n, N_CONT, generator=g),
        REGISTRY_KEYS.CAT_COVS_KEY: torch.stack(
            [torch.randint(0, c, (n,), generator=g) for c in CATS], dim=1
        ),
        REGISTRY_KEYS.SIZE_FACTOR_KEY: x.sum(1, keepdim=True) / 50.0,
    }


def _vae(**overrides) -> VAE:
    kwargs = {
        "n_input": N_GENES,
        "n_batch": N_BATCH,
        "n_labels": N_LABELS,
        "n_hidden": 8,
        "n_latent": 3,
        "n_continuous_cov": N_CONT,
        "n_cats_per_cov": CATS,
        "library_log_means": np.full((1, N_BATCH), 3.5),
        "library_log_vars": np.full((1, N_BATCH), 0.5),
    }
    kwargs.update(overrides)
    return VAE(**kwargs)


# One entry per option value (others at their defaults) plus a few mixtures.
_SINGLE_OPTIONS = {
    "n_layers": [1, 2],
    "dropout_rate": [0.0, 0.3],
    "dispersion": ["gene", "gene-batch", "gene-label", "gene-cell"],
    "log_variational": [True, False],
    "gene_likelihood": ["zinb", "nb", "poisson", "normal"],
    "latent_distribution": ["normal", "ln"],
    "encode_covariates": [True, False],
    "deeply_inject_covariates": [True, False],
    "batch_representation": ["one-hot", "embedding"],
    "use_batch_norm": ["encoder", "decoder", "none", "both"],
    "use_layer_norm": ["encoder", "decoder", "none", "both"],
    "use_size_factor_key": [True, False],
    "use_observed_lib_size": [True, False],
    "extra_payload_autotune": [True, False],
    "var_activation": [None, torch.nn.functional.softplus],
}
_MIXED = [
    {
        "n_cats_per_cov": tuple(CATS),
        "n_layers": 2,
        "encode_covariates": True,
        "deeply_inject_covariates": False,
        "use_observed_lib_size": False,
        "dispersion": "gene-batch",
        "use_layer_norm": "both",
        "use_batch_norm": "none",
    },
    {
        "batch_representation": "embedding",
        "encode_covariates": True,
        "dispersion": "gene-cell",
        "gene_likelihood": "nb",
        "use_observed_lib_size": False,
        "latent_distribution": "ln",
    },
    {
        "batch_representation": "embedding",
        "batch_embedding_kwargs": {"embedding_dim": 3},
        "n_layers": 3,
        "gene_likelihood": "poisson",
        "dispersion": "gene-label",
        "use_size_factor_key": True,
    },
    {
        "n_cats_per_cov": None,
        "n_continuous_cov": 0,
        "n_batch": 0,
        "dispersion": "gene",
        "encode_covariates": True,
    },
    {
        "extra_encoder_kwargs": {"activation_fn": torch.nn.LeakyReLU, "var_eps": 1e-3},
        "extra_decoder_kwargs": {"activation_fn": torch.nn.ELU},
        "gene_likelihood": "normal",
        "dispersion": "gene-cell",
    },
]
_CONFIGS = [{k: v} for k, values in _SINGLE_OPTIONS.items() for v in values] + _MIXED


def _config_id(config: dict) -> str:
    return ",".join(f"{k}={getattr(v, '__name__', v)}" for k, v in config.items())


def _inputs_for(config: dict) -> dict[str, torch.Tensor]:
    tensors = _tensors()
    if config.get("n_batch") == 0:
        tensors[REGISTRY_KEYS.BATCH_KEY] = torch.zeros(N_CELLS, 1, dtype=torch.long)
    if config.get("n_cats_per_cov", CATS) is None:
        del tensors[REGISTRY_KEYS.CAT_COVS_KEY]
    if config.get("n_continuous_cov", N_CONT) == 0:
        del tensors[REGISTRY_KEYS.CONT_COVS_KEY]
    return tensors


@pytest.mark.parametrize("config", _CONFIGS, ids=[_config_id(c) for c in _CONFIGS])
def test_every_option_trains_with_finite_values(config):
    torch.manual_seed(0)
    module = _vae(**config)
    tensors = _inputs_for(config)
    inference_outputs, generative_outputs, losses = module(tensors)
    assert isinstance(losses, LossOutput)
    assert losses.loss.ndim == 0
    assert torch.isfinite(losses.loss)
    assert losses.reconstruction_loss["reconstruction_loss"].shape == (N_CELLS,)
    assert set(losses.kl_local) == {"kl_divergence_l", "kl_divergence_z"}
    for value in losses.kl_local.values():
        assert value.shape == (N_CELLS,)
        assert torch.isfinite(value).all()
    assert losses.n_obs_minibatch == N_CELLS
    losses.loss.backward()
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    assert grads
    assert all(torch.isfinite(g).all() for g in grads)
    if config.get("extra_payload_autotune"):
        assert set(losses.extra_metrics) == {"z", "batch", "labels"}
    else:
        assert losses.extra_metrics == {}

    # Evaluation mode with several posterior samples.
    module.eval()
    with torch.no_grad():
        inference_outputs, generative_outputs = module(
            tensors, inference_kwargs={"n_samples": 2}, compute_loss=False
        )
    assert inference_outputs["z"].shape == (2, N_CELLS, 3)
    assert inference_outputs["library"].shape == (2, N_CELLS, 1)
    assert torch.isfinite(generative_outputs["px"].mean).all()


# ----------------------------------------------------------------------------------------
# state dict layout
# ----------------------------------------------------------------------------------------
def _fixture_configs():
    return json.loads(FIXTURE.read_text())["configs"]


@pytest.mark.parametrize("entry", _fixture_configs(), ids=lambda e: e["name"])
def test_state_dict_keys_and_shapes_match_reference_layout(entry):
    kwargs = dict(entry["kwargs"])
    if kwargs.get("use_observed_lib_size") is False:
        kwargs["library_log_means"] = np.zeros((1, kwargs["n_batch"]))
        kwargs["library_log_vars"] = np.ones((1, kwargs["n_batch"]))
    module = VAE(**kwargs)
    actual = [[k, list(v.shape)] for k, v in module.state_dict().items()]
    assert actual == entry["state_dict"]
    # The same arguments give loadable state dicts.
    VAE(**kwargs).load_state_dict(module.state_dict(), strict=True)


def test_library_buffers_and_dispersion_parameter():
    module = _vae(use_observed_lib_size=False)
    buffers = dict(module.named_buffers())
    torch.testing.assert_close(buffers["library_log_means"], torch.full((1, N_BATCH), 3.5))
    assert buffers["library_log_vars"].dtype == torch.float32
    assert "library_log_means" not in dict(_vae().named_buffers())
    assert not hasattr(_vae(dispersion="gene-cell"), "px_r")
    assert _vae(dispersion="gene-label").px_r.shape == (N_GENES, N_LABELS)
    # use_size_factor_key forces the observed library size and a softplus scale
    sf = _vae(use_size_factor_key=True, use_observed_lib_size=False)
    assert sf.use_observed_lib_size
    assert isinstance(sf.decoder.px_scale_decoder[1], torch.nn.Softplus)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (
            {"use_observed_lib_size": False, "library_log_means": None},
            "If not using observed_lib_size, must provide library_log_means and library_log_vars.",
        ),
        (
            {"dispersion": "cell"},
            "`dispersion` must be one of 'gene', 'gene-batch', 'gene-label', 'gene-cell'.",
        ),
        (
            {"batch_representation": "dense"},
            "`batch_representation` must be one of 'one-hot', 'embedding'.",
        ),
    ],
)
def test_constructor_errors(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        _vae(**kwargs)


# ----------------------------------------------------------------------------------------
# inference / generative / loss semantics
# ----------------------------------------------------------------------------------------
def test_inference_outputs():
    torch.manual_seed(0)
    module = _vae().eval()
    tensors = _tensors()
    out = module.inference(**module._get_inference_input(tensors))
    assert list(out) == ["z", "qz", "ql", "library", "qz_m", "qz_v"]
    assert isinstance(out["qz"], Normal)
    assert out["ql"] is None
    torch.testing.assert_close(out["library"], torch.log(tensors["X"].sum(1, keepdim=True)))
    torch.testing.assert_close(out["qz_m"], out["qz"].loc)
    torch.testing.assert_close(out["qz_v"], out["qz"].scale ** 2)
    assert out["qz_m"].shape == (N_CELLS, 3)

    latent = _vae(use_observed_lib_size=False).eval()
    out = latent.inference(**latent._get_inference_input(tensors))
    assert isinstance(out["ql"], Normal)
    assert out["library"].shape == (N_CELLS, 1)


def test_inference_input_keys():
    module = _vae()
    tensors = _tensors()
    inputs = module._get_inference_input(tensors)
    assert list(inputs) == ["x", "batch_index", "cont_covs", "cat_covs"]
    del tensors[REGISTRY_KEYS.CONT_COVS_KEY]
    assert module._get_inference_input(tensors)["cont_covs"] is None
    gen_in = module._get_generative_input(_tensors(), {"z": 1, "library": 2})
    assert list(gen_in) == [
        "z",
        "library",
        "batch_index",
        "y",
        "cont_covs",
        "cat_covs",
        "size_factor",
    ]
    torch.testing.assert_close(
        gen_in["size_factor"], torch.log(_tensors()[REGISTRY_KEYS.SIZE_FACTOR_KEY])
    )


@pytest.mark.parametrize(
    ("likelihood", "cls"),
    [
        ("zinb", ZeroInflatedNegativeBinomial),
        ("nb", NegativeBinomial),
        ("poisson", Poisson),
        ("normal", NormalLikelihood),
    ],
)
def test_generative_likelihoods(likelihood, cls):
    torch.manual_seed(0)
    module = _vae(gene_likelihood=likelihood).eval()
    tensors = _tensors()
    _, gen = module(tensors, compute_loss=False)
    px = gen["px"]
    assert type(px) is cls
    scale = px.get_normalized("scale")
    torch.testing.assert_close(scale.sum(-1), torch.ones(N_CELLS))
    library = torch.log(tensors["X"].sum(1, keepdim=True))
    torch.testing.assert_close(px.get_normalized("mu"), torch.exp(library) * scale)
    assert gen["pl"] is None
    assert isinstance(gen["pz"], Normal)
    torch.testing.assert_close(gen["pz"].loc, torch.zeros(N_CELLS, 3))


def test_dispersion_lookup_by_batch_and_label():
    torch.manual_seed(0)
    tensors = _tensors()
    for dispersion, key in (("gene-batch", "batch"), ("gene-label", "labels")):
        module = _vae(dispersion=dispersion, gene_likelihood="nb").eval()
        _, gen = module(tensors, compute_loss=False)
        codes = tensors[key][:, 0]
        torch.testing.assert_close(gen["px"].theta, torch.exp(module.px_r.T[codes]))


def test_size_factor_scales_rate():
    torch.manual_seed(0)
    module = _vae(use_size_factor_key=True, gene_likelihood="nb").eval()
    tensors = _tensors()
    _, gen = module(tensors, compute_loss=False)
    px = gen["px"]
    torch.testing.assert_close(px.mu, tensors[REGISTRY_KEYS.SIZE_FACTOR_KEY] * px.scale)


def test_transform_batch():
    torch.manual_seed(0)
    module = _vae(dispersion="gene-batch", gene_likelihood="nb").eval()
    tensors = _tensors()
    inf = module.inference(**module._get_inference_input(tensors))
    gen_in = module._get_generative_input(tensors, inf)
    transformed = module.generative(**gen_in, transform_batch=1)
    gen_in["batch_index"] = torch.ones_like(gen_in["batch_index"])
    direct = module.generative(**gen_in)
    torch.testing.assert_close(transformed["px"].mu, direct["px"].mu)
    torch.testing.assert_close(transformed["px"].theta, direct["px"].theta)


@pytest.mark.parametrize("observed", [True, False])
def test_loss_terms_match_their_definitions(observed):
    torch.manual_seed(0)
    module = _vae(use_observed_lib_size=observed)
    tensors = _tensors()
    inf, gen, losses = module(tensors, loss_kwargs={"kl_weight": 0.25})
    qz = inf["qz"]
    kl_z = (0.5 * (qz.scale**2 + qz.loc**2 - 1) - torch.log(qz.scale)).sum(-1)
    torch.testing.assert_close(losses.kl_local["kl_divergence_z"], kl_z)
    if observed:
        kl_l = torch.zeros(N_CELLS)
    else:
        ql, pl = inf["ql"], gen["pl"]
        # prior picked per cell from the batch buffers
        torch.testing.assert_close(pl.loc, torch.full((N_CELLS, 1), 3.5))
        torch.testing.assert_close(pl.scale, torch.full((N_CELLS, 1), math.sqrt(0.5)))
        kl_l = (
            torch.log(pl.scale / ql.scale)
            + (ql.scale**2 + (ql.loc - pl.loc) ** 2) / (2 * pl.scale**2)
            - 0.5
        ).sum(1)
    torch.testing.assert_close(losses.kl_local["kl_divergence_l"], kl_l)
    rec = -gen["px"].log_prob(tensors["X"]).sum(-1)
    torch.testing.assert_close(losses.reconstruction_loss["reconstruction_loss"], rec)
    # the warm-up weight applies to the KL of z only
    torch.testing.assert_close(losses.loss, torch.mean(rec + 0.25 * kl_z + kl_l))
    assert losses.kl_global_sum == 0
    torch.testing.assert_close(losses.reconstruction_loss_sum, rec.sum())
    torch.testing.assert_close(losses.kl_local_sum, (kl_z + kl_l).sum())


def test_loss_decreases_with_adam():
    torch.manual_seed(0)
    tensors = _tensors(seed=3, n=64)
    module = _vae()
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    history = []
    for _ in range(40):
        optimizer.zero_grad()
        _, _, losses = module(tensors)
        losses.loss.backward()
        optimizer.step()
        history.append(losses.loss.item())
    assert np.mean(history[-5:]) < 0.9 * np.mean(history[:5])


# ----------------------------------------------------------------------------------------
# sampling and marginal likelihood
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("likelihood", ["zinb", "nb", "poisson"])
def test_sample_shapes(likelihood):
    torch.manual_seed(0)
    module = _vae(gene_likelihood=likelihood).eval()
    tensors = _tensors()
    one = module.sample(tensors)
    assert one.shape == (N_CELLS, N_GENES)
    assert one.device.type == "cpu"
    assert (one >= 0).all()
    assert torch.equal(one, one.round())
    several = module.sample(tensors, n_samples=4, max_poisson_rate=50.0)
    assert several.shape == (N_CELLS, N_GENES, 4)


@pytest.mark.parametrize("observed", [True, False])
def test_marginal_ll(observed):
    torch.manual_seed(0)
    module = _vae(use_observed_lib_size=observed).eval()
    tensors = _tensors()
    per_cell = module.marginal_ll(tensors, n_mc_samples=6, n_mc_samples_per_pass=3)
    assert per_cell.shape == (N_CELLS,)
    assert per_cell.device.type == "cpu"
    assert torch.isfinite(per_cell).all()
    mean = module.marginal_ll(tensors, n_mc_samples=2, return_mean=True)
    assert isinstance(mean, float)
    with pytest.warns(RuntimeWarning, match="Number of chunks is larger"):
        module.marginal_ll(tensors, n_mc_samples=2, n_mc_samples_per_pass=5)
    # The importance-sampled bound is tighter than the ELBO (on average over cells).
    with torch.no_grad():
        _, _, losses = module(tensors)
    elbo = -(losses.reconstruction_loss["reconstruction_loss"] + losses.kl_local_sum / N_CELLS)
    many = module.marginal_ll(tensors, n_mc_samples=200, n_mc_samples_per_pass=50)
    assert many.mean() > elbo.mean() - 1.0


# ----------------------------------------------------------------------------------------
# minified mode
# ----------------------------------------------------------------------------------------
def test_minified_mode_uses_cached_posteriors():
    torch.manual_seed(0)
    module = _vae().eval()
    module.minified_data_type = "latent_posterior_parameters"
    tensors = _tensors()
    qzm = torch.randn(N_CELLS, 3)
    qzv = torch.rand(N_CELLS, 3) + 0.1
    lib = tensors["X"].sum(1, keepdim=True)
    tensors.update(
        {
            REGISTRY_KEYS.LATENT_QZM_KEY: qzm,
            REGISTRY_KEYS.LATENT_QZV_KEY: qzv,
            REGISTRY_KEYS.OBSERVED_LIB_SIZE: lib,
        }
    )
    inputs = module._get_inference_input(tensors)
    assert set(inputs) == {"qzm", "qzv", "observed_lib_size"}
    inf, _ = module(tensors, compute_loss=False)
    torch.testing.assert_close(inf["qz"].loc, qzm)
    torch.testing.assert_close(inf["qz_v"], qzv)
    torch.testing.assert_close(inf["library"], torch.log(lib))
    inf, _ = module(tensors, compute_loss=False, inference_kwargs={"n_samples": 3})
    assert inf["z"].shape == (3, N_CELLS, 3)
    # a full forward pass encodes the counts instead
    inf, _ = module(
        tensors, compute_loss=False, get_inference_input_kwargs={"full_forward_pass": True}
    )
    assert not torch.allclose(inf["qz"].loc, qzm)
    with pytest.raises(ValueError, match="does not support minified data"):
        module(tensors)
    with pytest.raises(ValueError, match="does not support minified data"):
        module.marginal_ll(tensors, n_mc_samples=2)


# ----------------------------------------------------------------------------------------
# no host synchronisation inside forward
# ----------------------------------------------------------------------------------------
_SYNCING_METHODS = (
    "item",
    "cpu",
    "tolist",
    "numpy",
    "nonzero",
    "__bool__",
    "__float__",
    "__int__",
)


@contextlib.contextmanager
def _forbid_host_reads():
    originals = {name: getattr(torch.Tensor, name) for name in _SYNCING_METHODS}

    def _make(name):
        def _raise(self, *args, **kwargs):
            raise AssertionError(f"host synchronisation: Tensor.{name} called inside forward")

        return _raise

    try:
        for name in _SYNCING_METHODS:
            setattr(torch.Tensor, name, _make(name))
        yield
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def test_forbid_host_reads_guard_works():
    with _forbid_host_reads(), pytest.raises(AssertionError, match=r"Tensor\.item"):
        torch.ones(1).item()
    with _forbid_host_reads(), pytest.raises(AssertionError, match=r"Tensor\.__bool__"):
        bool(torch.ones(1) > 0)
    assert torch.ones(1).item() == 1.0


_SYNC_CONFIGS = [
    {},
    {"use_observed_lib_size": False, "encode_covariates": True, "dispersion": "gene-batch"},
    {"batch_representation": "embedding", "encode_covariates": True, "gene_likelihood": "nb"},
    {"gene_likelihood": "poisson", "dispersion": "gene-label", "latent_distribution": "ln"},
    {"gene_likelihood": "normal", "dispersion": "gene-cell", "use_size_factor_key": True},
    {"n_layers": 2, "use_layer_norm": "both", "extra_payload_autotune": True},
]


@pytest.mark.parametrize(
    "config", _SYNC_CONFIGS, ids=[_config_id(c) or "default" for c in _SYNC_CONFIGS]
)
def test_forward_and_backward_never_read_tensors_on_host(config, monkeypatch):
    # The CPU-only sparse lgamma path indexes the non-zero counts; accelerators take the
    # dense path, which is what this test checks.
    monkeypatch.setattr(nb_module, "_sparse_lgamma_applies", lambda *args: False)
    torch.manual_seed(0)
    module = _vae(**config)
    tensors = _tensors()
    with _forbid_host_reads():
        _, _, losses = module(tensors, loss_kwargs={"kl_weight": torch.tensor(0.5)})
        losses.loss.backward()
    assert torch.isfinite(losses.loss)
    module.eval()
    with _forbid_host_reads(), torch.no_grad():
        module(tensors, inference_kwargs={"n_samples": 2})


# ----------------------------------------------------------------------------------------
# CUDA (runs only where a GPU is present)
# ----------------------------------------------------------------------------------------
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@cuda
def test_cuda_forward_has_no_synchronising_ops():
    torch.manual_seed(0)
    module = _vae(use_observed_lib_size=False).to("cuda")
    tensors = {k: v.to("cuda") for k, v in _tensors().items()}
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        _, _, losses = module(tensors)
        losses.loss.backward()
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert module.device.type == "cuda"
    assert torch.isfinite(losses.loss).item()


@cuda
def test_cuda_graph_captures_a_training_step():
    torch.manual_seed(0)
    module = _vae().to("cuda")
    tensors = {k: v.to("cuda") for k, v in _tensors(n=64).items()}
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2, capturable=True)

    def step():
        optimizer.zero_grad(set_to_none=False)
        _, _, losses = module(tensors)
        losses.loss.backward()
        optimizer.step()
        return losses.loss

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = step()
    values = []
    for _ in range(30):
        graph.replay()
        values.append(static_loss.item())
    assert all(math.isfinite(v) for v in values)
    assert np.mean(values[-5:]) < np.mean(values[:5])


@pytest.mark.parametrize(
    "config",
    [{}, {"use_observed_lib_size": False, "encode_covariates": True, "gene_likelihood": "nb"}],
    ids=["default", "latent_library"],
)
def test_training_step_traces_as_one_graph(config):
    # fullgraph=True fails on any graph break; the eager backend keeps this fast on CPU.
    torch.manual_seed(0)
    module = _vae(**config)
    tensors = _tensors()

    def step(batch):
        _, _, losses = module(batch, loss_kwargs={"kl_weight": 0.5})
        return losses.loss, losses.reconstruction_loss_sum, losses.kl_local_sum

    torch._dynamo.reset()
    compiled = torch.compile(step, backend="eager", fullgraph=True)
    loss, rec_sum, kl_sum = compiled(tensors)
    loss.backward()
    assert torch.isfinite(loss)
    assert torch.isfinite(rec_sum)
    assert torch.isfinite(kl_sum)
