"""Reading and writing model files: safe unpickling and atomic writes."""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Callable
from typing import Any

import torch

logger = logging.getLogger("scvi_rs")

# Everything a model.pt of scvi-tools or scvi-rs holds besides tensors: numpy arrays and
# scalars (registry mappings, var names, indices) and pandas frames (history). Nothing
# callable beyond these constructors is ever resolved while unpickling.
_ALLOWED_GLOBALS = (
    "builtins.slice",
    "builtins.set",
    "builtins.frozenset",
    "builtins.complex",
    "numpy.ndarray",
    "numpy.dtype",
    "numpy._core.multiarray._reconstruct",
    "numpy._core.multiarray.scalar",
    "numpy.core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar",
    "numpy.ma.core._mareconstruct",
    "numpy.ma.core.MaskedArray",
    "pandas.core.frame.DataFrame",
    "pandas.core.series.Series",
    "pandas.core.internals.managers.BlockManager",
    "pandas.core.internals.managers.SingleBlockManager",
    "pandas.core.internals.blocks.new_block",
    "pandas._libs.internals._unpickle_block",
    "pandas.core.indexes.base.Index",
    "pandas.core.indexes.base._new_Index",
    "pandas.core.indexes.range.RangeIndex",
    "pandas.core.indexes.numeric.Int64Index",
    "pandas.core.indexes.numeric.Float64Index",
    "pandas.core.indexes.multi.MultiIndex",
    "pandas.core.arrays.categorical.Categorical",
    "pandas.core.indexes.category.CategoricalIndex",
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked",
)


def _resolve(dotted: str) -> Any | None:
    module_name, _, attr = dotted.rpartition(".")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return None
    return getattr(module, attr, None)


def _allowed_globals() -> list[Any]:
    import numpy.dtypes

    objects = [obj for obj in map(_resolve, _ALLOWED_GLOBALS) if obj is not None]
    objects += [getattr(numpy.dtypes, n) for n in dir(numpy.dtypes) if n.endswith("DType")]
    return objects


def safe_torch_load(path: str | os.PathLike, map_location: Any = None) -> Any:
    """Load a ``torch.save`` file without executing pickled code.

    Only tensors, containers, numpy arrays/scalars and pandas frames/indexes are rebuilt
    (``weights_only=True`` with an explicit allow-list); anything else is refused.

    Parameters
    ----------
    path
        The file to load.
    map_location
        Passed to :func:`torch.load`.

    Returns
    -------
    Any
        The unpickled object.

    Raises
    ------
    ValueError
        If the file is corrupt or truncated, or asks to build an object outside the allow-list.
    """
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        detail = str(err)
        marker = "WeightsUnpickler error:"
        if marker in detail:
            detail = detail.split(marker, 1)[1].strip().split("\n\n", 1)[0]
        raise ValueError(
            f"Refusing to load {path}: it contains objects that scvi-rs does not unpickle "
            f"({detail}). Only tensors, numpy arrays and pandas frames are allowed."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"The model file {path} is corrupt or truncated: {err}") from err


def write_files_atomically(writers: dict[str, Callable[[str], None]]) -> None:
    """Write several files so that either all of them are replaced or none is.

    Parameters
    ----------
    writers
        Final path to a function writing the file's content to the path it is given.
    """
    staged: list[tuple[str, str]] = []
    try:
        for final_path, write in writers.items():
            parent = os.path.dirname(os.path.abspath(final_path))
            fd, tmp = tempfile.mkstemp(
                prefix=f".{os.path.basename(final_path)}.", suffix=".tmp", dir=parent
            )
            os.close(fd)
            staged.append((tmp, final_path))
            write(tmp)
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
        raise
    for tmp, final_path in staged:
        os.replace(tmp, final_path)
