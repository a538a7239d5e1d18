"""Train/validation/test splitting: ``validate_data_split`` rules and ``DataSplitter``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import _core
from .._settings import settings
from ._ann_dataloader import AnnDataLoader
from ._block_loader import BlockLoader, block_loader_kwargs

if TYPE_CHECKING:
    from ..data import AnnDataManager


def validate_data_split(
    n_samples: int,
    train_size: float,
    validation_size: float | None = None,
    batch_size: int | None = None,
    drop_last: bool | int = False,
    train_size_is_none: bool | int = True,
) -> tuple[int, int]:
    """Check the split parameters and return ``(n_train, n_val)``.

    Parameters
    ----------
    n_samples
        Number of cells to split.
    train_size
        Fraction of cells for training, ``0 < train_size <= 1``; ``ceil(train_size * n)``.
    validation_size
        Fraction for validation, ``0 <= validation_size < 1``; ``floor(n * validation_size)``;
        the remaining cells when None.
    batch_size
        Training minibatch size. When the last training minibatch would hold one or two
        cells (and ``drop_last`` is false) a default ``train_size`` moves them to the
        validation set (with a warning); an explicit one only warns.
    drop_last
        Whether the training loader drops its last incomplete minibatch.
    train_size_is_none
        Whether the user left ``train_size`` unset.

    Returns
    -------
    tuple[int, int]
        Numbers of training and validation cells; the rest is the test set.
    """
    return _core.split_sizes(
        n_samples,
        train_size,
        validation_size,
        batch_size,
        drop_last,
        train_size_is_none,
        stacklevel=settings.warnings_stacklevel,
    )


def _pad_external_indexing(external_indexing: Any) -> None:
    """Pad the caller's list to ``[train, valid, test]`` with empty arrays, as the reference."""
    if not isinstance(external_indexing, list):
        return
    while len(external_indexing) < 3:
        external_indexing.append(None)
    for i in range(3):
        if external_indexing[i] is None:
            external_indexing[i] = np.array([])


