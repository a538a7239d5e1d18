"""``AnnDataLoader``: whole-minibatch loading from a registered AnnData."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    Subset,
)

from .._settings import settings
from ..data._anntorchdataset import AnnTorchDataset
from ._prefetch import (
    BufferPool,
    PrefetchIterator,
    pin_memory_available,
    to_numpy,
    to_torch,
    torch_allocator,
)
from ._samplers import BatchDistributedSampler

if TYPE_CHECKING:
    from ..data import AnnDataManager

logger = logging.getLogger("scvi_rs")

_DEFAULT_PREFETCH = 2
# Small minibatches go to the background thread in groups of about this many bytes of X.
_GROUP_BYTES = 4 << 20
_MAX_GROUP = 8


def _identity(batch: Any) -> Any:
    """``collate_fn`` of ``iter_ndarray=True``: the dataset's numpy arrays as they are."""
    return batch


def _planned_batches(batch_sampler: BatchSampler) -> Iterator[np.ndarray]:
    """The index batches of ``BatchSampler(Sequential/RandomSampler)``, as numpy slices.

    Same batches, and the same draws from torch's RNG at the same moments, as iterating the
    batch sampler (``RandomSampler`` draws its seed from the global generator when the first
    batch is requested, then permutes with a private generator), without building a Python
    list per batch.
    """
    inner = batch_sampler.sampler
    n = len(inner)
    if isinstance(inner, RandomSampler):
        if inner.generator is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
            generator = torch.Generator()
            generator.manual_seed(seed)
        else:
            generator = inner.generator
        order = torch.randperm(n, generator=generator).numpy()
    else:
        order = np.arange(n, dtype=np.int64)
    batch_size = batch_sampler.batch_size
    stop = (n // batch_size) * batch_size if batch_sampler.drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
    if isinstance(inner, RandomSampler) and inner.generator is not None:
        torch.randperm(n, generator=generator)  # RandomSampler's trailing (empty) draw


def _plannable(sampler: Any) -> bool:
    if type(sampler) is not BatchSampler:
        return False
    inner = sampler.sampler
    if type(inner) is SequentialSampler:
        return True
    return (
        type(inner) is RandomSampler
        and not inner.replacement
        and inner.num_samples == len(inner.data_source)
        and len(inner.data_source) > 0
    )


class AnnDataLoader(DataLoader):
    """Loads minibatches of the fields registered by an :class:`~scvi_rs.data.AnnDataManager`.

    Each minibatch is read with one call into the dataset (the sampler yields whole index
    batches), so sparse X is gathered row block by row block by the Rust core. With
    ``num_workers=0`` (the default) a background thread prepares the next minibatches while
    the current one is in use.

    Parameters
    ----------
    adata_manager
        Manager with a registered AnnData.
    indices
        Cells to load (ints or a boolean mask); all cells by default. With ``shuffle=False``
        the minibatches follow this order.
    batch_size
        Minibatch size (per replica with ``distributed_sampler``).
    shuffle
        Shuffle the cells each epoch (torch's global RNG, as ``RandomSampler``).
    sampler
        A custom sampler; then the loader behaves exactly like a torch ``DataLoader`` given
        that sampler. Cannot be combined with ``distributed_sampler``.
    drop_last
        Drop the last incomplete minibatch.
    drop_dataset_tail
        With ``distributed_sampler``: drop the tail of the data to split it evenly between
        replicas (else pad by repeating cells).
    data_and_attributes
        Registry keys to load: a list, a dict of key to numpy dtype, or None for all.
    iter_ndarray
        Yield numpy arrays instead of torch tensors.
    distributed_sampler
        Use :class:`~scvi_rs.dataloaders.BatchDistributedSampler` (needs
        ``torch.distributed`` or explicit ``num_replicas``/``rank`` in ``kwargs``).
    load_sparse_tensor
        Yield sparse X as torch sparse CSR (CSC for CSC data) tensors, to densify on the
        device.
    **kwargs
        Further ``torch.utils.data.DataLoader`` arguments. ``num_workers`` and
        ``persistent_workers`` default to ``settings.dl_num_workers`` and
        ``settings.dl_persistent_workers``; ``pin_memory=True`` allocates the minibatches
        in page-locked memory (ignored without an accelerator). With ``num_workers=0``,
        ``prefetch_factor`` sets how many minibatches the background thread prepares ahead
        (default 2).
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices: list[int] | list[bool] | None = None,
        batch_size: int = 128,
        shuffle: bool = False,
        sampler: Sampler | None = None,
        drop_last: bool = False,
        drop_dataset_tail: bool = False,
        data_and_attributes: list[str] | dict[str, np.dtype] | None = None,
        iter_ndarray: bool = False,
        distributed_sampler: bool = False,
        load_sparse_tensor: bool = False,
        **kwargs: Any,
    ) -> None:
        if indices is None:
            indices = np.arange(adata_manager.adata.shape[0])
        else:
            if hasattr(indices, "dtype") and indices.dtype == np.dtype("bool"):
                indices = np.where(indices)[0].ravel()
            indices = np.asarray(indices)
        self.indices = indices
        self.dataset = adata_manager.create_torch_dataset(
            indices=indices,
            data_and_attributes=data_and_attributes,
            load_sparse_tensor=load_sparse_tensor,
        )
        if "num_workers" not in kwargs:
            kwargs["num_workers"] = settings.dl_num_workers
        if "persistent_workers" not in kwargs:
            kwargs["persistent_workers"] = settings.dl_persistent_workers
        prefetch = None
        if not kwargs["num_workers"]:
            prefetch = kwargs.pop("prefetch_factor", None)
        self._prefetch_depth = _DEFAULT_PREFETCH if prefetch is None else max(1, int(prefetch))

        # DistributedSampler arguments (an extension: the reference needs torch.distributed)
        sampler_kwargs = {}
        if distributed_sampler:
            for name in ("num_replicas", "rank", "seed"):
                if name in kwargs:
                    sampler_kwargs[name] = kwargs.pop(name)

        self.kwargs = copy.copy(kwargs)

        if sampler is not None and distributed_sampler:
            raise ValueError("Cannot specify both `sampler` and `distributed_sampler`.")

        self._owns_sampler = sampler is None
        if sampler is None:
            if not distributed_sampler:
                sampler_cls = RandomSampler if shuffle else SequentialSampler
                sampler = BatchSampler(
                    sampler=sampler_cls(self.dataset), batch_size=batch_size, drop_last=drop_last
                )
            else:
                sampler = BatchDistributedSampler(
                    self.dataset,
                    batch_size=batch_size,
                    drop_last=drop_last,
                    drop_dataset_tail=drop_dataset_tail,
                    shuffle=shuffle,
                    **sampler_kwargs,
                )
            # the sampler yields whole index batches: no automatic batching
            self.kwargs.update({"batch_size": None, "shuffle": False})
        self.kwargs.update({"sampler": sampler})
        if iter_ndarray:
            self.kwargs.update({"collate_fn": _identity})
        self._user_collate = self.kwargs.get("collate_fn")
        self.iter_ndarray = iter_ndarray
        self.load_sparse_tensor = load_sparse_tensor

        super().__init__(self.dataset, **self.kwargs)
        self._buffer_pool = BufferPool(max_buffers=self._prefetch_depth + 3)

    # -- iteration -------------------------------------------------------------------------
    def _direct_source(self) -> tuple[AnnTorchDataset, np.ndarray | None] | None:
        """The AnnTorchDataset (and subset indices) to read from directly, if possible."""
        ds = self.dataset
        base = None
        if type(ds) is Subset:
            base = np.asarray(ds.indices)
            ds = ds.dataset
        if not isinstance(ds, AnnTorchDataset):
            return None
        if type(ds).__getitem__ is not AnnTorchDataset.__getitem__:
            return None  # a subclass with its own __getitem__: honour it
        if base is not None and base.size == 0:
            base = base.astype(np.int64)
        return ds, base

    def __iter__(self) -> Iterator[Any]:
        source = self._direct_source() if self.num_workers == 0 else None
        if source is None or not self._owns_sampler:
            return super().__iter__()
        dataset, base = source
        dataset._prepare()  # readers are built on this thread, never on the worker
        # torch's single-process iterator draws a base seed when it is created; so do we
        torch.empty((), dtype=torch.int64).random_(generator=self.generator).item()
        pin = bool(self.pin_memory) and pin_memory_available()
        alloc = torch_allocator(pin, None if pin else self._buffer_pool)
        collate = self._user_collate

        def fetch(positions: Any) -> Any:
            positions = np.asarray(positions, dtype=np.int64)
            rows = dataset._rows(base[positions] if base is not None else positions)
            batch = dataset._load(rows, alloc)
            if collate is not None:
                return collate(to_numpy(batch))
            return to_torch(batch, pin)

        sampler = self.sampler
        batches = _planned_batches(sampler) if _plannable(sampler) else iter(sampler)
        batch_size = getattr(sampler, "batch_size", None) or 1
        batch_bytes = batch_size * 4 * max(1, int(dataset.adata_manager.adata.n_vars))
        group = int(min(_MAX_GROUP, max(1, _GROUP_BYTES // batch_bytes)))
        pool_size = (self._prefetch_depth + 1) * group + 3
        self._buffer_pool.max_buffers = max(self._buffer_pool.max_buffers, pool_size)
        return PrefetchIterator(
            fetch, batches, depth=self._prefetch_depth, length=len(self), group=group
        )


__all__ = ["AnnDataLoader"]
