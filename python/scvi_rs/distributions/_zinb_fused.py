"""Zero-inflated NB log-likelihood with a hand-written backward, for eager CPU training.

The forward evaluates the same expression, operation for operation, as the autograd form
in ``_negative_binomial.log_zinb_positive`` (so the values are identical); the backward
uses the closed-form gradients below instead of replaying ~40 elementwise kernels.

With ``a = θ+ε``, ``b = μ+ε``, ``s = θ+μ+ε``, ``L = -log1p(μ/a)`` and
``z = -π + θ L`` (``π`` the zero-inflation logits), the log-likelihood is

* at zeros:     ``softplus(z) - softplus(-π)``
* at positives: ``-softplus(-π) + z - x log1p(θ/b) + lgamma(x+θ) - lgamma(θ) - lgamma(x+1)``

and, writing ``c = sigmoid(z)`` at zeros and ``c = 1`` at positives (``c = 0`` where ``x = ε``,
which belongs to neither case),

* ``∂/∂μ = -c θ/s + [x>ε] x θ / (b s)``
* ``∂/∂θ = c (L + θ μ / (a s)) + [x>ε] (ψ(x+θ) - ψ(θ) - x/s)``
* ``∂/∂π = [x≠ε] sigmoid(-π) - c``

The last terms of ``∂/∂μ`` and ``∂/∂θ`` live on the non-zero counts only and, like the
lgamma terms of the forward, are evaluated there only when the counts are sparse.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

_FLOAT_DTYPES = (torch.float32, torch.float64)


def fused_zinb_applies(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi: torch.Tensor
) -> bool:
    """Whether :func:`log_zinb_fused` may stand in for the autograd form (given that the
    caller runs eagerly, not under ``torch.compile``).

    It needs eager CPU tensors of one floating dtype; counts, means and logits of one
    shape (the dispersion may broadcast to it); counts that need no gradient, and at least
    one parameter that does (without a gradient to take, the plain form has no backward
    to save).
    """
    tensors = (x, mu, theta, pi)
    if any(t.device.type != "cpu" or t.dtype != x.dtype for t in tensors):
        return False
    if x.dtype not in _FLOAT_DTYPES or x.requires_grad:
        return False
    if not any(t.requires_grad for t in tensors[1:]) or not torch.is_grad_enabled():
        return False
    if x.ndim == 0 or mu.shape != x.shape or pi.shape != x.shape:
        return False
    return torch.broadcast_shapes(x.shape, theta.shape) == x.shape


def log_zinb_fused(
    x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor, pi: torch.Tensor, eps: float
) -> torch.Tensor:
    """ZINB log-likelihood of counts ``x`` (``pi``: zero-inflation logits), fused backward.

    Parameters
    ----------
    x
        Counts, of the full broadcast shape; no gradient flows to them.
    mu, theta, pi
        Mean, inverse dispersion and zero-inflation logits, broadcastable to ``x``.
    eps
        Guard of the logarithms, as in ``log_zinb_positive``.

    Returns
    -------
    The elementwise log-likelihood, of ``x``'s shape.
    """
    return _FusedZinb.apply(x, mu, theta, pi, float(eps))


class _FusedZinb(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, mu, theta, pi, eps):
        # A dispersion broadcast over the cells (a per-gene vector expanded by
        # broadcast_all) is computed on at its own size; its gradient still comes back at
        # the expanded shape, which autograd reduces.
        theta_small = _compact(theta)
        theta_eps = theta_small + eps
        mu_over_theta = mu / theta_eps
        log_theta_ratio = torch.log1p(mu_over_theta).neg_()
        neg_pi = pi.neg()
        softplus_neg_pi = F.softplus(neg_pi)
        pi_theta_log = neg_pi + theta_small * log_theta_ratio
        out = F.softplus(pi_theta_log).sub_(softplus_neg_pi)  # the zero case everywhere

        is_positive = x > eps
        positives = _Positives.find(x, is_positive)
        if positives is None:
            case_non_zero = _dense_case_non_zero(
                x, mu, theta_small, pi_theta_log, softplus_neg_pi, is_positive, eps
            )
            out = torch.where(is_positive, case_non_zero, out)
        else:
            positives.gather(x, mu, theta_small)
            out.view(-1).index_copy_(
                0,
                positives.flat,
                positives.case_non_zero(theta_small, pi_theta_log, softplus_neg_pi, eps),
            )
        n_positive = None if positives is None else positives.flat.numel()
        neither = _neither_zero_nor_positive(x, is_positive, n_positive, eps)
        if neither is not None:
            out.masked_fill_(neither, 0.0)

        ctx.eps = eps
        ctx.positives = positives
        ctx.shapes = (mu.shape, theta.shape, pi.shape)
        ctx.save_for_backward(
            x, mu, theta_small, neg_pi, pi_theta_log, log_theta_ratio, mu_over_theta,
            is_positive if positives is None else None, neither,
        )  # fmt: skip
        return out

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_out):
        x, mu, theta, neg_pi, pi_theta_log, log_theta_ratio, mu_over_theta, is_pos, neither = (
            ctx.saved_tensors
        )
        eps = ctx.eps
        positives = ctx.positives
        need_mu, need_theta, need_pi = ctx.needs_input_grad[1:4]

        # The weight of d(pi_theta_log): sigma(z) at zeros, 1 at positives, 0 elsewhere.
        dz = torch.sigmoid(pi_theta_log)
        if positives is None:
            dz.masked_fill_(is_pos, 1.0)
        else:
            dz.view(-1).index_fill_(0, positives.flat, 1.0)
        if neither is not None:
            dz.masked_fill_(neither, 0.0)
        dz.mul_(grad_out)

        grad_mu = grad_theta = grad_pi = None
        total = (theta + eps) + mu
        if need_mu or need_theta:
            dz_theta_over_total = dz * (theta / total)
            if need_mu:
                grad_mu = dz_theta_over_total.neg()
            if need_theta:
                grad_theta = (dz * log_theta_ratio).add_(dz_theta_over_total.mul_(mu_over_theta))
        if need_pi:
            grad_pi = torch.sigmoid(neg_pi).mul_(grad_out).sub_(dz)
            if neither is not None:
                grad_pi.masked_fill_(neither, 0.0)

        if grad_mu is not None or grad_theta is not None:
            if positives is None:
                _add_dense_positive_terms(
                    x, mu, theta, total, is_pos, grad_out, eps, grad_mu, grad_theta
                )
            else:
                positives.add_gradient_terms(theta, total, grad_out, eps, grad_mu, grad_theta)
        mu_shape, theta_shape, pi_shape = ctx.shapes
        return (
            None,
            _sum_to(grad_mu, mu_shape),
            _sum_to(grad_theta, theta_shape),
            _sum_to(grad_pi, pi_shape),
            None,
        )


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` without its broadcast (stride 0) dimensions, which become size 1 (no copy)."""
    t = t.detach()
    for dim in range(t.ndim):
        if t.stride(dim) == 0 and t.size(dim) > 1:
            t = t.narrow(dim, 0, 1)
    return t


