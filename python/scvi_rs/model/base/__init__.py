"""Base classes and mixins of user-facing models (scvi-tools' ``scvi.model.base``)."""

from __future__ import annotations

from ._archesmixin import ArchesMixin
from ._base_model import BaseModelClass, BaseModelMetaClass
from ._constants import SAVE_KEYS
from ._differential import DifferentialComputation
from ._embeddingmixin import EmbeddingMixin
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


class BaseMinifiedModeModelClass(BaseModelClass):
    """Base of models that could run on minified AnnData (minification is not supported)."""

    @property
    def minified_data_type(self) -> str | None:
        """Minification type of the model's AnnData (always None: not supported)."""
        adata = self.adata
        if adata is None:
            return None
        return adata.uns.get("_scvi_adata_minify_type")

    @property
    def summary_string(self) -> str:
        """The model's summary with its training and minification status."""
        return (
            f"{super().summary_string}\nModel's adata is minified?: "
            f"{self.minified_data_type is not None}"
        )


__all__ = [
    "SAVE_KEYS",
    "ArchesMixin",
    "BaseMinifiedModeModelClass",
    "BaseModelClass",
    "BaseModelMetaClass",
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
