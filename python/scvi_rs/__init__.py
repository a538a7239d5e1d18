"""scvi-rs: the scvi-tools model framework with a Rust data path.

Use it as a drop-in replacement: ``import scvi_rs as scvi``.
"""

from __future__ import annotations

import importlib
import os
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING, Any

# torch backs its large CPU tensors with transparent huge pages when this is set by the time
# of its first large CPU allocation. A training step allocates many fresh buffers of tens
# or hundreds of MB (a 1,024-cell minibatch of 30,000 genes is 123 MB per intermediate);
# with 4 KiB pages each one page-faults on first touch, which made such steps 2x slower.
# Set it to 0 beforehand to opt out.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from ._constants import REGISTRY_KEYS
from ._settings import settings

try:
    __version__ = version("scvi-rs")
except PackageNotFoundError:  # running from a source tree without metadata
    __version__ = "0.0.0"

# Sub-packages are imported on first access so `import scvi_rs` stays fast (torch loads lazily).
_SUBPACKAGES = (
    "data",
    "dataloaders",
    "distributions",
    "model",
    "module",
    "nn",
    "train",
    "utils",
)

__all__ = ["REGISTRY_KEYS", "data", "model", "settings", "utils"]

if TYPE_CHECKING:
    from . import data, dataloaders, distributions, model, module, nn, train, utils  # noqa: F401


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_SUBPACKAGES])