def _sum_to(grad: torch.Tensor | None, shape: torch.Size) -> torch.Tensor | None:
    if grad is None or grad.shape == shape:
        return grad
    return grad.sum_to_size(shape)


def _neither_zero_nor_positive(
    x: torch.Tensor, is_positive: torch.Tensor, n_positive: int | None, eps: float
) -> torch.Tensor | None:
    """Mask of the counts equal to ``eps`` (or NaN), which get 0; ``None`` if there are none."""
    if n_positive is None:
        n_positive = int(torch.count_nonzero(is_positive))
    if int(torch.count_nonzero(x < eps)) + n_positive == x.numel():
        return None
    return ~((x < eps) | is_positive)


def _dense_case_non_zero(x, mu, theta, pi_theta_log, softplus_neg_pi, is_positive, eps):
    log_mu_ratio = torch.log1p(theta / (mu + eps)).neg_()
    terms = (torch.lgamma(x + theta) - torch.lgamma(theta)) - torch.lgamma(x + 1)
    terms = torch.where(is_positive, terms, torch.zeros((), dtype=terms.dtype))
    return (pi_theta_log - softplus_neg_pi).add_(x * log_mu_ratio).add_(terms)


def _add_dense_positive_terms(x, mu, theta, total, is_pos, grad_out, eps, grad_mu, grad_theta):
    """Add the gradient terms that live on the non-zero counts, evaluated densely."""
    x_pos = torch.where(is_pos, x, torch.zeros((), dtype=x.dtype))
    weight = grad_out * x_pos
    if grad_mu is not None:
        grad_mu.add_(weight * theta / ((mu + eps) * total))
    if grad_theta is not None:
        digammas = torch.digamma(x + theta) - torch.digamma(theta)
        dense = grad_out * digammas - weight / total
        grad_theta.add_(torch.where(is_pos, dense, torch.zeros((), dtype=dense.dtype)))


