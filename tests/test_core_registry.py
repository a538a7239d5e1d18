"""Boundary tests of registry fingerprints and UUIDs."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scvi_rs import _core

# JSON values without lone surrogates (which UTF-8 cannot carry).
_text = st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=8)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text,
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(_text, kids, max_size=4),
    max_leaves=20,
)


def _expected(obj) -> str:
    canon = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canon.encode()).hexdigest()


@settings(max_examples=100, deadline=None)
@given(obj=_json)
def test_fingerprint_is_sha256_of_sorted_compact_json(obj):
    """Equal to sha256(json.dumps(sort_keys, compact, ensure_ascii=False)), whatever the layout."""
    want = _expected(obj)
    assert _core.registry_fingerprint(json.dumps(obj)) == want
    assert _core.registry_fingerprint(json.dumps(obj, indent=3, ensure_ascii=False)) == want


def test_fingerprint_is_pinned():
    # Pinned values: these must never change across versions, platforms or Rust releases.
    assert _core.registry_fingerprint("{}") == hashlib.sha256(b"{}").hexdigest()
    assert (
        _core.registry_fingerprint('{"b": [1, 2.5, null], "a": "\\u00e9"}')
        == hashlib.sha256('{"a":"é","b":[1,2.5,null]}'.encode()).hexdigest()
    )


def test_fingerprint_sees_content():
    a = _core.registry_fingerprint('{"a": 1}')
    assert a != _core.registry_fingerprint('{"a": 1.0}')
    assert a != _core.registry_fingerprint('{"a": "1"}')
    assert len(a) == 64 and all(c in "0123456789abcdef" for c in a)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "{",
        "[1,]",
        '{"a":1,}',
        "{'a': 1}",
        "01",
        "1.",
        '"\\x"',
        '{"a":1,"a":2}',
        "[1] 2",
        '"\\ud800"',
        "nul",
        "\x00",
    ],
)
def test_invalid_json_is_value_error(bad):
    with pytest.raises(ValueError, match=r"invalid JSON"):
        _core.registry_fingerprint(bad)


def test_deep_json_is_rejected_not_crashing():
    with pytest.raises(ValueError, match=r"nesting"):
        _core.registry_fingerprint("[" * 100_000 + "]" * 100_000)


def test_validate_uuid():
    u = str(uuid.uuid4())
    assert _core.validate_uuid(u)
    assert _core.validate_uuid(u.upper())
    for bad in [
        "",
        u[:-1],
        u + "0",
        u.replace("-", ""),
        "{" + u + "}",
        "urn:uuid:" + u,
        u[:8] + "_" + u[9:],
        "g" + u[1:],
    ]:
        assert not _core.validate_uuid(bad), bad
    with pytest.raises(TypeError):
        _core.validate_uuid(None)


def test_new_uuid_is_random_uuid4():
    seen = {_core.new_uuid() for _ in range(200)}
    assert len(seen) == 200
    for u in seen:
        parsed = uuid.UUID(u)
        assert parsed.version == 4 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == u and _core.validate_uuid(u)


def test_module_metadata():
    """A stale extension after a pull without a rebuild shows up here."""
    assert _core.__version__ == importlib.metadata.version("scvi-rs")
    assert isinstance(_core.debug_build, bool)
    assert _core.parallel_work_threshold > 0
