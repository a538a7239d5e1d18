"""``CollectionAdapter``: an ``anndata.experimental.AnnCollection`` presented as an AnnData.

An AnnCollection joins several AnnData objects (in memory or backed) without concatenating
them. The adapter gives models what they use of an AnnData: ``obs`` (the collection's joined
frame, where registration writes its encoded columns), ``var_names``, ``n_obs``, ``uns`` and
``layers``/``X`` whose rows are read from the member AnnData objects one minibatch at a
time, so the joined matrix is never built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from ..data._row_source import RowSource


def _check_collection(collection: Any) -> None:
    needed = ("obs", "var_names", "n_obs", "n_vars", "lazy_attr", "attrs_keys")
    missing = [name for name in needed if not hasattr(collection, name)]
    if missing:
        raise TypeError(
            "CollectionAdapter wraps an `anndata.experimental.AnnCollection`; got "
            f"{type(collection).__name__}, which lacks {', '.join(missing)}."
        )


class CollectionMatrix(RowSource):
    """``X`` or one layer of an AnnCollection, read row by row from its member AnnData objects.

    Parameters
    ----------
    collection
        The AnnCollection.
    key
        Name of the layer; ``None`` for ``X``.
    """

    def __init__(self, collection: Any, key: str | None) -> None:
        self.collection = collection
        self.key = key
        self._lazy = (
            collection.lazy_attr("X") if key is None else collection.lazy_attr("layers", key)
        )

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.collection.n_obs), int(self.collection.n_vars))

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._lazy.dtype)

    def __getitem__(self, rows: Any) -> Any:
        return self._lazy[rows]

    def __repr__(self) -> str:
        where = "X" if self.key is None else f"layers[{self.key!r}]"
        return f"CollectionMatrix({where}, shape={self.shape})"


class CollectionLayers(Mapping):
    """``adapter.layers``: the collection's layers, each a :class:`CollectionMatrix`."""

    def __init__(self, collection: Any) -> None:
        self.collection = collection

    def _names(self) -> list[str]:
        return list(self.collection.attrs_keys.get("layers", []))

    def __getitem__(self, key: str) -> CollectionMatrix:
        if key not in self._names():
            raise KeyError(f"{key!r} is not a layer of the AnnCollection: {self._names()}.")
        return CollectionMatrix(self.collection, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def __repr__(self) -> str:
        return f"CollectionLayers({self._names()})"


class CollectionAdapter:
    """Let an ``anndata.experimental.AnnCollection`` stand in for an AnnData in models.

    ``Model.setup_anndata(adapter, layer=...)``, model construction, training, inference,
    ``save``/``load`` (with ``adata=adapter``) and query mapping work as with an AnnData.
    The count matrix is never joined in memory: each minibatch reads its rows from the
    member AnnData objects. Minibatch rows come back sorted, as with a backed AnnData.

    Parameters
    ----------
    collection
        The AnnCollection. Attributes the adapter does not define (``obs``,
        ``var_names``, ``n_obs``, ``obsm``, ...) are the collection's.

    Notes
    -----
    ``isinstance(adapter, anndata.AnnData)`` is True, as in scvi-tools. Each adapter has its
    own ``uns`` (where registration stores its ids); in scvi-tools every adapter shares
    one.
    """

    # An AnnCollection is never a view; its rows are read on demand like a backed AnnData.
    is_view = False
    isbacked = True

    def __init__(self, collection: Any) -> None:
        _check_collection(collection)
        self.collection = collection
        self.uns: dict[str, Any] = {}

    def __getattr__(self, name: str) -> Any:
        # only reached for names the adapter does not define
        if name == "collection":
            raise AttributeError(name)
        return getattr(self.collection, name)

    @property
    def layers(self) -> CollectionLayers:
        """The collection's layers; each reads its rows on demand."""
        return CollectionLayers(self.collection)

    @property
    def X(self) -> CollectionMatrix:
        """The collection's ``X``, read on demand."""
        return CollectionMatrix(self.collection, None)

    @property
    def shape(self) -> tuple[int, int]:
        return (int(self.collection.n_obs), int(self.collection.n_vars))

    def __getitem__(self, index: Any) -> Any:
        return self.collection[index]

    def __len__(self) -> int:
        return len(self.collection)

    def __repr__(self) -> str:
        return "Adapter for:\n" + repr(self.collection)

    def __reduce__(self) -> tuple:
        # pickle would otherwise rebuild an AnnData (see __class__); loader workers need this
        return (_rebuild_adapter, (self.collection, self.uns))

    @property
    def __class__(self) -> type:
        # models and fields check isinstance(adata, AnnData), as in scvi-tools
        from anndata import AnnData

        return AnnData


def _rebuild_adapter(collection: Any, uns: dict[str, Any]) -> CollectionAdapter:
    adapter = CollectionAdapter(collection)
    adapter.uns.update(uns)
    return adapter


__all__ = ["CollectionAdapter", "CollectionLayers", "CollectionMatrix"]
