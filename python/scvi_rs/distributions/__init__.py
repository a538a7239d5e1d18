"""Distributions of the scvi-tools model family (``scvi.distributions``)."""

from ._negative_binomial import (
    NegativeBinomial,
    NegativeBinomialMixture,
    Poisson,
    ZeroInflatedNegativeBinomial,
    log_mixture_nb,
    log_nb_positive,
    log_zinb_positive,
)
from ._normal import Normal

__all__ = [
    "NegativeBinomial",
    "NegativeBinomialMixture",
    "Normal",
    "Poisson",
    "ZeroInflatedNegativeBinomial",
    "log_mixture_nb",
    "log_nb_positive",
    "log_zinb_positive",
]
