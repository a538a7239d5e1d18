"""``EmbeddingMixin``: the learned batch embedding of each cell (``EXPERIMENTAL`` upstream)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from ..._constants import REGISTRY_KEYS
from ...module.base import EmbeddingModuleMixin

if TYPE_CHECKING:
    import numpy as np
    from anndata import AnnData


class EmbeddingMixin:
    """Queries of models whose module holds named embeddings (``batch_representation="embedding"``)."""

    @torch.inference_mode()
    def get_batch_representation(
        self,
        adata: AnnData | None = None,
        indices: Sequence[int] | None = None,
        batch_size: int | None = None,
    ) -> np.ndarray:
        """Return the batch embedding of each cell.

        Parameters
        ----------
        adata
            AnnData set up like the model's; the model's own by default.
        indices
            Cells to use; all by default.
        batch_size
            Minibatch size; ``settings.batch_size`` by default.

        Returns
        -------
        numpy.ndarray
            ``(n_cells, embedding_dim)``.

        Raises
        ------
        KeyError
            The module has no batch embedding (not built with
            ``batch_representation="embedding"``, or it was removed).
        """
        if not isinstance(self.module, EmbeddingModuleMixin):
            raise ValueError("The current `module` must inherit from `EmbeddingModuleMixin`.")
        key = REGISTRY_KEYS.BATCH_KEY
        if key not in self.module.embeddings_dict:
            raise KeyError(
                f"Embedding {key} not found. The model has no batch embedding: build it with "
                "`batch_representation='embedding'`."
            )
        adata = self._validate_anndata(adata)
        loader = self._make_data_loader(adata=adata, indices=indices, batch_size=batch_size)
        parts = [self.module.compute_embedding(key, tensors[key]) for tensors in loader]
        return torch.cat(parts).cpu().numpy()


__all__ = ["EmbeddingMixin"]
