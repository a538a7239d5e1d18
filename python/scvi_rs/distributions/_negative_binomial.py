"""Count distributions used by the VAE: negative binomial, its zero-inflated form, Poisson.

The log-likelihoods are written so that no step inspects tensor values on the host: they
can run inside a captured CUDA graph or under ``torch.compile``.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch.distributions import Distribution, Gamma, constraints
from torch.distributions import Poisson as _TorchPoisson
from torch.distributions.utils import (
    broadcast_all,
    lazy_property,
    logits_to_probs,
    probs_to_logits,
)

from .._settings import settings
from ._zinb_fused import fused_zinb_applies, log_zinb_fused

_EPS = 1e-8
_SUPPORT_WARNING = "The value argument must be within the support of the distribution"


# --------------------------------------------------------------------------------------
# Log-likelihood helpers
# --------------------------------------------------------------------------------------
def _nb_log_ratios(
    mu: torch.Tensor, theta: torch.Tensor, eps: float, log_fn=torch.log
) -> tuple[torch.Tensor, torch.Tensor]:
    """Return ``log(θ/(θ+μ))`` and ``log(μ/(θ+μ))`` with the reference's epsilon placement.

    With the default ``torch.log`` both are computed as ``-log1p(.)`` of a ratio, which is
    the same quantity as ``log(θ+ε) - log(θ+μ+ε)`` (resp. ``log(μ+ε) - log(θ+μ+ε)``) but does
    not lose precision when one parameter dwarfs the other (e.g. θ = 1e4, μ = 0.01).
    """
    if log_fn is torch.log:
        log_theta_ratio = -torch.log1p(mu / (theta + eps))
        log_mu_ratio = -torch.log1p(theta / (mu + eps))
    else:
        log_theta_mu_eps = log_fn(theta + mu + eps)
        log_theta_ratio = log_fn(theta + eps) - log_theta_mu_eps
        log_mu_ratio = log_fn(mu + eps) - log_theta_mu_eps
    return log_theta_ratio, log_mu_ratio


def _sparse_lgamma_applies(x: torch.Tensor, shape: torch.Size, lgamma_fn) -> bool:
    """Whether :func:`_lgamma_count_terms` may index the non-zero counts.

    Only eagerly on the CPU: indexing has a data-dependent shape, which would break a
    ``torch.compile`` graph (whose fused dense kernels need no such help) and would make an
    accelerator wait for the host.
    """
    return (
        x.device.type == "cpu"
        and lgamma_fn is torch.lgamma
        and tuple(x.shape) == shape
        and not _is_compiling()
    )


def _is_compiling() -> bool:
    compiler = getattr(torch, "compiler", None)
    is_compiling = getattr(compiler, "is_compiling", None)
    return bool(is_compiling()) if callable(is_compiling) else False


def _lgamma_count_terms(
    x: torch.Tensor, theta: torch.Tensor, mask: torch.Tensor, lgamma_fn=torch.lgamma
) -> torch.Tensor:
    """``lgamma(x+θ) - lgamma(θ) - lgamma(x+1)`` where ``mask`` holds, 0 elsewhere.

    On the CPU, when the counts are sparse (as single-cell counts are), the three lgamma
    terms and the digammas of their gradient are evaluated at the masked entries only:
    they dominate a CPU training step and are zero at ``x = 0``. The values are the same
    as the dense form's. On accelerators the dense form runs (no host synchronisation).
    """
    shape = torch.broadcast_shapes(x.shape, theta.shape)
    sparse = _sparse_lgamma_applies(x, shape, lgamma_fn)
    idx = mask.nonzero(as_tuple=True) if sparse else None
    if idx is None or 2 * idx[0].numel() > x.numel():
        lgamma_ratio = lgamma_fn(x + theta) - lgamma_fn(theta)
        terms = lgamma_ratio - lgamma_fn(x + 1)
        return torch.where(mask, terms, torch.zeros((), dtype=terms.dtype, device=terms.device))
    x_at = x[idx]
    theta_at = theta.expand(shape)[idx]
    if 4 * theta.numel() <= x.numel():  # a per-gene (or per-batch) dispersion
        lgamma_theta_at = torch.lgamma(theta).expand(shape)[idx]
    else:
        lgamma_theta_at = torch.lgamma(theta_at)
    terms = (torch.lgamma(x_at + theta_at) - lgamma_theta_at) - torch.lgamma(x_at + 1)
    dtype = torch.result_type(x, theta)
    return torch.zeros(shape, dtype=dtype, device=x.device).index_put(idx, terms.to(dtype))


def log_nb_positive(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    eps: float = _EPS,
    log_fn=torch.log,
    lgamma_fn=torch.lgamma,
) -> torch.Tensor:
    """Log-likelihood of counts ``x`` under NB(mean ``mu``, inverse dispersion ``theta``).

    Elementwise ``θ log(θ/(θ+μ)) + x log(μ/(θ+μ)) + lgamma(x+θ) - lgamma(θ) - lgamma(x+1)``
    with ``eps`` guarding the logarithms, as in the reference.
    """
    log_theta_ratio, log_mu_ratio = _nb_log_ratios(mu, theta, eps, log_fn)
    # The lgamma difference is formed first: each term can be large (~x log x) while the
    # difference is small, and adding a small term to one of them first loses it. At x = 0
    # the three lgamma terms cancel exactly.
    lgamma_terms = _lgamma_count_terms(x, theta, x != 0, lgamma_fn)
    return theta * log_theta_ratio + x * log_mu_ratio + lgamma_terms


def log_zinb_positive(
    x: torch.Tensor,
    mu: torch.Tensor,
    theta: torch.Tensor,
    pi: torch.Tensor,
    eps: float = _EPS,
    lgamma_fn=torch.lgamma,
) -> torch.Tensor:
    """Log-likelihood of counts ``x`` under a zero-inflated NB.

    ``pi`` holds the logits of the zero-inflation probability. Zeros (``x < eps``) get
    ``log(sigmoid(pi) + sigmoid(-pi) * NB(0))``, positive counts
    ``log(sigmoid(-pi)) + log NB(x)``, both evaluated with softplus for stability.
    """
    # A per-gene dispersion vector broadcasts over cells.
    if theta.ndim == 1:
        theta = theta.view(1, theta.size(0))
    if fused_zinb_applies(x, mu, theta, pi) and _sparse_lgamma_applies(x, x.shape, lgamma_fn):
        # Eager CPU training: the same values, with a closed-form backward.
        return log_zinb_fused(x, mu, theta, pi, eps)
    log_theta_ratio, log_mu_ratio = _nb_log_ratios(mu, theta, eps)
    softplus_neg_pi = F.softplus(-pi)
    pi_theta_log = -pi + theta * log_theta_ratio
    case_zero = F.softplus(pi_theta_log) - softplus_neg_pi
    is_zero = x < eps
    is_positive = x > eps
    lgamma_terms = _lgamma_count_terms(x, theta, is_positive, lgamma_fn)
    case_non_zero = -softplus_neg_pi + pi_theta_log + x * log_mu_ratio + lgamma_terms
    zero = torch.zeros((), dtype=case_zero.dtype, device=case_zero.device)
    return torch.where(is_zero, case_zero, zero) + torch.where(is_positive, case_non_zero, zero)


def log_mixture_nb(
    x: torch.Tensor,
    mu_1: torch.Tensor,
    mu_2: torch.Tensor,
    theta_1: torch.Tensor,
    theta_2: torch.Tensor | None,
    pi_logits: torch.Tensor,
    eps: float = _EPS,
    log_fn=torch.log,
    lgamma_fn=torch.lgamma,
) -> torch.Tensor:
    """Log-likelihood of a two-component NB mixture with mixing logits ``pi_logits``.

    Component 1 has weight ``sigmoid(pi_logits)``; ``theta_2=None`` shares ``theta_1``.
    """
    theta_2 = theta_1 if theta_2 is None else theta_2
    log_nb_1 = log_nb_positive(x, mu_1, theta_1, eps, log_fn, lgamma_fn)
    log_nb_2 = log_nb_positive(x, mu_2, theta_2, eps, log_fn, lgamma_fn)
    stacked = torch.stack((log_nb_1, log_nb_2 - pi_logits), dim=-1)
    return torch.logsumexp(stacked, dim=-1) - F.softplus(-pi_logits)


def _convert_mean_disp_to_counts_logits(
    mu: torch.Tensor, theta: torch.Tensor, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mu, theta) -> (total_count, logits) of torch's NB parameterisation."""
    logits = (mu + eps).log() - (theta + eps).log()
    return theta, logits


