"""Boundary tests of splitting: sizes, NumPy-identical permutations, external indices."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from scvi_rs import _core


def _reference_sizes(n, train_size, validation_size, batch_size, drop_last, train_size_is_none):
    """scvi-tools' validate_data_split, restated from the spec (api_spec 3.2)."""
    if train_size > 1.0 or train_size <= 0.0:
        raise ValueError("Invalid train_size. Must be: 0 < train_size <= 1")
    n_train = math.ceil(train_size * n)
    if validation_size is None:
        n_val = n - n_train
    elif validation_size >= 1.0 or validation_size < 0.0:
        raise ValueError("Invalid validation_size. Must be 0 <= validation_size < 1")
    elif (train_size + validation_size) > 1:
        raise ValueError("train_size + validation_size must be between 0 and 1")
    else:
        n_val = math.floor(n * validation_size)
    if n_train == 0:
        raise ValueError(
            f"With n_samples={n}, train_size={train_size} and validation_size={validation_size}, "
            "the resulting train set will be empty. Adjust any of the aforementioned parameters."
        )
    msgs = []
    if batch_size is not None:
        r = n_train % batch_size
        if 0 < r < 3 and drop_last is False:
            if not train_size_is_none:
                msgs.append(
                    f"Last batch will have a small size of {r} samples. Consider changing "
                    "settings.batch_size or batch_size in model.train from currently "
                    f"{batch_size} to avoid errors during model training."
                )
            else:
                n_train -= r
                if n_val > 0:
                    n_val += r
                    msgs.append(
                        f"{r} cells moved from training set to validation set. if you want to "
                        "avoid it please use train_size parameter during train."
                    )
    return (n_train, n_val), msgs


def _ours(*args):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        result = _core.split_sizes(*args)
    assert all(w.category is UserWarning for w in rec)
    return result, [str(w.message) for w in rec]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ((400, 0.9, None, 128), (360, 40)),
        ((144, 0.9, None, 128), (128, 16)),
        ((144, 0.9, None, 128, False, False), (130, 14)),
        ((130, 0.9, None, 128), (117, 13)),
        ((129, 0.9, None, 128), (117, 12)),
        ((10, 0.9, None, 128), (9, 1)),
        ((100, 0.8, 0.1, 128, False, False), (80, 10)),
        ((1000, 0.5, 0.3, 128, False, False), (500, 300)),
    ],
)
def test_reference_examples(args, expected):
    assert _ours(*args)[0] == expected


