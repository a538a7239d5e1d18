"""Optional-dependency helpers (``scvi.utils.dependencies`` and friends)."""

from __future__ import annotations

import functools
import importlib
from collections.abc import Callable
from typing import Any


def error_on_missing_dependencies(*modules: str) -> None:
    """Raise ``ModuleNotFoundError`` naming every module in ``modules`` that is missing."""
    missing = []
    for module in modules:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise ModuleNotFoundError(f"Please install {missing} to use this functionality.")


def dependencies(*modules: str) -> Callable:
    """Decorator: check that ``modules`` import before calling the wrapped function."""

    def decorator(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            error_on_missing_dependencies(*modules)
            return fn(*args, **kwargs)

        return wrapper

    return decorator


def unsupported_if_adata_minified(fn: Callable) -> Callable:
    """Decorator for model methods that cannot run on minified data."""

    @functools.wraps(fn)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
        # data minified with their counts still serve every query
        if getattr(self, "minified_data_type", None) == "latent_posterior_parameters":
            raise ValueError(
                f"The {fn.__qualname__} function currently does not support minified data."
            )
        return fn(self, *args, **kwargs)

    return wrapper
