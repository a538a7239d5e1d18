"""Reading and writing model files: safe unpickling and atomic writes."""

from __future__ import annotations

import contextlib
import functools
import importlib
import importlib.util
import logging
import os
import pickle
import stat
import types
import uuid
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
    "builtins.dict",
    "builtins.list",
    "builtins.bytes",
    "collections.defaultdict",
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


# torch's own rebuild functions (tensors, parameters, sizes, dtypes, devices) are taken from
# the allow-list of its weights_only loader; these are the ones a state dict needs when that
# list is unavailable (older torch).
_TORCH_FALLBACK_GLOBALS = (
    "collections.OrderedDict",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.Size",
    "torch.device",
    "_codecs.encode",
)


# Taken out of torch's weights-only list: no model file needs them, and each lets a small
# file do harm: `bytearray(n)` allocates n bytes from a few bytes of pickle; sparse tensors
# are rebuilt without checking their indices (the first `.to_dense()` writes out of bounds);
# quantized, meta and subclass tensors call back into code a model file never needs.
_REFUSED_TORCH_GLOBALS = (
    "builtins.bytearray",
    "torch._utils._rebuild_sparse_tensor",
    "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_wrapper_subclass",
    "torch._utils._rebuild_meta_tensor_no_storage",
    "torch._utils._rebuild_nested_tensor",
)


def _refused(name: str) -> bool:
    return name in _REFUSED_TORCH_GLOBALS or ".sparse." in name


@functools.cache
def _allowed_globals() -> dict[str, Any]:
    import numpy.dtypes

    allowed: dict[str, Any] = {}
    torch_allowed = getattr(torch._weights_only_unpickler, "_get_allowed_globals", None)
    if callable(torch_allowed):
        allowed.update((name, obj) for name, obj in torch_allowed().items() if not _refused(name))
    for name in (*_TORCH_FALLBACK_GLOBALS, *_ALLOWED_GLOBALS):
        obj = _resolve(name)
        if obj is not None:
            allowed[name] = obj
    for name in dir(numpy.dtypes):
        if name.endswith("DType"):
            allowed[f"numpy.dtypes.{name}"] = getattr(numpy.dtypes, name)
    return allowed


# The constraints of a Pyro parameter store (`pyro.get_param_store().get_state()`, which
# scvi-tools saves beside every state dict): each pickles as NEWOBJ of its class (no
# arguments, `__init__` not called) and a BUILD of its `__dict__` (bounds, nested
# constraints), so resolving the class is all that is needed, and no code runs.
_CONSTRAINT_MODULES = ("torch.distributions.constraints", "pyro.distributions.constraints")


@functools.cache
def _constraint_class(module: str, name: str) -> type | None:
    """The constraint class ``module.name``, or None when it is not a plain constraint.

    Accepted: a class defined in one of :data:`_CONSTRAINT_MODULES` whose bases are all
    constraints (``dependent_property`` also derives from ``property``: refused), with no
    ``__setstate__`` or ``__reduce__`` of its own (so BUILD only fills its ``__dict__``).
    """
    if module not in _CONSTRAINT_MODULES:
        return None
    try:
        namespace = importlib.import_module(module)
    except ImportError:  # pyro's constraints without pyro installed
        return None
    from torch.distributions.constraints import Constraint

    cls = getattr(namespace, name, None)
    if not isinstance(cls, type) or not issubclass(cls, Constraint) or cls.__module__ != module:
        return None
    if not all(base is object or issubclass(base, Constraint) for base in cls.__mro__):
        return None
    if getattr(cls, "__setstate__", None) is not None:
        return None
    if any(
        "__reduce__" in vars(base) or "__reduce_ex__" in vars(base) for base in cls.__mro__[:-1]
    ):
        return None
    return cls


