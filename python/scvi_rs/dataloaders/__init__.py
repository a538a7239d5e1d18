"""Minibatch loading and splitting (``scvi.dataloaders`` compatible)."""

from __future__ import annotations

from ..data._anntorchdataset import AnnTorchDataset
from ._ann_dataloader import AnnDataLoader
from ._anncollection import CollectionAdapter
from ._block_loader import BlockLoader
from ._concat_dataloader import ConcatDataLoader
from ._data_splitting import (
    DataSplitter,
    validate_data_split,
    validate_data_split_with_external_indexing,
)
from ._device_backed import DeviceBackedDataSplitter
from ._samplers import BatchDistributedSampler
from ._semisupervised_dataloader import SemiSupervisedDataLoader
from ._semisupervised_splitting import SemiSupervisedDataSplitter

__all__ = [
    "AnnDataLoader",
    "AnnTorchDataset",
    "BatchDistributedSampler",
    "BlockLoader",
    "CollectionAdapter",
    "ConcatDataLoader",
    "DataSplitter",
    "DeviceBackedDataSplitter",
    "SemiSupervisedDataLoader",
    "SemiSupervisedDataSplitter",
    "validate_data_split",
    "validate_data_split_with_external_indexing",
]