def _convert_counts_logits_to_mean_disp(
    total_count: torch.Tensor, logits: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(total_count, logits) -> (mu, theta); torch's NB has mean ``total_count * exp(logits)``."""
    theta = total_count
    mu = logits.exp() * theta
    return mu, theta


def _gamma(theta: torch.Tensor, mu: torch.Tensor) -> Gamma:
    """Gamma whose Poisson mixture is NB(mu, theta)."""
    return Gamma(concentration=theta, rate=theta / mu, validate_args=False)


def _check_params(dist: Distribution) -> None:
    """Check the given (non-None) parameters against ``arg_constraints`` (host sync)."""
    for name, constraint in dist.arg_constraints.items():
        value = dist.__dict__.get(name)
        if value is None or not isinstance(value, torch.Tensor):
            continue
        if not bool(constraint.check(value).all()):
            raise ValueError(
                f"Expected parameter {name} ({type(value).__name__} of shape "
                f"{tuple(value.shape)}) of distribution {dist!r} to satisfy the constraint "
                f"{constraint!r}, but found invalid values:\n{value}"
            )


def _param_repr(dist: Distribution) -> str:
    parts = []
    for name in dist.arg_constraints:
        if name not in dist.__dict__:
            continue
        value = dist.__dict__[name]
        if value is None:
            continue
        if isinstance(value, torch.Tensor):
            shown = value if value.numel() == 1 else value.size()
        else:
            shown = value
        parts.append(f"{name}: {shown}")
    return f"{type(dist).__name__}({', '.join(parts)})"


# --------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------
class NegativeBinomial(Distribution):
    r"""Negative binomial over counts.

    Two parameterisations, exactly one of which must be used:

    1. ``mu`` (mean, > 0) and ``theta`` (inverse dispersion, > 0);
    2. ``total_count`` with ``probs`` or ``logits``, as torch's ``NegativeBinomial``;
       converted to ``theta = total_count``, ``mu = exp(logits) * theta``.

    Parameters
    ----------
    total_count
        Number of failures until the experiment is stopped.
    probs
        Success probabilities.
    logits
        Success logits.
    mu
        Mean of the distribution.
    theta
        Inverse dispersion.
    scale
        Normalised mean (e.g. the decoder's softmax output); returned by
        ``get_normalized("scale")``.
    validate_args
        Check parameters on construction and warn on values outside the support in
        ``log_prob``. Both inspect tensor values on the host, so leave it off on hot paths.
    """

    arg_constraints = {
        "mu": constraints.greater_than_eq(0),
        "theta": constraints.greater_than_eq(0),
        "scale": constraints.greater_than_eq(0),
    }
    support = constraints.nonnegative_integer

    def __init__(
        self,
        total_count: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        mu: torch.Tensor | None = None,
        theta: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        validate_args: bool = False,
    ) -> None:
        self._eps = _EPS
        if (mu is None) == (total_count is None):
            raise ValueError(
                "Please use one of the two possible parameterizations. Refer to the "
                "documentation for more information."
            )
        using_counts = total_count is not None and (logits is not None or probs is not None)
        if using_counts:
            # torch's convention: success probability p, mean total_count * p / (1 - p),
            # i.e. binary logits. (The reference takes log(p) here, which disagrees with
            # its own docs and with torch; we follow torch.)
            logits = logits if logits is not None else probs_to_logits(probs, is_binary=True)
            if isinstance(total_count, torch.Tensor):
                total_count = total_count.type_as(logits)
            total_count, logits = broadcast_all(total_count, logits)
            mu, theta = _convert_counts_logits_to_mean_disp(total_count, logits)
            scale = mu / torch.sum(mu, dim=-1, keepdim=True)
        else:
            if mu is None or theta is None:
                raise ValueError(
                    "Please use one of the two possible parameterizations. Refer to the "
                    "documentation for more information."
                )
            mu, theta = broadcast_all(mu, theta)
        self.mu = mu
        self.theta = theta
        self.scale = scale
        super().__init__(validate_args=False)
        self._validate_args = bool(validate_args)
        if self._validate_args:
            _check_params(self)

    @property
    def mean(self) -> torch.Tensor:
        return self.mu

    @property
    def variance(self) -> torch.Tensor:
        return self.mean + (self.mean**2) / self.theta

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple | None = None) -> torch.Tensor:
        """Draw counts: ``Poisson(Gamma(theta, theta / mu))`` (rates clamped at 1e8)."""
        sample_shape = torch.Size(sample_shape or ())
        rates = self._gamma().sample(sample_shape)
        rates = torch.clamp(rates, max=1e8)
        return _TorchPoisson(rates, validate_args=False).sample()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._warn_if_outside_support(value)
        return log_nb_positive(value, mu=self.mu, theta=self.theta, eps=self._eps)

    def _warn_if_outside_support(self, value: torch.Tensor) -> None:
        try:
            self._validate_sample(value)
        except ValueError:
            warnings.warn(_SUPPORT_WARNING, UserWarning, stacklevel=settings.warnings_stacklevel)

    def _gamma(self) -> Gamma:
        return _gamma(self.theta, self.mu)

    def get_normalized(self, key: str) -> torch.Tensor:
        """``"mu"`` -> the mean, ``"scale"`` -> the normalised mean."""
        if key == "mu":
            return self.mu
        if key == "scale":
            return self.scale
        raise ValueError(f"normalized key {key} not recognized")

    def __repr__(self) -> str:
        return _param_repr(self)


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    r"""Zero-inflated negative binomial.

    A count is a structural zero with probability ``sigmoid(zi_logits)``, else drawn from
    ``NegativeBinomial``. Parameters as :class:`NegativeBinomial`, plus

    Parameters
    ----------
    zi_logits
        Logits of the zero-inflation probability, broadcast with ``mu`` and ``theta``.
    """

    arg_constraints = {
        "mu": constraints.greater_than_eq(0),
        "theta": constraints.greater_than_eq(0),
        "zi_logits": constraints.real,
        "scale": constraints.greater_than_eq(0),
    }
    support = constraints.nonnegative_integer

    def __init__(
        self,
        total_count: torch.Tensor | None = None,
        probs: torch.Tensor | None = None,
        logits: torch.Tensor | None = None,
        mu: torch.Tensor | None = None,
        theta: torch.Tensor | None = None,
        zi_logits: torch.Tensor | None = None,
        scale: torch.Tensor | None = None,
        validate_args: bool = False,
    ) -> None:
        super().__init__(
            total_count=total_count,
            probs=probs,
            logits=logits,
            mu=mu,
            theta=theta,
            scale=scale,
            validate_args=validate_args,
        )
        if zi_logits is None:
            raise ValueError("ZeroInflatedNegativeBinomial needs `zi_logits`.")
        self.zi_logits, self.mu, self.theta = broadcast_all(zi_logits, self.mu, self.theta)

    @property
    def mean(self) -> torch.Tensor:
        return (1 - self.zi_probs) * self.mu

    @property
    def variance(self) -> torch.Tensor:
        pi = self.zi_probs
        mu = self.mu
        theta = self.theta
        return (1 - pi) * mu * (mu + theta + pi * mu * theta) / theta

    @lazy_property
    def zi_probs(self) -> torch.Tensor:
        return logits_to_probs(self.zi_logits, is_binary=True)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple | None = None) -> torch.Tensor:
        """NB draws with each entry set to 0 with probability ``zi_probs``."""
        counts = super().sample(sample_shape)
        is_zero = torch.rand_like(counts) <= self.zi_probs
        return torch.where(is_zero, torch.zeros_like(counts), counts)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        # The reference validates every call; that check reads the tensor on the host, so
        # here it runs only with ``validate_args=True`` (hot paths stay sync-free).
        if self._validate_args:
            self._warn_if_outside_support(value)
        return log_zinb_positive(value, self.mu, self.theta, self.zi_logits, eps=self._eps)


