"""User-facing models (scvi-tools' ``scvi.model``)."""

from __future__ import annotations

from . import base
from ._scanvi import SCANVI
from ._scvi import SCVI
from .base._training_mixin import get_max_epochs_heuristic

__all__ = ["SCANVI", "SCVI", "base", "get_max_epochs_heuristic"]
