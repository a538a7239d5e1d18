"""``BatchDistributedSampler``: a ``DistributedSampler`` that yields whole index batches."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

from torch.utils.data import Dataset, DistributedSampler


class BatchDistributedSampler(DistributedSampler):
    """``EXPERIMENTAL`` Splits the data between replicas and yields minibatches of indices.

    Each replica sees its own share of the data (``torch.distributed`` rank and world size,
    or ``num_replicas``/``rank`` in ``kwargs``), grouped into lists of ``batch_size``
    indices so that every minibatch is one call into the dataset.

    Parameters
    ----------
    dataset
        The dataset to sample from.
    batch_size
        Minibatch size per replica (the effective size is ``batch_size * num_replicas``).
    drop_last
        Drop the last incomplete minibatch of each replica.
    drop_dataset_tail
        Drop the tail of the data to split it evenly between replicas; otherwise the
        sampler pads with repeated indices.
    **kwargs
        ``DistributedSampler`` arguments (``num_replicas``, ``rank``, ``shuffle``, ``seed``).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int = 128,
        drop_last: bool = False,
        drop_dataset_tail: bool = False,
        **kwargs: Any,
    ) -> None:
        super().__init__(dataset, drop_last=drop_dataset_tail, **kwargs)
        self.batch_size = batch_size
        self.drop_last_batch = drop_last  # `drop_last` is the parent's (dataset tail)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(super().__iter__())
        size = self.batch_size
        stop = (len(indices) // size) * size if self.drop_last_batch else len(indices)
        for start in range(0, stop, size):
            yield indices[start : start + size]

    def __len__(self) -> int:
        """Number of minibatches per replica."""
        if self.drop_last_batch:
            return self.num_samples // self.batch_size
        return math.ceil(self.num_samples / self.batch_size)


__all__ = ["BatchDistributedSampler"]
