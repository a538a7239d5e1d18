"""``SemiSupervisedDataLoader``: every cell beside a (subsampled) labelled minibatch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from .._constants import REGISTRY_KEYS
from ..data._utils import get_anndata_attribute
from ._concat_dataloader import ConcatDataLoader

if TYPE_CHECKING:
    from ..data import AnnDataManager


def registered_labels(adata_manager: AnnDataManager) -> tuple[np.ndarray, Any]:
    """The original label of every registered cell, and the unlabelled category.

    Parameters
    ----------
    adata_manager
        Manager whose labels field records an ``unlabeled_category``.

    Returns
    -------
    tuple
        ``(labels (n_obs,), unlabeled_category)``.
    """
    labels_state = adata_manager.get_state_registry(REGISTRY_KEYS.LABELS_KEY)
    if "unlabeled_category" not in labels_state:
        raise ValueError(
            "The labels field of this AnnData has no `unlabeled_category`; set it up with a "
            "semi-supervised model's setup_anndata (e.g. SCANVI.setup_anndata(adata, "
            "labels_key=..., unlabeled_category=...))."
        )
    labels_entry = adata_manager.data_registry[REGISTRY_KEYS.LABELS_KEY]
    labels = get_anndata_attribute(
        adata_manager.adata,
        labels_entry.attr_name,
        labels_state.original_key,
        mod_key=getattr(labels_entry, "mod_key", None),
    )
    return np.asarray(labels).ravel(), labels_state.unlabeled_category


class SemiSupervisedDataLoader(ConcatDataLoader):
    """Yields ``(minibatch of the cells, minibatch of their labelled cells)`` pairs.

    Parameters
    ----------
    adata_manager
        Manager whose labels have an ``unlabeled_category``.
    n_samples_per_label
        Labelled cells drawn per label (without replacement) for an epoch; all labelled
        cells when None. :meth:`resample_labels` draws afresh.
    indices
        Cells to load; all by default.
    shuffle
        Shuffle the cells.
    batch_size
        Minibatch size of both loaders.
    data_and_attributes
        Registry keys to load (see :class:`~scvi_rs.dataloaders.AnnDataLoader`).
    drop_last
        Drop the last incomplete minibatch.
    **data_loader_kwargs
        Further :class:`~scvi_rs.dataloaders.AnnDataLoader` arguments.

    Notes
    -----
    Among ``indices`` without a labelled cell the loader yields 1-tuples (the cells alone).
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        n_samples_per_label: int | None = None,
        indices: list[int] | np.ndarray | None = None,
        shuffle: bool = False,
        batch_size: int = 128,
        data_and_attributes: list[str] | dict | None = None,
        drop_last: bool | int = False,
        **data_loader_kwargs: Any,
    ) -> None:
        if indices is None:
            indices = np.arange(adata_manager.adata.n_obs)
        indices = np.asarray(indices)
        if indices.dtype == np.bool_:
            indices = np.flatnonzero(indices)
        if len(indices) == 0:
            raise ValueError("SemiSupervisedDataLoader needs at least one cell in `indices`.")
        if n_samples_per_label is not None and n_samples_per_label < 1:
            raise ValueError(
                f"`n_samples_per_label` must be a positive number, got {n_samples_per_label}."
            )
        self.indices = indices
        self.n_samples_per_label = n_samples_per_label

        labels, unlabeled_category = registered_labels(adata_manager)
        subset_labels = labels[indices]
        # indices of the loaded cells, one array per label present among them
        self.labeled_locs = [
            indices[subset_labels == label]
            for label in np.unique(labels)
            if label != unlabeled_category and (subset_labels == label).any()
        ]
        index_sets = [indices]
        if self.labeled_locs:
            index_sets.append(self.subsample_labels())
        super().__init__(
            adata_manager=adata_manager,
            indices_list=index_sets,
            shuffle=shuffle,
            batch_size=batch_size,
            data_and_attributes=data_and_attributes,
            drop_last=drop_last,
            **data_loader_kwargs,
        )

    def resample_labels(self) -> None:
        """Draw a new subsample of the labelled cells (no-op without ``n_samples_per_label``)."""
        if len(self.dataloaders) < 2 or self.n_samples_per_label is None:
            return
        self.dataloaders[1] = self._make_loader(self.subsample_labels())

    def subsample_labels(self) -> np.ndarray:
        """Up to ``n_samples_per_label`` cells of each label (``np.random``), concatenated.

        Returns
        -------
        numpy.ndarray
            Indices of the labelled cells to load.
        """
        if not self.labeled_locs:
            return np.array([], dtype=np.int64)
        if self.n_samples_per_label is None:
            return np.concatenate(self.labeled_locs)
        # numpy's global generator, seeded by ``settings.seed`` (as in scvi-tools)
        drawn = [
            locs
            if len(locs) < self.n_samples_per_label
            else np.random.choice(locs, int(self.n_samples_per_label), replace=False)  # noqa: NPY002
            for locs in self.labeled_locs
        ]
        return np.concatenate(drawn)


__all__ = ["SemiSupervisedDataLoader", "registered_labels"]