class NegativeBinomialMixture(Distribution):
    """Mixture of two negative binomials sharing (or not) the inverse dispersion.

    Parameters
    ----------
    mu1, mu2
        Means of the two components.
    theta1, theta2
        Inverse dispersions; ``theta2=None`` shares ``theta1``.
    mixture_logits
        Logits of the weight of component 1.
    validate_args
        Check parameters / warn on values outside the support.
    """

    arg_constraints = {
        "mu1": constraints.greater_than_eq(0),
        "mu2": constraints.greater_than_eq(0),
        "theta1": constraints.greater_than_eq(0),
        "mixture_probs": constraints.half_open_interval(0.0, 1.0),
        "mixture_logits": constraints.real,
    }
    support = constraints.nonnegative_integer

    def __init__(
        self,
        mu1: torch.Tensor,
        mu2: torch.Tensor,
        theta1: torch.Tensor,
        mixture_logits: torch.Tensor,
        theta2: torch.Tensor | None = None,
        validate_args: bool = False,
    ) -> None:
        self.mu1, self.theta1, self.mu2, self.mixture_logits = broadcast_all(
            mu1, theta1, mu2, mixture_logits
        )
        self.theta2 = None if theta2 is None else broadcast_all(mu1, theta2)[1]
        super().__init__(validate_args=False)
        self._validate_args = bool(validate_args)
        if self._validate_args:
            _check_params(self)

    @property
    def mean(self) -> torch.Tensor:
        pi = self.mixture_probs
        return pi * self.mu1 + (1 - pi) * self.mu2

    @lazy_property
    def mixture_probs(self) -> torch.Tensor:
        return logits_to_probs(self.mixture_logits, is_binary=True)

    @torch.no_grad()
    def sample(self, sample_shape: torch.Size | tuple | None = None) -> torch.Tensor:
        sample_shape = torch.Size(sample_shape or ())
        pi = self.mixture_probs
        first = torch.bernoulli(pi.expand(sample_shape + pi.shape)).bool()
        mu = torch.where(first, self.mu1, self.mu2)
        theta = (
            self.theta1 if self.theta2 is None else torch.where(first, self.theta1, self.theta2)
        )
        rates = torch.clamp(_gamma(theta, mu).sample(), max=1e8)
        return _TorchPoisson(rates, validate_args=False).sample()

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            try:
                self._validate_sample(value)
            except ValueError:
                warnings.warn(
                    _SUPPORT_WARNING, UserWarning, stacklevel=settings.warnings_stacklevel
                )
        return log_mixture_nb(
            value, self.mu1, self.mu2, self.theta1, self.theta2, self.mixture_logits, eps=_EPS
        )

    def __repr__(self) -> str:
        return _param_repr(self)


class Poisson(_TorchPoisson):
    """torch's ``Poisson`` that also carries the decoder's normalised mean ``scale``.

    Parameters
    ----------
    rate
        Rate (mean) of the distribution.
    validate_args
        As torch (``None`` uses torch's global default).
    scale
        Normalised mean, returned by ``get_normalized("scale")``.
    """

    def __init__(
        self,
        rate: torch.Tensor,
        validate_args: bool | None = None,
        scale: torch.Tensor | None = None,
    ) -> None:
        super().__init__(rate=rate, validate_args=validate_args)
        self.scale = scale

    def get_normalized(self, key: str) -> torch.Tensor:
        """``"mu"`` -> the rate, ``"scale"`` -> the normalised mean."""
        if key == "mu":
            return self.rate
        if key == "scale":
            return self.scale
        raise ValueError(f"normalized key {key} not recognized")