class _Positives:
    """The non-zero counts by flat position, when they are sparse (at most half the entries).

    Everything the positive case adds to the zero case's expression (``x log(μ/(θ+μ))``,
    the lgamma terms, and their gradients) is evaluated at these entries only.
    """

    def __init__(self, flat: torch.Tensor, shape: torch.Size) -> None:
        self.flat = flat
        self.shape = shape
        self._genes = None

    @classmethod
    def find(cls, x: torch.Tensor, is_positive: torch.Tensor) -> _Positives | None:
        flat = is_positive.reshape(-1).nonzero().squeeze(1)
        if 2 * flat.numel() > x.numel():
            return None
        return cls(flat, x.shape)

    def take(self, t: torch.Tensor) -> torch.Tensor:
        """The entries of ``t`` (broadcastable to the full shape) at the positives."""
        if t.shape == self.shape:
            return torch.take(t, self.flat)
        if t.numel() == 1:
            return t.reshape(1).expand(self.flat.numel())
        last = self.shape[-1]
        if t.numel() == t.size(-1) == last:  # a per-gene row
            if self._genes is None:
                self._genes = self.flat.remainder(last)
            return torch.take(t, self._genes)
        return torch.take(t.expand(self.shape).contiguous(), self.flat)

    def gather(self, x: torch.Tensor, mu: torch.Tensor, theta: torch.Tensor) -> None:
        self.x_at = self.take(x)
        self.mu_at = self.take(mu)
        self.theta_at = self.take(theta)
        self.x_theta_at = self.x_at + self.theta_at

    def case_non_zero(
        self,
        theta: torch.Tensor,
        pi_theta_log: torch.Tensor,
        softplus_neg_pi: torch.Tensor,
        eps: float,
    ) -> torch.Tensor:
        """The positive case's log-likelihood at the positives (the forward's formula)."""
        log_mu_ratio_at = torch.log1p(self.theta_at / (self.mu_at + eps)).neg_()
        lgamma_terms = (torch.lgamma(self.x_theta_at) - self.take(torch.lgamma(theta))) - (
            torch.lgamma(self.x_at + 1)
        )
        at = self.take(pi_theta_log) - self.take(softplus_neg_pi)
        return at.add_(self.x_at * log_mu_ratio_at).add_(lgamma_terms)

    def add_gradient_terms(self, theta, total, grad_out, eps, grad_mu, grad_theta) -> None:
        """Add the gradient terms that live on the non-zero counts."""
        grad_at = self.take(grad_out)
        total_at = self.take(total)
        if grad_mu is not None:
            mu_terms = grad_at * self.x_at * self.theta_at / ((self.mu_at + eps) * total_at)
            grad_mu.view(-1).index_add_(0, self.flat, mu_terms)
        if grad_theta is not None:
            digammas = torch.digamma(self.x_theta_at) - self.take(torch.digamma(theta))
            theta_terms = grad_at * (digammas - self.x_at / total_at)
            grad_theta.view(-1).index_add_(0, self.flat, theta_terms)
