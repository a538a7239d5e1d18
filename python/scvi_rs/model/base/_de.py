"""Former home of the differential-expression code, kept for existing imports.

``DifferentialComputation`` and its helpers live in :mod:`._differential`, the per-group
driver in :mod:`._de_core` (scvi-tools' module layout).
"""

from ._de_core import _de_core, _fdr_de_prediction, _prepare_obs, scrna_raw_counts_properties
from ._differential import (
    DifferentialComputation,
    credible_intervals,
    describe_continuous_distrib,
    estimate_delta,
    estimate_pseudocounts_offset,
    pairs_sampler,
)

__all__ = [
    "DifferentialComputation",
    "_de_core",
    "_fdr_de_prediction",
    "_prepare_obs",
    "credible_intervals",
    "describe_continuous_distrib",
    "estimate_delta",
    "estimate_pseudocounts_offset",
    "pairs_sampler",
    "scrna_raw_counts_properties",
]