def test_warnings_and_stacklevel():
    def validate_data_split():  # a Python wrapper, as the dataloaders layer has
        return _core.split_sizes(144, 0.9, None, 128)

    with pytest.warns(
        UserWarning, match=r"^2 cells moved from training set to validation set"
    ) as rec:
        validate_data_split()  # stacklevel=2 (the default): blames the wrapper's caller
    assert rec[0].filename == __file__
    with pytest.warns(UserWarning) as rec:
        _core.split_sizes(144, 0.9, None, 128, stacklevel=1)
    assert rec[0].filename == __file__
    with pytest.warns(UserWarning, match=r"Last batch will have a small size of 2 samples"):
        _core.split_sizes(144, 0.9, None, 128, False, False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _core.split_sizes(144, 0.9, None, 128, True) == (130, 14)
        assert _core.split_sizes(144, 0.9, None, 128, 0) == (130, 14)  # `0 is False` is False
        assert _core.split_sizes(130, 1.0, None, 128) == (128, 0)  # silently to the test set


@settings(max_examples=300, deadline=None)
@given(
    n=st.integers(0, 5000),
    train_size=st.floats(-0.5, 1.5) | st.sampled_from([0.9, 1.0, 0.1, 0.5]),
    validation_size=st.none() | st.floats(-0.2, 1.2) | st.sampled_from([0.0, 0.1]),
    batch_size=st.none() | st.integers(1, 300) | st.sampled_from([128, 64, -3]),
    drop_last=st.sampled_from([False, True]),
    train_size_is_none=st.booleans(),
)
def test_sizes_match_reference(
    n, train_size, validation_size, batch_size, drop_last, train_size_is_none
):
    args = (n, train_size, validation_size, batch_size, drop_last, train_size_is_none)
    try:
        want = _reference_sizes(*args)
    except ValueError as e:
        with pytest.raises(ValueError) as info:
            _core.split_sizes(*args)
        assert str(info.value) == str(e)
        return
    assert _ours(*args) == want


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_sizes_are_value_errors(bad):
    with pytest.raises(ValueError, match=r"Invalid train_size"):
        _core.split_sizes(100, bad)
    with pytest.raises(ValueError, match=r"Invalid validation_size"):
        _core.split_sizes(100, 0.5, bad)


def test_bad_split_arguments():
    with pytest.raises(ValueError, match=r"n_samples must be >= 0"):
        _core.split_sizes(-1, 0.9)
    with pytest.raises(ValueError, match=r"batch_size must not be 0"):
        _core.split_sizes(10, 0.9, None, 0)
    with pytest.raises(TypeError):
        _core.split_sizes(10, "0.9")


@settings(max_examples=150, deadline=None)
@given(n=st.integers(0, 3000), seed=st.integers(0, 2**32 - 1))
def test_permutation_matches_numpy(n, seed):
    got = _core.legacy_permutation(n, seed)
    assert got.dtype == np.int64
    np.testing.assert_array_equal(got, np.random.RandomState(seed).permutation(n))


@pytest.mark.parametrize(("n", "seed"), [(1_000_003, 0), (400, 0), (2**16 + 1, 2**32 - 1), (1, 5)])
def test_permutation_matches_numpy_large(n, seed):
    np.testing.assert_array_equal(
        _core.legacy_permutation(n, seed), np.random.RandomState(seed).permutation(n)
    )


def test_permutation_scvi_anchor():
    # scvi: settings.seed = 0, 400 cells -> val_idx[:5] = [132, 309, 341, 196, 246].
    assert list(_core.legacy_permutation(400, 0)[:5]) == [132, 309, 341, 196, 246]


def test_permutation_seeds():
    for bad in (-1, 2**32, 2**70):
        with pytest.raises(ValueError, match=r"Seed must be between 0 and 2\*\*32 - 1"):
            _core.legacy_permutation(10, bad)
    with pytest.raises(TypeError):
        _core.legacy_permutation(10, 1.5)
    np.testing.assert_array_equal(
        _core.legacy_permutation(50, np.int64(7)), np.random.RandomState(7).permutation(50)
    )
    p = _core.legacy_permutation(50, None)
    assert sorted(p) == list(range(50))
    with pytest.raises(ValueError, match=r"n must be >= 0"):
        _core.legacy_permutation(-1, 0)
    with pytest.raises(MemoryError, match=r"cannot allocate the permutation"):
        _core.legacy_permutation(2**62, 0)


def test_external_indexing_valid():
    train, val, test = np.arange(0, 6), np.array([6, 7], np.int32), np.array([8, 9], np.uint8)
    got = _core.validate_external_indexing(10, [train, val, test])
    for g, w in zip(got, (train, val, test), strict=True):
        assert g.dtype == np.int64
        np.testing.assert_array_equal(g, w)
    t, v, s = _core.validate_external_indexing(3, [np.array([2, 0, 1])])
    assert list(t) == [2, 0, 1] and len(v) == 0 and len(s) == 0
    t, v, s = _core.validate_external_indexing(3, [np.array([0, 1]), None, np.array([2])])
    assert len(v) == 0 and list(s) == [2]
    # np.array([]) (float64) is how the reference pads: accepted as empty.
    _core.validate_external_indexing(2, [np.array([0, 1]), np.array([]), np.array([])])
    _core.validate_external_indexing(0, [])


def test_external_indexing_errors():
    ok = np.array([0, 1, 2])
    with pytest.raises(ValueError, match=r"^External indexing is not of list type$"):
        _core.validate_external_indexing(3, (ok,))
    with pytest.raises(
        ValueError, match=r"^One of the given external indexing arrays is not a np.array$"
    ):
        _core.validate_external_indexing(3, [[0, 1, 2]])
    with pytest.raises(Warning, match=r"^There are duplicate indexing in train set$"):
        _core.validate_external_indexing(3, [np.array([0, 0, 1, 2])])
    with pytest.raises(Warning, match=r"^There are duplicate indexing in valid set$"):
        _core.validate_external_indexing(3, [ok, np.array([1, 1])])
    with pytest.raises(Warning, match=r"^There are duplicate indexing in test set$"):
        _core.validate_external_indexing(3, [ok, np.array([], np.int64), np.array([2, 2])])
    with pytest.raises(
        Warning, match=r"^There are missing indices please fix or remove those lines$"
    ):
        _core.validate_external_indexing(4, [ok])
    with pytest.raises(
        ValueError, match=r"^There are overlapping indexing between train and valid sets$"
    ):
        _core.validate_external_indexing(3, [ok, np.array([1])])
    with pytest.raises(
        ValueError, match=r"^There are overlapping indexing between train and test sets$"
    ):
        _core.validate_external_indexing(3, [ok, None, np.array([1])])
    with pytest.raises(
        ValueError, match=r"^There are overlapping indexing between test and valid sets$"
    ):
        _core.validate_external_indexing(3, [np.array([0]), np.array([1, 2]), np.array([2])])
    with pytest.raises(IndexError, match=r"index 3 in the train set is out of range"):
        _core.validate_external_indexing(3, [np.array([0, 1, 2, 3])])
    with pytest.raises(IndexError, match=r"index -1 in the valid set"):
        _core.validate_external_indexing(3, [ok, np.array([-1])])
    with pytest.raises(TypeError, match=r"must hold integers, got dtype float64"):
        _core.validate_external_indexing(3, [ok.astype(float)])
    with pytest.raises(ValueError, match=r"at most 3 arrays"):
        _core.validate_external_indexing(3, [ok, None, None, None])


def test_external_indexing_huge_n_samples_is_not_a_crash():
    with pytest.raises(Warning, match=r"missing indices"):
        _core.validate_external_indexing(2**62, [np.array([0, 1])])


def test_external_indexing_warning():
    train = np.arange(130)
    with pytest.warns(UserWarning, match=r"small size of 2 samples.*external indices accordingly"):
        _core.validate_external_indexing(130, [train], 128)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _core.validate_external_indexing(130, [train], 128, True)
