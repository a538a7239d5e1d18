"""Base classes and mixins of user-facing models (scvi-tools' ``scvi.model.base``)."""

from __future__ import annotations

from ._archesmixin import ArchesMixin
from ._base_model import BaseModelClass, BaseModelMetaClass
from ._constants import SAVE_KEYS
from ._differential import DifferentialComputation
from ._embeddingmixin import EmbeddingMixin
from ._minification import BaseMinifiedModeModelClass, BaseMudataMinifiedModeModelClass
from ._pyromixin import (
    PyroJitGuideWarmup,
    PyroModelGuideWarmup,
    PyroSampleMixin,
    PyroSviTrainMixin,
)
from ._rnamixin import RNASeqMixin
from ._semisupervised_training_mixin import SemisupervisedTrainingMixin
from ._training_mixin import UnsupervisedTrainingMixin
from ._vaemixin import VAEMixin

__all__ = [
    "SAVE_KEYS",
    "ArchesMixin",
    "BaseMinifiedModeModelClass",
    "BaseModelClass",
    "BaseModelMetaClass",
    "BaseMudataMinifiedModeModelClass",
    "DifferentialComputation",
    "EmbeddingMixin",
    "PyroJitGuideWarmup",
    "PyroModelGuideWarmup",
    "PyroSampleMixin",
    "PyroSviTrainMixin",
    "RNASeqMixin",
    "SemisupervisedTrainingMixin",
    "UnsupervisedTrainingMixin",
    "VAEMixin",
]
