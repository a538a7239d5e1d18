"""Content digests used by the replay shortcut (registry fingerprints)."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np
import pandas as pd


def array_digest(values: Any) -> str:
    """blake2b of a numeric array's dtype, shape and bytes."""
    arr = np.ascontiguousarray(np.asarray(values))
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{arr.dtype.str}|{arr.shape}|".encode())
    h.update(arr.tobytes() if arr.dtype.kind != "O" else repr(arr.tolist()).encode())
    return h.hexdigest()


def jsonable(value: Any) -> Any:
    """A JSON-friendly, type-preserving rendering of registry content."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return {
            "ndarray": value.dtype.str,
            "values": [f"{type(v).__name__}:{v!r}" for v in value.reshape(-1).tolist()],
        }
    if isinstance(value, pd.Index):
        return jsonable(value.to_numpy())
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return f"{type(value).__name__}:{value!r}"


def fingerprint(payload: dict) -> str:
    """Stable fingerprint of a JSON-able payload, computed by the Rust core."""
    from .. import _core

    text = json.dumps(jsonable(payload), sort_keys=True, separators=(",", ":"), allow_nan=False)
    return str(_core.registry_fingerprint(text))
