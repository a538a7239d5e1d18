"""Base classes for torch modules (``scvi.module.base``)."""

from ._base_module import (
    BaseMinifiedModeModuleClass,
    BaseModuleClass,
    LossOutput,
)
from ._decorators import auto_move_data
from ._embedding_mixin import EmbeddingModuleMixin
from ._pyro import PyroBaseModuleClass

__all__ = [
    "BaseMinifiedModeModuleClass",
    "BaseModuleClass",
    "EmbeddingModuleMixin",
    "LossOutput",
    "PyroBaseModuleClass",
    "auto_move_data",
]
