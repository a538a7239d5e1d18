"""scvi_rs.distributions: log-likelihoods against scipy, moments, sampling, parameterisations."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.stats as st
import torch
from scipy.special import gammaln as sp_gammaln

from scvi_rs.distributions import (
    NegativeBinomial,
    NegativeBinomialMixture,
    Normal,
    Poisson,
    ZeroInflatedNegativeBinomial,
    log_mixture_nb,
    log_nb_positive,
    log_zinb_positive,
)

# (x, mu, theta): zeros, small and large counts, tiny and huge inverse dispersion.
_NB_GRID = [
    (0.0, 0.5, 1e-6),
    (0.0, 3.0, 0.5),
    (0.0, 1e-3, 1e4),
    (0.0, 250.0, 2.0),
    (1.0, 2.0, 0.3),
    (3.0, 1e-2, 1.0),
    (5.0, 5.0, 10.0),
    (7.0, 4.0, 1e-6),
    (17.0, 20.0, 1e5),
    (100.0, 80.0, 1e4),
    (1234.0, 1500.0, 3.0),
    (10_000.0, 9000.0, 2.0),
    (250_000.0, 200_000.0, 50.0),
    (1_000_000.0, 1e6, 1e-3),
]


def _grid(dtype=torch.float64):
    x, mu, theta = (torch.tensor(col, dtype=dtype) for col in zip(*_NB_GRID, strict=True))
    return x, mu, theta


def _scipy_nb(x, mu, theta):
    x, mu, theta = (np.asarray(a, dtype=np.float64) for a in (x, mu, theta))
    return st.nbinom.logpmf(x, theta, theta / (theta + mu))


def _scipy_zinb(x, mu, theta, zi_logits):
    x, mu, theta, zi_logits = (np.asarray(a, dtype=np.float64) for a in (x, mu, theta, zi_logits))
    pi = 1.0 / (1.0 + np.exp(-zi_logits))
    nb = _scipy_nb(x, mu, theta)
    return np.where(x == 0, np.log(pi + (1 - pi) * np.exp(nb)), np.log1p(-pi) + nb)


# ----------------------------------------------------------------------------------------
# NegativeBinomial
# ----------------------------------------------------------------------------------------
def test_nb_log_prob_matches_scipy_float64():
    x, mu, theta = _grid()
    ours = NegativeBinomial(mu=mu, theta=theta).log_prob(x).numpy()
    ref = _scipy_nb(x, mu, theta)
    # eps = 1e-8 in the logs perturbs the tiny-theta / tiny-mu entries by ~1e-8 relative.
    np.testing.assert_allclose(ours, ref, rtol=1e-6, atol=1e-6)


def test_nb_log_prob_float32_is_close_and_finite():
    x, mu, theta = _grid(torch.float32)
    ours = NegativeBinomial(mu=mu, theta=theta).log_prob(x)
    assert ours.dtype == torch.float32
    assert torch.isfinite(ours).all()
    ref = _scipy_nb(x, mu, theta)
    # The lgamma terms reach ~1e7 for counts near 1e6; float32 keeps ~7 digits of each.
    x64, theta64 = x.double().numpy(), theta.double().numpy()
    magnitude = sum(np.abs(sp_gammaln(a)) for a in (x64 + theta64, theta64, x64 + 1))
    err = np.abs(ours.double().numpy() - ref)
    assert (err <= 1e-4 + 1e-4 * np.abs(ref) + 5e-7 * magnitude).all(), err


def test_nb_log_prob_is_stable_where_theta_dwarfs_mu():
    # theta * log(theta / (theta + mu)) ~ -mu when theta >> mu; a naive difference of logs
    # in float32 loses it completely.
    mu = torch.tensor([0.01, 0.1, 1.0])
    theta = torch.tensor([1e4, 1e5, 1e6])
    x = torch.zeros(3)
    ours = NegativeBinomial(mu=mu, theta=theta).log_prob(x).double().numpy()
    ref = _scipy_nb(x, mu, theta)
    np.testing.assert_allclose(ours, ref, rtol=1e-3)


def test_log_nb_positive_helper_matches_class_and_broadcasts():
    mu = torch.rand(4, 6, dtype=torch.float64) * 10
    theta = torch.rand(6, dtype=torch.float64) + 0.1
    x = torch.poisson(mu)
    direct = log_nb_positive(x, mu, theta)
    assert direct.shape == (4, 6)
    torch.testing.assert_close(direct, NegativeBinomial(mu=mu, theta=theta).log_prob(x))
    np.testing.assert_allclose(direct.numpy(), _scipy_nb(x, mu, theta.expand(4, 6)), rtol=1e-6)
    # A custom log function takes the reference's literal formula; same values.
    literal = log_nb_positive(x, mu, theta, log_fn=lambda t: torch.log(t))
    torch.testing.assert_close(literal, direct)


def test_nb_total_count_logits_parameterisation_matches_torch():
    total_count = torch.tensor([[2.0, 5.0, 0.7]], dtype=torch.float64)
    probs = torch.tensor([[0.3, 0.6, 0.9]], dtype=torch.float64)
    ours = NegativeBinomial(total_count=total_count, probs=probs)
    ref = torch.distributions.NegativeBinomial(total_count=total_count, probs=probs)
    torch.testing.assert_close(ours.mean, ref.mean)
    torch.testing.assert_close(ours.variance, ref.variance)
    x = torch.tensor([[0.0, 3.0, 11.0]], dtype=torch.float64)
    torch.testing.assert_close(ours.log_prob(x), ref.log_prob(x))
    torch.testing.assert_close(ours.theta, total_count)
    torch.testing.assert_close(ours.scale, ours.mu / ours.mu.sum(-1, keepdim=True))
    by_logits = NegativeBinomial(total_count=total_count, logits=ref.logits)
    torch.testing.assert_close(by_logits.mu, ours.mu)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"mu": torch.ones(2), "theta": torch.ones(2), "total_count": torch.ones(2)},
    ],
)
def test_nb_needs_exactly_one_parameterisation(kwargs):
    with pytest.raises(ValueError, match="Please use one of the two possible parameterizations"):
        NegativeBinomial(**kwargs)


def test_nb_moments_and_get_normalized():
    mu = torch.tensor([1.0, 4.0])
    theta = torch.tensor([2.0, 0.5])
    scale = torch.tensor([0.2, 0.8])
    d = NegativeBinomial(mu=mu, theta=theta, scale=scale)
    torch.testing.assert_close(d.mean, mu)
    torch.testing.assert_close(d.variance, mu + mu**2 / theta)
    assert d.get_normalized("mu") is d.mu
    assert d.get_normalized("scale") is scale
    with pytest.raises(ValueError, match="normalized key foo not recognized"):
        d.get_normalized("foo")


def test_nb_broadcasts_theta_over_cells():
    d = NegativeBinomial(mu=torch.ones(3, 5), theta=torch.ones(5))
    assert d.mu.shape == d.theta.shape == (3, 5)


def test_nb_sample_shapes_and_moments():
    torch.manual_seed(0)
    mu = torch.tensor([0.5, 5.0, 50.0])
    theta = torch.tensor([2.0, 0.5, 10.0])
    d = NegativeBinomial(mu=mu, theta=theta)
    assert d.sample().shape == (3,)
    draws = d.sample((20_000,))
    assert draws.shape == (20_000, 3)
    assert (draws >= 0).all()
    assert torch.equal(draws, draws.round())
    torch.testing.assert_close(draws.mean(0), mu, rtol=0.05, atol=0.05)
    torch.testing.assert_close(draws.var(0), d.variance, rtol=0.1, atol=0.1)


def test_nb_sample_of_parameters_requiring_grad_is_detached():
    mu = torch.ones(4, requires_grad=True)
    draws = NegativeBinomial(mu=mu, theta=torch.ones(4)).sample((2,))
    assert not draws.requires_grad
    draws += 1  # a normal tensor, usable outside inference mode


def test_nb_validate_args():
    with pytest.raises(ValueError, match="mu"):
        NegativeBinomial(mu=torch.tensor([-1.0]), theta=torch.tensor([1.0]), validate_args=True)
    d = NegativeBinomial(mu=torch.ones(2), theta=torch.ones(2), validate_args=True)
    with pytest.warns(UserWarning, match="must be within the support"):
        d.log_prob(torch.tensor([0.5, 1.0]))
    quiet = NegativeBinomial(mu=torch.ones(2), theta=torch.ones(2))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        quiet.log_prob(torch.tensor([0.5, 1.0]))


def test_nb_repr():
    d = NegativeBinomial(mu=torch.ones(3, 4), theta=torch.ones(4))
    assert repr(d) == "NegativeBinomial(mu: torch.Size([3, 4]), theta: torch.Size([3, 4]))"
    scalar = NegativeBinomial(mu=torch.tensor(2.0), theta=torch.tensor(1.0), scale=torch.ones(2))
    assert repr(scalar) == (
        f"NegativeBinomial(mu: {torch.tensor(2.0)}, theta: {torch.tensor(1.0)}, "
        "scale: torch.Size([2]))"
    )


def test_nb_log_prob_gradients_finite_at_extremes():
    mu = torch.tensor([0.0, 1e-8, 1.0, 1e6], requires_grad=True)
    theta = torch.tensor([1e-6, 1e-3, 1e6, 0.5], requires_grad=True)
    x = torch.tensor([0.0, 0.0, 3.0, 1e6])
    out = NegativeBinomial(mu=mu, theta=theta).log_prob(x).sum()
    out.backward()
    assert torch.isfinite(out)
    assert torch.isfinite(mu.grad).all()
    assert torch.isfinite(theta.grad).all()


# ----------------------------------------------------------------------------------------
# ZeroInflatedNegativeBinomial
# ----------------------------------------------------------------------------------------
def test_zinb_log_prob_matches_hand_computed():
    x, mu, theta = _grid()
    zi_logits = torch.linspace(-4, 3, len(x), dtype=torch.float64)
    ours = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi_logits).log_prob(x)
    # As in the reference, a 1-D theta is read as per-gene: the result gains a cell axis.
    assert ours.shape == (1, len(x))
    np.testing.assert_allclose(
        ours.numpy()[0], _scipy_zinb(x, mu, theta, zi_logits), rtol=1e-6, atol=1e-6
    )
    helper = log_zinb_positive(x, mu, theta, zi_logits)
    torch.testing.assert_close(helper, ours)


def test_zinb_log_prob_float32_2d_with_gene_theta():
    torch.manual_seed(1)
    mu = torch.rand(8, 5) * 20
    theta = torch.rand(5) * 3 + 0.05
    zi = torch.randn(8, 5)
    x = torch.poisson(mu)
    x[0] = 0
    ours = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi).log_prob(x)
    assert ours.shape == (8, 5)
    ref = _scipy_zinb(x, mu, theta.expand(8, 5), zi)
    np.testing.assert_allclose(ours.double().numpy(), ref, rtol=1e-4, atol=1e-4)
    # 1-D theta in the helper is treated as per-gene
    torch.testing.assert_close(log_zinb_positive(x, mu, theta, zi), ours)


def test_zinb_moments_and_zi_probs():
    mu = torch.tensor([2.0, 10.0], dtype=torch.float64)
    theta = torch.tensor([1.0, 3.0], dtype=torch.float64)
    zi = torch.tensor([-1.0, 0.5], dtype=torch.float64)
    d = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi, scale=mu / mu.sum())
    pi = torch.sigmoid(zi)
    torch.testing.assert_close(d.zi_probs, pi)
    torch.testing.assert_close(d.mean, (1 - pi) * mu)
    # E[x^2] - E[x]^2 of the mixture
    second = (1 - pi) * (mu + mu**2 / theta + mu**2)
    torch.testing.assert_close(d.variance, second - d.mean**2)
    torch.testing.assert_close(d.get_normalized("scale"), mu / mu.sum())


def test_zinb_sample_zero_fraction():
    torch.manual_seed(0)
    mu = torch.full((4,), 30.0)
    theta = torch.full((4,), 20.0)
    zi = torch.tensor([-10.0, 0.0, 1.0, 10.0])
    draws = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi).sample((10_000,))
    assert draws.shape == (10_000, 4)
    zero_frac = (draws == 0).double().mean(0)
    torch.testing.assert_close(zero_frac, torch.sigmoid(zi).double(), atol=0.02, rtol=0)


def test_zinb_validation_only_when_asked():
    d = ZeroInflatedNegativeBinomial(
        mu=torch.ones(2), theta=torch.ones(2), zi_logits=torch.zeros(2)
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        d.log_prob(torch.tensor([0.5, 1.0]))
    checked = ZeroInflatedNegativeBinomial(
        mu=torch.ones(2), theta=torch.ones(2), zi_logits=torch.zeros(2), validate_args=True
    )
    with pytest.warns(UserWarning, match="must be within the support"):
        checked.log_prob(torch.tensor([0.5, 1.0]))


def test_zinb_gradients_finite():
    mu = torch.tensor([0.0, 1.0, 50.0], requires_grad=True)
    theta = torch.tensor([1e-4, 1.0, 1e5], requires_grad=True)
    zi = torch.tensor([30.0, 0.0, -30.0], requires_grad=True)
    x = torch.tensor([0.0, 0.0, 40.0])
    out = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=zi).log_prob(x).sum()
    out.backward()
    for t in (out, mu.grad, theta.grad, zi.grad):
        assert torch.isfinite(t).all()


# ----------------------------------------------------------------------------------------
# Poisson, Normal, mixture
# ----------------------------------------------------------------------------------------
def test_poisson_matches_scipy_and_carries_scale():
    rate = torch.tensor([1e-3, 0.5, 4.0, 1e4], dtype=torch.float64)
    x = torch.tensor([0.0, 2.0, 4.0, 9_900.0], dtype=torch.float64)
    scale = rate / rate.sum()
    d = Poisson(rate, scale=scale, validate_args=False)
    np.testing.assert_allclose(d.log_prob(x).numpy(), st.poisson.logpmf(x.numpy(), rate.numpy()))
    assert d.get_normalized("mu") is d.rate
    assert d.get_normalized("scale") is scale
    with pytest.raises(ValueError, match="not recognized"):
        d.get_normalized("x")
    assert isinstance(d, torch.distributions.Poisson)


def test_normal_likelihood():
    mu = torch.tensor([0.0, 2.0])
    sd = torch.tensor([1.0, 0.5])
    d = Normal(mu, sd, normal_mu=torch.tensor([0.3, 0.7]))
    assert isinstance(d, torch.distributions.Normal)
    assert d.get_normalized("mu") is d.loc
    torch.testing.assert_close(d.get_normalized("scale"), torch.tensor([0.3, 0.7]))
    np.testing.assert_allclose(
        d.log_prob(torch.tensor([0.1, 1.0])).numpy(),
        st.norm.logpdf([0.1, 1.0], [0.0, 2.0], [1.0, 0.5]),
        rtol=1e-6,
    )


def test_nb_mixture_log_prob_and_mean():
    mu1 = torch.tensor([1.0, 20.0], dtype=torch.float64)
    mu2 = torch.tensor([8.0, 2.0], dtype=torch.float64)
    theta1 = torch.tensor([2.0, 5.0], dtype=torch.float64)
    theta2 = torch.tensor([0.5, 1.0], dtype=torch.float64)
    logits = torch.tensor([0.3, -1.2], dtype=torch.float64)
    x = torch.tensor([0.0, 7.0], dtype=torch.float64)
    w = torch.sigmoid(logits).numpy()
    ref = np.log(
        w * np.exp(_scipy_nb(x, mu1, theta1)) + (1 - w) * np.exp(_scipy_nb(x, mu2, theta2))
    )
    d = NegativeBinomialMixture(mu1, mu2, theta1, logits, theta2=theta2)
    np.testing.assert_allclose(d.log_prob(x).numpy(), ref, rtol=1e-7)
    np.testing.assert_allclose(
        log_mixture_nb(x, mu1, mu2, theta1, None, logits).numpy(),
        np.log(
            w * np.exp(_scipy_nb(x, mu1, theta1)) + (1 - w) * np.exp(_scipy_nb(x, mu2, theta1))
        ),
        rtol=1e-7,
    )
    torch.testing.assert_close(
        d.mean, torch.sigmoid(logits) * mu1 + (1 - torch.sigmoid(logits)) * mu2
    )
    assert d.sample((3,)).shape == (3, 2)


@pytest.mark.parametrize("theta_shape", ["gene", "cell"])
@pytest.mark.parametrize("density", [0.05, 0.3, 0.9])
def test_sparse_lgamma_path_equals_dense_path(monkeypatch, theta_shape, density):
    """The CPU path that evaluates lgamma at non-zero counts only gives the dense values."""
    from scvi_rs.distributions import _negative_binomial as nb

    rng = np.random.default_rng(3)
    counts = rng.negative_binomial(2, 0.3, size=(64, 50)) * (rng.random((64, 50)) < density)
    x = torch.tensor(counts, dtype=torch.float32)

    def run(sparse: bool):
        monkeypatch.setattr(nb, "_sparse_lgamma_applies", lambda *args: sparse)
        torch.manual_seed(0)
        shape = (50,) if theta_shape == "gene" else (64, 50)
        theta = torch.rand(shape).add(0.05).requires_grad_()
        mu = torch.rand(64, 50).mul(5).requires_grad_()
        pi = torch.randn(64, 50).requires_grad_()
        total = (
            nb.log_zinb_positive(x, mu, theta, pi).sum() + nb.log_nb_positive(x, mu, theta).sum()
        )
        total.backward()
        return total.detach(), theta.grad, mu.grad, pi.grad

    for sparse_value, dense_value in zip(run(True), run(False), strict=True):
        torch.testing.assert_close(sparse_value, dense_value, rtol=1e-5, atol=1e-4)
