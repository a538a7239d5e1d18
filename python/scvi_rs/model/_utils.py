"""Helpers of the model layer (re-exported names of scvi-tools' ``scvi.model._utils``)."""

from __future__ import annotations

from ..train._device import parse_device_args
from .base._de_core import scrna_raw_counts_properties
from .base._training_mixin import get_max_epochs_heuristic

__all__ = ["get_max_epochs_heuristic", "parse_device_args", "scrna_raw_counts_properties"]
