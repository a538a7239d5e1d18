"""Named embeddings attached to a module (``_embeddings_dict`` in the state dict)."""

from __future__ import annotations

import torch
from torch import nn

from ...nn import Embedding
from ._decorators import auto_move_data


class EmbeddingModuleMixin:
    """Adds a lazily created ``nn.ModuleDict`` of embeddings to an ``nn.Module``."""

    @property
    def embeddings_dict(self) -> nn.ModuleDict:
        """Embeddings by key (created on first access, stored as ``_embeddings_dict``)."""
        if "_embeddings_dict" not in self._modules:
            self._embeddings_dict = nn.ModuleDict()
        return self._embeddings_dict

    def add_embedding(self, key: str, embedding: nn.Embedding, overwrite: bool = False) -> None:
        """Register ``embedding`` under ``key``."""
        if key in self.embeddings_dict and not overwrite:
            raise KeyError(f"Embedding {key} already exists.")
        self.embeddings_dict[key] = embedding

    def remove_embedding(self, key: str) -> None:
        """Remove the embedding registered under ``key``."""
        if key not in self.embeddings_dict:
            raise KeyError(f"Embedding {key} not found.")
        del self.embeddings_dict[key]

    def get_embedding(self, key: str) -> nn.Embedding:
        """The embedding registered under ``key``."""
        if key not in self.embeddings_dict:
            raise KeyError(f"Embedding {key} not found.")
        return self.embeddings_dict[key]

    def init_embedding(
        self, key: str, num_embeddings: int, embedding_dim: int = 5, **kwargs
    ) -> None:
        """Create and register an :class:`~scvi_rs.nn.Embedding`."""
        self.add_embedding(key, Embedding(num_embeddings, embedding_dim, **kwargs))

    @auto_move_data
    def compute_embedding(self, key: str, indices: torch.Tensor) -> torch.Tensor:
        """Embed ``indices`` (``(n,)`` or ``(n, 1)``) with the embedding ``key``."""
        if indices.ndim > 1:
            indices = indices.reshape(-1)
        return self.get_embedding(key)(indices.to(torch.long))