class _AllowListUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the globals of :func:`_allowed_globals` and constraints."""

    def find_class(self, module: str, name: str) -> Any:
        module = {"__builtin__": "builtins", "copy_reg": "copyreg"}.get(module, module)
        obj = _allowed_globals().get(f"{module}.{name}")
        if obj is None:
            obj = _constraint_class(module, name)
        if obj is None:
            hint = ""
            if module.split(".")[0] == "pyro" and importlib.util.find_spec("pyro") is None:
                hint = " (it needs Pyro, which is not installed)"
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed{hint}")
        return obj


# The `pickle_module` torch.load uses: torch wraps `Unpickler` (to map its storage types)
# and calls our `find_class` for every other global, so nothing outside the allow-list is
# ever imported or called, whatever version of torch does the loading.
_allow_list_pickle = types.SimpleNamespace(
    Unpickler=_AllowListUnpickler,
    UnpicklingError=pickle.UnpicklingError,
    load=lambda file, **kwargs: _AllowListUnpickler(file, **kwargs).load(),
    __name__="scvi_rs_allow_list_pickle",
)


def check_regular_file(path: str | os.PathLike, what: str = "file") -> None:
    """Raise ``ValueError`` unless ``path`` is a regular file (not a FIFO, device or folder).

    Reading a FIFO blocks until some other process writes to it, and a device may never end.

    Parameters
    ----------
    path
        The path to check.
    what
        What the file is, for the message.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise
    except OSError as err:
        raise ValueError(f"Cannot read the {what} {path}: {err}") from err
    if not stat.S_ISREG(mode):
        raise ValueError(f"The {what} {path} is not a regular file; refusing to read it.")


def _check_zip_records(path: str | os.PathLike) -> None:
    """Refuse what lets a small file allocate without bound while it is read.

    ``torch.save`` stores every record uncompressed (a deflated one inflates to any size),
    and torch checks each storage's claimed size against its record (so the zip format's
    sizes are bounded by the file); the pre-1.6 format is refused.
    """
    if not zipfile.is_zipfile(path):
        # torch's pre-1.6 format allocates each storage at the size its pickle claims before
        # reading it from the file, so a few bytes can ask for terabytes: not read at all.
        raise ValueError(
            f"The model file {path} is corrupt or truncated: it is not a zip-format torch "
            "file (torch >= 1.6 writes nothing else; re-save an older file with a current torch)."
        )
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise ValueError(f"The model file {path} is corrupt or truncated: {err}") from err
    for info in infos:
        if info.compress_type != zipfile.ZIP_STORED:
            raise ValueError(
                f"Refusing to load {path}: its record {info.filename!r} is compressed "
                f"({info.compress_size} bytes inflating to {info.file_size}); torch.save "
                "never writes compressed records."
            )


def _unpickling_error(path: str | os.PathLike, err: Exception, what: str) -> ValueError:
    """The ``ValueError`` for an unpickling failure: a refused global, or a damaged file."""
    if "is not allowed" in str(err):
        return ValueError(
            f"Refusing to load {path}: it contains objects that scvi-rs does not unpickle "
            f"({err}). Only tensors, numpy arrays, pandas frames and the constraints of a "
            "Pyro parameter store are allowed."
        )
    return ValueError(f"The {what} {path} is corrupt or truncated: {err}")


def safe_torch_load(path: str | os.PathLike, map_location: Any = None) -> Any:
    """Load a ``torch.save`` file without executing pickled code.

    Only tensors, containers, numpy arrays/scalars, pandas frames/indexes and the
    constraint objects of a Pyro parameter store are rebuilt (an unpickler with an explicit
    allow-list of globals); anything else is refused.

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
    check_regular_file(path, "model file")
    _check_zip_records(path)
    try:
        return torch.load(
            path, map_location=map_location, weights_only=False, pickle_module=_allow_list_pickle
        )
    except pickle.UnpicklingError as err:
        raise _unpickling_error(path, err, "model file") from err
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as err:
        if isinstance(err, FileNotFoundError):
            raise
        raise ValueError(f"The model file {path} is corrupt or truncated: {err}") from err


def safe_pickle_load(path: str | os.PathLike) -> Any:
    """Unpickle a plain pickle file (``attr.pkl`` of scvi-tools < 0.15) with the allow-list.

    Parameters
    ----------
    path
        The file to load.

    Returns
    -------
    Any
        The unpickled object.

    Raises
    ------
    ValueError
        If the file is corrupt or asks to build an object outside the allow-list.
    """
    check_regular_file(path)
    with open(path, "rb") as fh:
        try:
            return _AllowListUnpickler(fh).load()
        except pickle.UnpicklingError as err:
            raise _unpickling_error(path, err, "file") from err
        except (EOFError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise ValueError(f"The file {path} is corrupt or truncated: {err}") from err


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
            tmp = os.path.join(parent, f".{os.path.basename(final_path)}.{uuid.uuid4().hex}.tmp")
            # Created like any other file (mode 0o666 less the umask), not mkstemp's 0600:
            # the renamed file keeps these permissions.
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
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
