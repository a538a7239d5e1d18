"""``torch.nn.Embedding`` with helpers to grow it for new categories."""

from __future__ import annotations

import torch
from torch import nn


class Embedding(nn.Embedding):
    """``torch.nn.Embedding`` used for batch representations (``batch_representation=
    "embedding"``); its state dict is the plain ``weight`` of shape
    ``(num_embeddings, embedding_dim)``.

    Loading a state dict adopts the saved number of rows: a model built with its original
    number of categories loads the weights of an embedding that was extended since.
    """

    @classmethod
    def extend(
        cls,
        embedding: nn.Embedding,
        init: int | list[int],
        freeze_prev: bool = True,
    ) -> Embedding:
        """A new embedding with the rows of ``embedding`` followed by new rows.

        Parameters
        ----------
        embedding
            Embedding to extend.
        init
            Number of new rows (randomly initialised), or a list of existing row indices
            whose weights initialise the new rows.
        freeze_prev
            Zero the gradient of the copied rows so that only the new rows train.
        """
        old = embedding.weight.detach()
        if isinstance(init, int):
            if init <= 0:
                raise ValueError(f"`init` must be > 0, got {init}")
            new_rows = torch.empty(
                (init, old.shape[1]), dtype=old.dtype, device=old.device
            ).normal_()
        elif isinstance(init, list):
            new_rows = old[init].clone()
        else:
            raise TypeError(f"`init` must be an `int` or a `list[int]`, got {type(init)}")
        weight = torch.cat([old, new_rows], dim=0)
        extended = cls(
            num_embeddings=weight.shape[0],
            embedding_dim=weight.shape[1],
            _weight=weight.clone(),
            padding_idx=embedding.padding_idx,
            max_norm=embedding.max_norm,
            norm_type=embedding.norm_type,
            scale_grad_by_freq=embedding.scale_grad_by_freq,
            sparse=embedding.sparse,
        )
        if freeze_prev:
            n_old = old.shape[0]

            def _mask_old_rows(grad: torch.Tensor) -> torch.Tensor:
                masked = grad.clone()
                masked[:n_old] = 0
                return masked

            extended.weight.register_hook(_mask_old_rows)
        return extended

    def _load_from_state_dict(
        self,
        state_dict: dict[str, torch.Tensor],
        prefix: str,
        local_metadata: dict,
        strict: bool,
        missing_keys: list[str],
        unexpected_keys: list[str],
        error_msgs: list[str],
    ) -> None:
        saved = state_dict.get(prefix + "weight")
        if (
            isinstance(saved, torch.Tensor)
            and saved.ndim == 2
            and saved.shape != self.weight.shape
        ):
            self._resize(saved.shape[0], saved.shape[1])
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def _resize(self, num_embeddings: int, embedding_dim: int) -> None:
        """Replace ``weight`` by an uninitialised one of the new shape (same device, dtype)."""
        old = self.weight
        self.weight = nn.Parameter(
            torch.empty(num_embeddings, embedding_dim, dtype=old.dtype, device=old.device),
            requires_grad=old.requires_grad,
        )
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
