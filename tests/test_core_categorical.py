"""Boundary tests of categorical encoding: parity with pandas and bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scvi_rs import _core


def _build_mapping(values):
    """The categories ``pd.Categorical(values)`` has, as ``_core.factorize`` gives them."""
    return _core.factorize(values)[0]


def _pandas_categories(values):
    return np.asarray(pd.Categorical(values).categories)


@pytest.mark.parametrize(
    "values",
    [
        np.array(["b", "a", "B", "é", "a", "", "Z", "😀", "ab"], dtype=object),
        np.array(["b", "a", "B", "é", "a"]),  # numpy unicode dtype
        np.array([3, -1, 3, 10, 2**40], dtype=np.int64),
        np.array([3, 1, 3], dtype=np.int8),
        np.array([7, 1, 3], dtype=np.uint64),
        np.array([2.5, -1.0, 2.5, 1e20]),
        np.array([2.0, 1.0], dtype=np.float32),
        np.array([True, False, True]),
        np.array([3, 1, 2], dtype=object),
        np.array([1.5, 0.5], dtype=object),
        ["x", "a", "x"],
        np.array([], dtype=object),
        np.array([], dtype=np.int64),
    ],
    ids=repr,
)
def test_factorize_categories_match_pandas(values):
    got = _build_mapping(values)
    want = _pandas_categories(values)
    assert list(got) == list(want)
    codes = _core.encode_categorical(values, got)
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, pd.Categorical(values, categories=want).codes)


def test_mapping_dtypes():
    assert _build_mapping(np.array(["b", "a"], dtype=object)).dtype == object
    assert all(type(x) is str for x in _build_mapping(np.array(["b", "a"])))
    assert _build_mapping(np.array([2, 1], dtype=np.int32)).dtype == np.int64
    assert _build_mapping(np.array([2.0, 1.0])).dtype == np.float64
    assert _build_mapping(np.array([True, False])).dtype == np.bool_


@settings(max_examples=80, deadline=None)
@given(
    values=st.lists(st.text(alphabet="abcAB_é😀", max_size=3), max_size=40),
    extra=st.lists(st.text(alphabet="abcxyz", max_size=2), max_size=5),
)
def test_strings_match_pandas(values, extra):
    arr = np.array(values, dtype=object)
    mapping = _build_mapping(arr)
    assert list(mapping) == list(_pandas_categories(arr))
    # A mapping with extra categories in another order still encodes every value.
    full = np.array(sorted(set(values) | set(extra), reverse=True), dtype=object)
    codes = _core.encode_categorical(arr, full)
    np.testing.assert_array_equal(codes, pd.Categorical(arr, categories=full).codes)


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30))
def test_ints_match_pandas(values):
    arr = np.array(values, dtype=np.int64)
    mapping = _build_mapping(arr)
    assert list(mapping) == sorted(set(values))
    np.testing.assert_array_equal(
        _core.encode_categorical(arr, mapping), pd.Categorical(arr, categories=mapping).codes
    )


def test_numbers_compare_like_python():
    # 1 == 1.0, as in pandas/Python; but booleans never match numbers, as in pandas.
    np.testing.assert_array_equal(
        _core.encode_categorical(np.array([1.0, 2.0]), np.array([2, 1])), [1, 0]
    )
    for values, mapping in [
        (np.array([True, False]), np.array([0, 1])),
        (np.array([1, 0]), np.array([True, False])),
        (np.array([True, False], dtype=object), np.array([0.0, 1.0])),
    ]:
        assert (pd.Categorical(values, categories=mapping).codes == -1).all()
        with pytest.raises(ValueError, match="booleans never match"):
            _core.encode_categorical(values, mapping)
    np.testing.assert_array_equal(
        _core.encode_categorical(np.array([np.int64(3), 1], dtype=object), np.array([1, 3])),
        [1, 0],
    )


def test_unknown_values_are_named():
    mapping = np.array(["a", "b"], dtype=object)
    with pytest.raises(ValueError, match=r"first unknown: \['c', 'd'\]"):
        _core.encode_categorical(np.array(["a", "c", "d", "c"], dtype=object), mapping)
    values = np.array([f"v{i}" for i in range(20)], dtype=object)
    with pytest.raises(ValueError, match=r"20 of 20 values .* \['v0', 'v1', 'v2', 'v3', 'v4'\]$"):
        _core.encode_categorical(values, mapping)
    with pytest.raises(ValueError, match=r"first unknown: \[5\]"):
        _core.encode_categorical(np.array([1, 5]), np.array([1, 2]))
    # Type mismatch: ints are not strings (pandas would give -1 codes).
    with pytest.raises(ValueError, match=r"first unknown: \[1\]"):
        _core.encode_categorical(np.array([1]), np.array(["1"], dtype=object))


_MISSING = [
    np.array(["a", None], dtype=object),
    np.array(["a", np.nan], dtype=object),
    np.array([1.0, np.nan]),
    np.array(["a", pd.NA], dtype=object),
]
_MISSING_IDS = ["None", "nan-object", "nan-float", "pd.NA"]


@pytest.mark.parametrize("values", _MISSING, ids=_MISSING_IDS)
def test_missing_values_never_map(values):
    with pytest.raises(ValueError, match=r"missing value .* at position 1"):
        _core.encode_categorical(values, np.array(["a", 1.0], dtype=object))
    with pytest.raises(ValueError, match=r"missing value .* at position 1"):
        _build_mapping(values)


def test_bad_mappings_and_values():
    with pytest.raises(ValueError, match=r"mapping must not contain a missing value"):
        _core.encode_categorical(
            np.array(["a"], dtype=object), np.array(["a", None], dtype=object)
        )
    with pytest.raises(ValueError, match=r"duplicate category 'a'"):
        _core.encode_categorical(np.array(["a"], dtype=object), np.array(["a", "a"], dtype=object))
    with pytest.raises(TypeError, match=r"mix strings and numbers"):
        _build_mapping(np.array(["a", 1], dtype=object))
    with pytest.raises(ValueError, match=r"1-dimensional"):
        _build_mapping(np.array([["a"]], dtype=object))
    with pytest.raises(TypeError, match=r"unsupported type"):
        _build_mapping(np.array([b"a"], dtype=object))
    with pytest.raises(TypeError, match=r"complex"):
        _build_mapping(np.array([1j]))
    with pytest.raises(ValueError, match=r"int64 range"):
        _build_mapping(np.array([2**64 - 1], dtype=np.uint64))


def test_strided_and_large_inputs():
    base = np.array(["b", "x", "a", "x", "b", "x"], dtype=object)
    np.testing.assert_array_equal(_core.encode_categorical(base[::2], ["a", "b"]), [1, 0, 1])
    cats = np.array([f"type_{i}" for i in range(64)], dtype=object)
    values = cats[np.random.default_rng(0).integers(0, 64, 200_000)]
    mapping = _build_mapping(values)
    np.testing.assert_array_equal(
        _core.encode_categorical(values, mapping), pd.Categorical(values).codes
    )


# -- factorize: mapping and codes in one pass ------------------------------------------------


def _assert_factorize_matches_pandas(values):
    mapping, codes = _core.factorize(values)
    want = pd.Categorical(values)
    assert list(mapping) == list(want.categories)
    assert mapping.dtype == _build_mapping(values).dtype
    assert codes.dtype == np.int32
    np.testing.assert_array_equal(codes, want.codes)


_SHARED = "shared"


@pytest.mark.parametrize(
    "values",
    [
        np.array(["b", "a", "B", "é", "a", "", "Z", "😀", "ab"], dtype=object),
        np.array(["b", "a", "B", "é", "a"]),  # numpy unicode dtype
        np.array(["日本", "中文", "日本", "ñ", "n", "Ω", "🧬", "🧪"], dtype=object),
        np.array([3, -1, 3, 10, 2**40, -(2**63), 2**63 - 1], dtype=np.int64),
        np.array([3, 1, 3], dtype=np.int8),
        np.array([7, 1, 3], dtype=np.uint64),
        np.array([2.5, -1.0, 2.5, 1e20, -0.0, 0.0, np.inf, -np.inf]),
        np.array([2.0, 1.0], dtype=np.float32),
        np.array([True, False, True]),
        np.array([True, True]),
        np.array([3, 1, 2], dtype=object),
        np.array([1.5, 0.5], dtype=object),
        ["x", "a", "x"],
        np.array(["only"], dtype=object),
        np.array([42]),
        np.array([_SHARED] * 50 + ["a", _SHARED], dtype=object),  # one repeated object
        np.array([], dtype=object),
        np.array([], dtype=np.int64),
        np.array([], dtype=np.float64),
    ],
    ids=repr,
)
def test_factorize_matches_pandas(values):
    _assert_factorize_matches_pandas(values)


def test_factorize_equal_strings_in_distinct_objects():
    # Equal text in different str objects is one category (not keyed by identity).
    values = np.array(["".join(["ab", "c"]) for _ in range(3)] + ["abc", "ab"], dtype=object)
    assert len({id(v) for v in values}) >= 3
    mapping, codes = _core.factorize(values)
    assert list(mapping) == ["ab", "abc"]
    np.testing.assert_array_equal(codes, [1, 1, 1, 1, 0])


@settings(max_examples=80, deadline=None)
@given(values=st.lists(st.text(alphabet="abcAB_é😀", max_size=3), max_size=40))
def test_factorize_strings_match_pandas(values):
    _assert_factorize_matches_pandas(np.array(values, dtype=object))


@settings(max_examples=50, deadline=None)
@given(values=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=30))
def test_factorize_ints_match_pandas(values):
    _assert_factorize_matches_pandas(np.array(values, dtype=np.int64))


@settings(max_examples=50, deadline=None)
@given(
    values=st.lists(
        st.floats(allow_nan=False, width=64) | st.integers(-3, 3).map(float), max_size=30
    )
)
def test_factorize_floats_match_pandas(values):
    _assert_factorize_matches_pandas(np.array(values, dtype=np.float64))


@pytest.mark.parametrize(
    "values",
    # a missing value is reported before mixed types
    [*_MISSING, np.array(["a", None, 1], dtype=object)],
    ids=[*_MISSING_IDS, "None-then-mixed"],
)
def test_factorize_missing_values(values):
    with pytest.raises(ValueError, match=r"missing value .* at position 1"):
        _core.factorize(values)


def test_factorize_bad_values():
    with pytest.raises(TypeError, match=r"mix strings and numbers"):
        _core.factorize(np.array(["a", 1], dtype=object))
    with pytest.raises(TypeError, match=r"mix strings and numbers"):
        _core.factorize(np.array([2.5, "a"], dtype=object))
    with pytest.raises(ValueError, match=r"1-dimensional"):
        _core.factorize(np.array([["a"]], dtype=object))
    with pytest.raises(TypeError, match=r"unsupported type"):
        _core.factorize(np.array([b"a"], dtype=object))
    with pytest.raises(ValueError, match=r"int64 range"):
        _core.factorize(np.array([2**64 - 1], dtype=np.uint64))


def test_factorize_large_and_strided():
    cats = np.array([f"type_{i}" for i in range(64)], dtype=object)
    values = cats[np.random.default_rng(0).integers(0, 64, 200_000)]
    _assert_factorize_matches_pandas(values)
    _assert_factorize_matches_pandas(values[::3])
