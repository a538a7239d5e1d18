"""``attrdict``: an immutable mapping with attribute access (registries, summary stats)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


def _freeze(value: Any) -> Any:
    """Nested mappings become ``attrdict``; lists and tuples become tuples (items frozen)."""
    if isinstance(value, attrdict):
        return value
    if isinstance(value, Mapping):
        return attrdict(value)
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, set):
        return frozenset(value)
    return value


def _thaw(value: Any) -> Any:
    if isinstance(value, attrdict):
        return {k: _thaw(v) for k, v in value._data.items()}
    if isinstance(value, tuple):
        return [_thaw(v) for v in value]
    return value


def _sort_key(key: Any) -> tuple[str, Any]:
    # Keys of mixed types still sort deterministically (by type name first).
    return (type(key).__name__, key) if not isinstance(key, str) else ("", key)


class attrdict(Mapping):
    """Read-only dictionary whose keys are also attributes.

    Mirrors ``scvi.utils.attrdict`` (a frozen config dict): nested dictionaries become
    ``attrdict`` instances, lists become tuples, NumPy arrays are kept as they are,
    ``keys()`` returns a sorted list, and any attempt to change it raises
    ``AttributeError``.

    Parameters
    ----------
    dictionary
        The mapping to wrap (copied; the original is not modified).
    recursive
        Accepted for compatibility; nested values are always frozen.
    """

    __slots__ = ("_data",)

    def __init__(self, dictionary: Mapping | None = None, recursive: bool = True, **kwargs):
        data: dict[Any, Any] = {}
        if dictionary is not None:
            for key, value in dict(dictionary).items():
                data[key] = _freeze(value)
        for key, value in kwargs.items():
            data[key] = _freeze(value)
        object.__setattr__(self, "_data", data)

    # -- mapping protocol -------------------------------------------------------------
    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.keys())

    def __len__(self) -> int:
        return len(self._data)

    def __contains__(self, key: object) -> bool:
        return key in self._data

    def keys(self) -> list[Any]:  # type: ignore[override]
        """Sorted list of keys."""
        return sorted(self._data, key=_sort_key)

    def values(self) -> list[Any]:  # type: ignore[override]
        """Values in key order."""
        return [self._data[k] for k in self.keys()]

    def items(self) -> list[tuple[Any, Any]]:  # type: ignore[override]
        """``(key, value)`` pairs in key order."""
        return [(k, self._data[k]) for k in self.keys()]

    def get(self, key: Any, default: Any = None) -> Any:
        return self._data.get(key, default)

    # -- attribute access -------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        try:
            return self._data[name]
        except KeyError:
            raise AttributeError(f"attrdict has no attribute {name!r}") from None

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | {k for k in self._data if isinstance(k, str)})

    # -- immutability -----------------------------------------------------------------
    def _immutable(self, *args: Any, **kwargs: Any) -> Any:
        raise AttributeError("attrdict is immutable.")

    __setattr__ = _immutable
    __delattr__ = _immutable
    __setitem__ = _immutable
    __delitem__ = _immutable
    update = _immutable
    pop = _immutable
    popitem = _immutable
    clear = _immutable
    setdefault = _immutable

    # -- conversions ------------------------------------------------------------------
    def to_dict(self) -> dict[Any, Any]:
        """Plain (mutable) nested ``dict`` copy; tuples become lists again."""
        return _thaw(self)

    def __reduce__(self):
        return (attrdict, (self.to_dict(),))

    def __copy__(self) -> attrdict:
        return self

    def __deepcopy__(self, memo: dict) -> attrdict:
        import copy

        return attrdict(copy.deepcopy(self.to_dict(), memo))

    def __eq__(self, other: object) -> bool:
        if isinstance(other, attrdict):
            other = other._data
        if not isinstance(other, Mapping) or set(self._data) != set(other):
            return False
        for key, value in self._data.items():
            theirs = _freeze(other[key])
            if isinstance(value, np.ndarray) or isinstance(theirs, np.ndarray):
                if not np.array_equal(np.asarray(value), np.asarray(theirs)):
                    return False
            elif value != theirs:
                return False
        return True

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return _yaml_like(self, 0) if self._data else "{}"


def _yaml_like(d: attrdict, indent: int) -> str:
    pad = "  " * indent
    lines = []
    for key, value in d.items():
        if isinstance(value, attrdict) and len(value):
            lines.append(f"{pad}{key}:")
            lines.append(_yaml_like(value, indent + 1))
        elif isinstance(value, tuple) and value:
            lines.append(f"{pad}{key}:")
            lines.extend(f"{pad}- {v!r}" for v in value)
        elif isinstance(value, np.ndarray):
            lines.append(f"{pad}{key}: {np.array2string(value, separator=', ')}")
        else:
            lines.append(f"{pad}{key}: {value!r}")
    return "\n".join(lines)
