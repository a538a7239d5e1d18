"""Minibatch loading and splitting (``scvi.dataloaders`` compatible)."""

from __future__ import annotations

from ..data._anntorchdataset import AnnTorchDataset
from ._ann_dataloader import AnnDataLoader
from ._data_splitting import (
    DataSplitter,
    validate_data_split,
    validate_data_split_with_external_indexing,
)
from ._device_backed import DeviceBackedDataSplitter
from ._samplers import BatchDistributedSampler

__all__ = [
    "AnnDataLoader",
    "AnnTorchDataset",
    "BatchDistributedSampler",
    "DataSplitter",
    "DeviceBackedDataSplitter",
    "validate_data_split",
    "validate_data_split_with_external_indexing",
]