def _external_split(
    n_samples: int,
    external_indexing: Any,
    batch_size: int | None,
    drop_last: bool | int,
    stacklevel: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    _pad_external_indexing(external_indexing)
    return _core.validate_external_indexing(
        n_samples, external_indexing, batch_size, drop_last, stacklevel=stacklevel
    )


def validate_data_split_with_external_indexing(
    n_samples: int,
    external_indexing: list[np.ndarray] | None = None,
    batch_size: int | None = None,
    drop_last: bool | int = False,
) -> tuple[int, int]:
    """Check ``external_indexing = [train, valid, test]`` and return ``(n_train, n_val)``.

    Parameters
    ----------
    n_samples
        Number of cells.
    external_indexing
        A list of up to three numpy integer arrays; missing entries (or None) become empty
        arrays, in the caller's list too.
    batch_size
        Training minibatch size, for the small-last-batch warning.
    drop_last
        Whether the training loader drops its last incomplete minibatch.

    Returns
    -------
    tuple[int, int]
        ``(len(train), len(valid))``.

    Raises
    ------
    ValueError
        Not a list, an entry that is not a numpy array, or overlapping sets.
    Warning
        Duplicates inside a set, or fewer distinct indices than ``n_samples`` (raised, as in
        scvi-tools).
    IndexError
        An index outside ``[0, n_samples)``.
    """
    train, valid, _ = _external_split(
        n_samples, external_indexing, batch_size, drop_last, settings.warnings_stacklevel + 1
    )
    return len(train), len(valid)


class DataSplitter:
    """Splits the registered cells into training, validation and test sets and makes loaders.

    Parameters
    ----------
    adata_manager
        Manager with a registered AnnData.
    train_size
        Fraction of cells for training; ``None`` (or 0) means 0.9, with one or two cells of
        a tiny last minibatch moved to validation.
    validation_size
        Fraction for validation; the rest of the cells when None.
    shuffle_set_split
        Permute the cells before splitting (``np.random.RandomState(settings.seed)``, so the
        sets are those of scvi-tools for the same seed); otherwise split in order.
    load_sparse_tensor
        Load X as torch sparse tensors (densified by :meth:`on_after_batch_transfer`).
    pin_memory
        Allocate minibatches in page-locked memory (with an accelerator).
    external_indexing
        ``[train, valid, test]`` integer arrays to use instead of the sizes.
    **kwargs
        Loader arguments (``batch_size``, ``drop_last``, ``num_workers``, ...). ``load_mode``
        (``"blocks"`` or ``"random"``; blocks by default when X is on disk), ``block_size``
        and ``shuffle_window`` choose the :class:`~scvi_rs.dataloaders.BlockLoader`.

    Notes
    -----
    Sizes are computed at construction (``n_train``, ``n_val``); :meth:`setup` draws the
    sets: validation ``perm[:n_val]``, training ``perm[n_val:n_val + n_train]``, test the
    rest.
    """

    data_loader_cls = AnnDataLoader

    def __init__(
        self,
        adata_manager: AnnDataManager,
        train_size: float | None = None,
        validation_size: float | None = None,
        shuffle_set_split: bool = True,
        load_sparse_tensor: bool = False,
        pin_memory: bool = False,
        external_indexing: list[np.ndarray] | None = None,
        **kwargs: Any,
    ) -> None:
        self.adata_manager = adata_manager
        self.train_size_is_none = not bool(train_size)
        self.train_size = 0.9 if self.train_size_is_none else float(train_size)
        self.validation_size = validation_size
        self.shuffle_set_split = shuffle_set_split
        self.load_sparse_tensor = load_sparse_tensor
        self.drop_last = kwargs.pop("drop_last", False)
        self._block_kwargs = block_loader_kwargs(adata_manager, kwargs, self)
        self.data_loader_kwargs = kwargs
        self.pin_memory = pin_memory
        self.external_indexing = external_indexing
        batch_size = self.data_loader_kwargs.get("batch_size") or settings.batch_size
        n_obs = adata_manager.adata.n_obs
        if external_indexing is not None:
            self._external_sets = _external_split(
                n_obs,
                external_indexing,
                batch_size,
                self.drop_last,
                settings.warnings_stacklevel,
            )
            self.n_train, self.n_val = (len(a) for a in self._external_sets[:2])
        else:
            self._external_sets = None
            self.n_train, self.n_val = validate_data_split(
                n_obs,
                self.train_size,
                self.validation_size,
                batch_size,
                self.drop_last,
                self.train_size_is_none,
            )

    def setup(self, stage: str | None = None) -> None:
        """Draw ``train_idx``, ``val_idx`` and ``test_idx``."""
        if self._external_sets is not None:
            self.train_idx, self.val_idx, self.test_idx = self._external_sets
            return
        n_train, n_val = self.n_train, self.n_val
        n_obs = self.adata_manager.adata.n_obs
        if self.shuffle_set_split:
            seed = settings.seed
            indices = _core.legacy_permutation(n_obs, None if seed is None else int(seed))
        else:
            indices = np.arange(n_obs)
        # the same cells as int32 where they fit: the three sets are views of one array,
        # 4 bytes per cell of the data set (80 MB less for 20M cells)
        if n_obs <= np.iinfo(np.int32).max:
            indices = indices.astype(np.int32)
        self.val_idx = indices[:n_val]
        self.train_idx = indices[n_val : n_val + n_train]
        self.test_idx = indices[n_val + n_train :]

    def _loader(self, indices: np.ndarray, shuffle: bool, drop_last: bool) -> AnnDataLoader:
        if self._block_kwargs is not None:
            return BlockLoader(
                self.adata_manager,
                indices=indices,
                shuffle=shuffle,
                drop_last=drop_last,
                load_sparse_tensor=self.load_sparse_tensor,
                pin_memory=self.pin_memory,
                **self._block_kwargs,
                **self.data_loader_kwargs,
            )
        return self.data_loader_cls(
            self.adata_manager,
            indices=indices,
            shuffle=shuffle,
            drop_last=drop_last,
            load_sparse_tensor=self.load_sparse_tensor,
            pin_memory=self.pin_memory,
            **self.data_loader_kwargs,
        )

    def train_dataloader(self) -> AnnDataLoader:
        """Shuffled loader over the training cells."""
        return self._loader(self.train_idx, shuffle=True, drop_last=self.drop_last)

    def val_dataloader(self) -> AnnDataLoader | None:
        """Loader over the validation cells, or None when there are none."""
        if len(self.val_idx) > 0:
            return self._loader(self.val_idx, shuffle=False, drop_last=False)
        return None

    def test_dataloader(self) -> AnnDataLoader | None:
        """Loader over the test cells, or None when there are none."""
        if len(self.test_idx) > 0:
            return self._loader(self.test_idx, shuffle=False, drop_last=False)
        return None

    # -- batch transfer hooks (Lightning's DataModule names) --------------------------------
    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Hook before the minibatch is moved to the device; returns it unchanged."""
        return batch

    def transfer_batch_to_device(
        self, batch: Any, device: torch.device | str, dataloader_idx: int
    ) -> Any:
        """Move every tensor of ``batch`` to ``device`` (non-blocking from pinned memory)."""
        if isinstance(batch, torch.Tensor):
            return batch.to(device, non_blocking=True)
        if isinstance(batch, Mapping):
            return {
                k: self.transfer_batch_to_device(v, device, dataloader_idx)
                for k, v in batch.items()
            }
        if isinstance(batch, (list, tuple)):
            return type(batch)(
                self.transfer_batch_to_device(v, device, dataloader_idx) for v in batch
            )
        return batch

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """Densify sparse CSR/CSC tensors of ``batch`` when ``load_sparse_tensor`` is set."""
        if self.load_sparse_tensor:
            for key, val in batch.items():
                layout = val.layout if isinstance(val, torch.Tensor) else None
                if layout is torch.sparse_csr or layout is torch.sparse_csc:
                    batch[key] = val.to_dense()
        return batch


__all__ = [
    "DataSplitter",
    "validate_data_split",
    "validate_data_split_with_external_indexing",
]
