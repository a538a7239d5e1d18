"""``ConcatDataLoader``: minibatches of several index sets of one AnnData, side by side."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
from torch.utils.data import DataLoader

from ._ann_dataloader import AnnDataLoader

if TYPE_CHECKING:
    from ..data import AnnDataManager


def _close(iterator: Any) -> None:
    close = getattr(iterator, "close", None)
    if callable(close):
        close()


def _cycle(loader: AnnDataLoader) -> Iterator[Any]:
    """Iterate ``loader`` again and again (a fresh pass, so a fresh shuffle, each time)."""
    while True:
        produced = False
        passing = iter(loader)
        try:
            for batch in passing:
                produced = True
                yield batch
        finally:
            _close(passing)  # stops a prefetching thread when the epoch ends mid-pass
        if not produced:
            return


class ConcatDataLoader(DataLoader):
    """Loads one minibatch from each of several index sets per step.

    The loader with the most minibatches sets the epoch's length; the others start over
    whenever they run out. Each step yields a tuple of minibatches in the order of
    ``indices_list``.

    Parameters
    ----------
    adata_manager
        Manager with a registered AnnData.
    indices_list
        One array of cell indices per loader.
    shuffle
        Shuffle each loader's cells.
    batch_size
        Minibatch size of every loader.
    data_and_attributes
        Registry keys to load (see :class:`~scvi_rs.dataloaders.AnnDataLoader`).
    drop_last
        Drop each loader's last incomplete minibatch.
    distributed_sampler
        Shard each loader across DDP processes; then every loader runs once per epoch and
        the epoch ends with the shortest.
    **data_loader_kwargs
        Further :class:`~scvi_rs.dataloaders.AnnDataLoader` arguments.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices_list: list[list[int] | np.ndarray],
        shuffle: bool = False,
        batch_size: int = 128,
        data_and_attributes: list[str] | dict | None = None,
        drop_last: bool | int = False,
        distributed_sampler: bool = False,
        **data_loader_kwargs: Any,
    ) -> None:
        if len(indices_list) == 0:
            raise ValueError("`indices_list` must hold at least one array of indices.")
        self.adata_manager = adata_manager
        self.data_loader_kwargs = data_loader_kwargs
        self.data_and_attributes = data_and_attributes
        self._shuffle = shuffle
        self._batch_size = batch_size
        self._drop_last = drop_last
        self._distributed_sampler = distributed_sampler
        if distributed_sampler:
            self.data_loader_kwargs.pop("sampler", None)
        self.dataloaders = [self._make_loader(indices) for indices in indices_list]
        self.data_loader_kwargs.pop("drop_dataset_tail", None)
        super().__init__(self.largest_dl)

    def _make_loader(self, indices: list[int] | np.ndarray) -> AnnDataLoader:
        return AnnDataLoader(
            self.adata_manager,
            indices=indices,
            shuffle=self._shuffle,
            batch_size=self._batch_size,
            data_and_attributes=self.data_and_attributes,
            drop_last=self._drop_last,
            distributed_sampler=self._distributed_sampler,
            **self.data_loader_kwargs,
        )

    @property
    def largest_dl(self) -> AnnDataLoader:
        """The loader with the most minibatches (the first of them on a tie)."""
        return self.dataloaders[int(np.argmax([len(dl) for dl in self.dataloaders]))]

    def __len__(self) -> int:
        return len(self.largest_dl)

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        if self._distributed_sampler:
            iterators = [iter(dl) for dl in self.dataloaders]
        else:
            largest = self.largest_dl
            iterators = [iter(dl) if dl is largest else _cycle(dl) for dl in self.dataloaders]
        try:
            yield from zip(*iterators, strict=False)
        finally:
            for iterator in iterators:
                _close(iterator)


__all__ = ["ConcatDataLoader"]
