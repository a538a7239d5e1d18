"""``SemiSupervisedDataSplitter``: labelled and unlabelled cells split separately."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import _core
from .._settings import settings
from ._ann_dataloader import AnnDataLoader
from ._data_splitting import (
    DataSplitter,
    validate_data_split,
    validate_data_split_with_external_indexing,
)
from ._semisupervised_dataloader import SemiSupervisedDataLoader, registered_labels

if TYPE_CHECKING:
    from ..data import AnnDataManager

_EMPTY = np.array([], dtype=np.int64)


class SemiSupervisedDataSplitter(DataSplitter):
    """Splits labelled and unlabelled cells separately, keeping their ratio in every set.

    Each group is split by the rules of :class:`~scvi_rs.dataloaders.DataSplitter`
    (sizes from ``train_size``/``validation_size``, permuted with
    ``numpy.random.RandomState(settings.seed)``, as scvi-tools); each set is the group's
    labelled part followed by its unlabelled part. With labelled cells the loaders are
    :class:`~scvi_rs.dataloaders.SemiSupervisedDataLoader` (cells and labelled cells side
    by side), else :class:`~scvi_rs.dataloaders.AnnDataLoader`.

    Parameters
    ----------
    adata_manager
        Manager whose labels field records an ``unlabeled_category``.
    datamodule
        Accepted for compatibility with scvi-tools (unused).
    train_size
        Fraction of each group for training; ``None`` means 0.9.
    validation_size
        Fraction for validation; the rest of each group when None.
    shuffle_set_split
        Permute each group before splitting; otherwise split in order.
    n_samples_per_label
        Labelled cells drawn per label for an epoch (all when None).
    pin_memory
        Allocate minibatches in page-locked memory (with an accelerator).
    external_indexing
        ``[train, valid, test]`` integer arrays; each set is intersected with the labelled
        and the unlabelled cells (each part comes back sorted).
    **kwargs
        Loader arguments (``batch_size``, ``drop_last``, ``load_sparse_tensor``, ...).
    """

    def __init__(
        self,
        adata_manager: AnnDataManager | None = None,
        datamodule: Any = None,
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        n_samples_per_label: int | None = None,
        pin_memory: bool = False,
        external_indexing: list[np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        if adata_manager is None:
            raise ValueError("SemiSupervisedDataSplitter needs an `adata_manager`.")
        load_sparse_tensor = kwargs.pop("load_sparse_tensor", False)
        super().__init__(
            adata_manager,
            train_size=train_size,
            validation_size=validation_size,
            shuffle_set_split=shuffle_set_split,
            load_sparse_tensor=load_sparse_tensor,
            pin_memory=pin_memory,
            external_indexing=external_indexing,
            **kwargs,
        )
        self.datamodule = datamodule
        self.n_samples_per_label = n_samples_per_label
        labels, self.unlabeled_category = registered_labels(adata_manager)
        is_unlabeled = labels == self.unlabeled_category
        self._unlabeled_indices = np.flatnonzero(is_unlabeled)
        self._labeled_indices = np.flatnonzero(~is_unlabeled)
        self.data_loader_class = self.data_loader_cls

    @property
    def _batch_size(self) -> int:
        return self.data_loader_kwargs.get("batch_size") or settings.batch_size

    def _split_group(self, group: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(train, val, test)`` cells of one group (the labelled or the unlabelled cells)."""
        if len(group) == 0:
            return _EMPTY, _EMPTY, _EMPTY
        if self.external_indexing is not None:
            return self._external_group_split(group)
        n_train, n_val = validate_data_split(
            len(group),
            self.train_size,
            self.validation_size,
            self._batch_size,
            self.drop_last,
            self.train_size_is_none,
        )
        order = group
        if self.shuffle_set_split:
            seed = settings.seed
            order = group[
                _core.legacy_permutation(len(group), None if seed is None else int(seed))
            ]
        return order[n_val : n_val + n_train], order[:n_val], order[n_val + n_train :]

    def _external_group_split(
        self, group: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        sets = [np.intersect1d(np.asarray(s), group) for s in self.external_indexing[:3]]
        # positions within the group, to check the group's sets with the usual rules
        positions = [np.searchsorted(group, s).astype(np.int64) for s in sets]
        validate_data_split_with_external_indexing(
            len(group), positions, self._batch_size, self.drop_last
        )
        return tuple(s.astype(np.int64) for s in sets)

    def setup(self, stage: str | None = None) -> None:
        """Draw ``train_idx``, ``val_idx`` and ``test_idx`` and choose the loader class."""
        labeled = self._split_group(self._labeled_indices)
        unlabeled = self._split_group(self._unlabeled_indices)
        self.train_idx, self.val_idx, self.test_idx = (
            np.concatenate((lab, unlab)).astype(int)
            for lab, unlab in zip(labeled, unlabeled, strict=True)
        )
        if len(self._labeled_indices) > 0:
            self.data_loader_class = self.data_loader_cls = SemiSupervisedDataLoader
            self.data_loader_kwargs["n_samples_per_label"] = self.n_samples_per_label
        else:
            self.data_loader_class = self.data_loader_cls = AnnDataLoader
            self.data_loader_kwargs.pop("n_samples_per_label", None)

    def train_dataloader(self) -> SemiSupervisedDataLoader | AnnDataLoader:
        """Shuffled loader over the training cells (remembered for label resampling)."""
        self.last_train_dataloader = super().train_dataloader()
        return self.last_train_dataloader

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Densify sparse tensors of each minibatch of a ``(cells, labelled cells)`` pair."""
        if isinstance(batch, (list, tuple)):
            return type(batch)(
                self.on_after_batch_transfer(part, dataloader_idx) for part in batch
            )
        if isinstance(batch, Mapping):
            return super().on_after_batch_transfer(batch, dataloader_idx)
        return batch


__all__ = ["SemiSupervisedDataSplitter"]
