"""The ZINB log-likelihood's fused CPU backward: same values, correct gradients, dispatch."""

from __future__ import annotations

import pytest
import torch

from scvi_rs.distributions import (
    ZeroInflatedNegativeBinomial,
    _negative_binomial,
    log_zinb_positive,
)
from scvi_rs.distributions._zinb_fused import fused_zinb_applies, log_zinb_fused

EPS = 1e-8


def _counts(n_cells, n_genes, density, gen, dtype, large=False):
    counts = torch.poisson(torch.rand(n_cells, n_genes, generator=gen) * 4, generator=gen) + 1
    if large:
        counts[0, : n_genes // 2] = torch.tensor([250.0, 10_000.0]).repeat(n_genes // 4)
    keep = torch.rand(n_cells, n_genes, generator=gen) < density
    return (counts * keep).to(dtype)


def _params(n_cells, n_genes, gen, dtype, per_gene=True, extreme=False):
    mu = torch.rand(n_cells, n_genes, generator=gen, dtype=dtype) * 6 + 0.05
    theta_shape = (n_genes,) if per_gene else (n_cells, n_genes)
    theta = torch.rand(theta_shape, generator=gen, dtype=dtype) * 4 + 0.1
    pi = torch.randn(n_cells, n_genes, generator=gen, dtype=dtype) * 2
    if extreme:
        mu.view(-1)[::5] = 1e-6
        mu.view(-1)[1::7] = 1e4
        theta.view(-1)[::3] = 1e-6
        theta.view(-1)[1::4] = 1e4
    return [t.requires_grad_() for t in (mu, theta, pi)]


def _autograd_form(x, mu, theta, pi, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(_negative_binomial, "fused_zinb_applies", lambda *args: False)
        return log_zinb_positive(x, mu, theta, pi)


@pytest.mark.parametrize("density", [0.1, 0.7])
@pytest.mark.parametrize("per_gene", [True, False])
@pytest.mark.parametrize("extreme", [False, True])
def test_gradcheck_float64(density, per_gene, extreme):
    gen = torch.Generator().manual_seed(3)
    x = _counts(6, 8, density, gen, torch.float64, large=True)
    mu, theta, pi = _params(6, 8, gen, torch.float64, per_gene, extreme)
    # In log space the finite-difference steps are relative, which parameters spanning
    # 1e-6 .. 1e4 need; the chain through exp is autograd's.
    log_mu = mu.detach().log().requires_grad_()
    log_theta = theta.detach().log().view(1, -1) if per_gene else theta.detach().log()
    log_theta.requires_grad_()

    def func(log_mu, log_theta, pi):
        return log_zinb_fused(x, log_mu.exp(), log_theta.exp(), pi, EPS)

    assert torch.autograd.gradcheck(func, (log_mu, log_theta, pi), eps=1e-6, atol=1e-5, rtol=1e-4)


def test_gradcheck_expanded_dispersion():
    gen = torch.Generator().manual_seed(4)
    x = _counts(5, 7, 0.3, gen, torch.float64)
    mu, theta, pi = _params(5, 7, gen, torch.float64)

    def func(mu, theta, pi):
        return log_zinb_fused(x, mu, theta.expand(5, 7), pi, EPS)

    assert torch.autograd.gradcheck(func, (mu, theta, pi))


@pytest.mark.parametrize("density", [0.11, 0.45, 0.8])
@pytest.mark.parametrize("theta_kind", ["vector", "expanded", "full"])
def test_same_values_and_gradients_as_autograd_float32(density, theta_kind, monkeypatch):
    gen = torch.Generator().manual_seed(5)
    x = _counts(64, 300, density, gen, torch.float32, large=True)
    mu, theta, pi = _params(64, 300, gen, torch.float32, per_gene=theta_kind != "full")
    theta_in = theta.view(1, -1).expand(64, 300) if theta_kind == "expanded" else theta

    fused = log_zinb_positive(x, mu, theta_in, pi)
    assert type(fused.grad_fn).__name__ == "_FusedZinbBackward"
    plain = _autograd_form(x, mu, theta_in, pi, monkeypatch)
    assert plain.grad_fn is not None and "Fused" not in type(plain.grad_fn).__name__
    assert torch.equal(fused, plain)

    weights = torch.rand(64, 300, generator=gen)
    grads_fused = torch.autograd.grad((fused * weights).sum(), (mu, theta, pi))
    grads_plain = torch.autograd.grad((plain * weights).sum(), (mu, theta, pi))
    for got, want in zip(grads_fused, grads_plain, strict=True):
        scale = want.abs().max().item()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5 * scale)


def test_extreme_parameters_agree_float32(monkeypatch):
    gen = torch.Generator().manual_seed(6)
    x = _counts(32, 40, 0.3, gen, torch.float32, large=True)
    mu, theta, pi = _params(32, 40, gen, torch.float32, per_gene=False, extreme=True)
    fused = log_zinb_positive(x, mu, theta, pi)
    plain = _autograd_form(x, mu, theta, pi, monkeypatch)
    assert torch.equal(fused, plain)
    # Compare each against float64 truth: the two float32 forms may round differently.
    truth64 = [t.detach().double().requires_grad_() for t in (mu, theta, pi)]
    truth = torch.autograd.grad(log_zinb_positive(x.double(), *truth64).sum(), truth64)
    got = torch.autograd.grad(fused.sum(), (mu, theta, pi))
    for g, t in zip(got, truth, strict=True):
        assert torch.isfinite(g).all()
        torch.testing.assert_close(g.double(), t, rtol=1e-4, atol=1e-5 * t.abs().max().item())


def test_counts_equal_to_eps_belong_to_neither_case(monkeypatch):
    x = torch.tensor([[0.0, EPS, 2.0, 0.0], [EPS, 1.0, 0.0, 5.0]])
    gen = torch.Generator().manual_seed(7)
    mu, theta, pi = _params(2, 4, gen, torch.float32)
    fused = log_zinb_positive(x, mu, theta, pi)
    plain = _autograd_form(x, mu, theta, pi, monkeypatch)
    assert torch.equal(fused, plain)
    assert fused[0, 1] == 0 and fused[1, 0] == 0
    grads = torch.autograd.grad(fused.sum(), (mu, pi))
    for grad in grads:
        assert grad[0, 1] == 0 and grad[1, 0] == 0


def test_distribution_log_prob_uses_the_fused_path():
    gen = torch.Generator().manual_seed(8)
    x = _counts(16, 20, 0.2, gen, torch.float32)
    mu, theta, pi = _params(16, 20, gen, torch.float32)
    log_prob = ZeroInflatedNegativeBinomial(mu=mu, theta=theta, zi_logits=pi).log_prob(x)
    assert type(log_prob.grad_fn).__name__ == "_FusedZinbBackward"
    (-log_prob.sum()).backward()
    assert theta.grad.shape == theta.shape and torch.isfinite(theta.grad).all()


def test_dispatch_only_where_it_applies():
    x = torch.ones(3, 4)
    mu, theta, pi = (torch.ones(3, 4, requires_grad=True) for _ in range(3))
    assert fused_zinb_applies(x, mu, theta, pi)
    # No gradient to take, x needing one, another dtype, mixed dtypes, broadcast means.
    assert not fused_zinb_applies(x, mu.detach(), theta.detach(), pi.detach())
    assert not fused_zinb_applies(x.requires_grad_(), mu, theta, pi)
    x = torch.ones(3, 4)
    assert not fused_zinb_applies(x.half(), mu.half(), theta.half(), pi.half())
    assert not fused_zinb_applies(x.double(), mu, theta, pi)
    assert not fused_zinb_applies(x, mu[:1], theta, pi)
    with torch.no_grad():
        assert not fused_zinb_applies(x, mu, theta, pi)


def test_double_backward_is_refused():
    x = torch.tensor([[0.0, 3.0]])
    mu, theta, pi = (torch.ones(1, 2, requires_grad=True) for _ in range(3))
    (grad_mu,) = torch.autograd.grad(log_zinb_fused(x, mu, theta, pi, EPS).sum(), mu,
                                     create_graph=True)  # fmt: skip
    with pytest.raises(RuntimeError):
        grad_mu.sum().backward()


def test_compiling_or_custom_lgamma_keeps_the_autograd_form(monkeypatch):
    x = torch.tensor([[0.0, 3.0]])
    mu, theta, pi = (torch.ones(1, 2, requires_grad=True) for _ in range(3))
    custom = log_zinb_positive(x, mu, theta, pi, lgamma_fn=lambda t: torch.lgamma(t))
    assert "Fused" not in type(custom.grad_fn).__name__
    monkeypatch.setattr(_negative_binomial, "_is_compiling", lambda: True)
    compiled = log_zinb_positive(x, mu, theta, pi)
    assert "Fused" not in type(compiled.grad_fn).__name__
