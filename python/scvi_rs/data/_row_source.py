"""``RowSource``: a registered matrix whose rows are read on demand, never as a whole."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any

import numpy as np


class RowSource(ABC):
    """A 2-D matrix (cells x features) that lives elsewhere and is read a few rows at a time.

    A field may register one in place of an in-memory matrix (for example a layer of an
    AnnCollection). The registration checks read its first rows only, and
    :class:`~scvi_rs.data.AnnTorchDataset` reads the rows of each minibatch.

    Subclasses define :attr:`shape`, :attr:`dtype` and :meth:`__getitem__`.
    """

    ndim = 2

    @property
    @abstractmethod
    def shape(self) -> tuple[int, int]:
        """``(n_obs, n_vars)``."""

    @property
    @abstractmethod
    def dtype(self) -> np.dtype:
        """The dtype of the stored values."""

    @abstractmethod
    def __getitem__(self, rows: Any) -> Any:
        """Rows ``rows`` (an int array in any order, repeats allowed, or a slice).

        Returns a numpy array or a scipy sparse matrix with one row per requested row, in
        the order requested.
        """

    def __len__(self) -> int:
        return int(self.shape[0])


__all__ = ["RowSource"]
