"""DataSplitter and the split rules (api_spec 3.2-3.4): sizes, indices, external indexing."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData

from scvi_rs import REGISTRY_KEYS, settings
from scvi_rs.data import AnnDataManager
from scvi_rs.data.fields import CategoricalObsField, LayerField
from scvi_rs.dataloaders import (
    AnnDataLoader,
    DataSplitter,
    validate_data_split,
    validate_data_split_with_external_indexing,
)


def make_manager(n: int, g: int = 7) -> AnnDataManager:
    X = sp.random(n, g, density=0.5, format="csr", random_state=0, dtype=np.float32)
    X.data = np.ceil(X.data * 5)
    adata = AnnData(X)
    manager = AnnDataManager(
        fields=[
            LayerField(REGISTRY_KEYS.X_KEY, None),
            CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, None),
        ],
        setup_method_args={"model_name": "M", "setup_method_name": "setup_anndata"},
    )
    manager.register_fields(adata)
    return manager


@pytest.fixture(autouse=True)
def restore_settings():
    seed, batch_size = settings.seed, settings.batch_size
    yield
    settings._seed = seed  # no reseeding on the way out
    settings.batch_size = batch_size


def seeded(seed: int | None) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        settings.seed = seed


@pytest.mark.parametrize(
    ("n", "kwargs", "sizes"),
    [
        (400, {}, (360, 40)),
        (129, {"batch_size": 128}, (117, 12)),
        (130, {}, (117, 13)),
        (10, {}, (9, 1)),
        (100, {"train_size": 0.8, "validation_size": 0.1}, (80, 10)),
        (1000, {"train_size": 0.5, "validation_size": 0.3}, (500, 300)),
    ],
)
def test_split_sizes(n, kwargs, sizes):
    seeded(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        splitter = DataSplitter(make_manager(n), **kwargs)
    assert (splitter.n_train, splitter.n_val) == sizes  # computed at construction
    splitter.setup()
    assert (len(splitter.train_idx), len(splitter.val_idx)) == sizes
    assert len(splitter.test_idx) == n - sum(sizes)
    every = np.concatenate([splitter.val_idx, splitter.train_idx, splitter.test_idx])
    np.testing.assert_array_equal(np.sort(every), np.arange(n))


@pytest.mark.parametrize("seed", [0, 1, 42, 2**32 - 1])
def test_indices_match_numpy_legacy_permutation(seed):
    seeded(seed)
    splitter = DataSplitter(make_manager(400))
    splitter.setup()
    perm = np.random.RandomState(seed).permutation(400)
    np.testing.assert_array_equal(splitter.val_idx, perm[:40])
    np.testing.assert_array_equal(splitter.train_idx, perm[40:400])
    if seed == 0:
        np.testing.assert_array_equal(splitter.val_idx[:5], [132, 309, 341, 196, 246])


def test_unseeded_and_unshuffled_splits():
    seeded(None)
    manager = make_manager(400)
    a, b = DataSplitter(manager), DataSplitter(manager)
    a.setup()
    b.setup()
    assert not np.array_equal(a.val_idx, b.val_idx)  # fresh OS entropy each time
    ordered = DataSplitter(manager, shuffle_set_split=False, train_size=0.5, validation_size=0.2)
    ordered.setup()
    np.testing.assert_array_equal(ordered.val_idx, np.arange(80))
    np.testing.assert_array_equal(ordered.train_idx, np.arange(80, 280))
    np.testing.assert_array_equal(ordered.test_idx, np.arange(280, 400))


def test_warnings_and_batch_size_source():
    manager = make_manager(144)
    with pytest.warns(
        UserWarning, match="2 cells moved from training set to validation set"
    ) as rec:
        splitter = DataSplitter(manager)
    assert rec[0].filename.endswith("_data_splitting.py")  # blames DataSplitter, as scvi does
    assert (splitter.n_train, splitter.n_val) == (128, 16)
    with pytest.warns(UserWarning, match="Last batch will have a small size of 2 samples"):
        splitter = DataSplitter(manager, train_size=0.9)
    assert (splitter.n_train, splitter.n_val) == (130, 14)
    settings.batch_size = 64  # used when no batch_size is given
    with pytest.warns(UserWarning, match="2 cells moved"):
        assert DataSplitter(manager, train_size=None).n_train == 128
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert DataSplitter(manager, batch_size=100).n_train == 130
        assert DataSplitter(manager, drop_last=True).n_train == 130
    with pytest.warns(UserWarning, match="2 cells moved") as rec:
        assert validate_data_split(144, 0.9, None, 128) == (128, 16)
    assert rec[0].filename == __file__
    with pytest.raises(ValueError, match="Invalid train_size"):
        DataSplitter(manager, train_size=1.5)
    with pytest.raises(ValueError, match="train_size \\+ validation_size must be between 0 and 1"):
        DataSplitter(manager, train_size=0.8, validation_size=0.3)


def test_loaders_and_their_options():
    seeded(0)
    manager = make_manager(300)
    splitter = DataSplitter(
        manager, train_size=0.5, validation_size=0.2, batch_size=32, drop_last=True
    )
    splitter.setup()
    train = splitter.train_dataloader()
    assert isinstance(train, AnnDataLoader)
    assert train.sampler.batch_size == 32 and train.sampler.drop_last
    assert isinstance(train.sampler.sampler, torch.utils.data.RandomSampler)
    np.testing.assert_array_equal(train.indices, splitter.train_idx)
    val = splitter.val_dataloader()
    assert not val.sampler.drop_last
    assert isinstance(val.sampler.sampler, torch.utils.data.SequentialSampler)
    X = manager.adata.X
    got = np.concatenate([b["X"].numpy() for b in val])
    np.testing.assert_array_equal(got, X[splitter.val_idx].toarray())
    test = splitter.test_dataloader()
    assert len(test.indices) == 90
    assert sum(b["X"].shape[0] for b in train) == 150 // 32 * 32

    full = DataSplitter(manager, train_size=1.0)
    full.setup()
    assert full.val_dataloader() is None and full.test_dataloader() is None


def test_sparse_tensor_densified_after_transfer():
    seeded(0)
    manager = make_manager(200)
    splitter = DataSplitter(manager, load_sparse_tensor=True, pin_memory=True)
    splitter.setup()
    batch = next(iter(splitter.train_dataloader()))
    assert batch["X"].layout is torch.sparse_csr
    batch = splitter.on_before_batch_transfer(batch, 0)
    batch = splitter.transfer_batch_to_device(batch, torch.device("cpu"), 0)
    batch = splitter.on_after_batch_transfer(batch, 0)
    assert batch["X"].layout is torch.strided and batch["X"].shape == (128, 7)


# -- external indexing ------------------------------------------------------------------------
def test_external_indexing_sets_and_padding():
    manager = make_manager(50)
    rng = np.random.default_rng(0)
    perm = rng.permutation(50)
    ext = [perm[:30], perm[30:45], perm[45:]]
    splitter = DataSplitter(manager, external_indexing=ext, batch_size=8)
    assert (splitter.n_train, splitter.n_val) == (30, 15)
    splitter.setup()
    for got, want in zip(
        (splitter.train_idx, splitter.val_idx, splitter.test_idx), ext, strict=True
    ):
        np.testing.assert_array_equal(got, want)
    short = [np.arange(50)]
    splitter = DataSplitter(manager, external_indexing=short, batch_size=10)
    assert len(short) == 3 and all(isinstance(a, np.ndarray) for a in short)  # padded in place
    splitter.setup()
    assert splitter.val_dataloader() is None and splitter.test_dataloader() is None
    assert validate_data_split_with_external_indexing(50, [np.arange(40), np.arange(40, 50)]) == (
        40,
        10,
    )


@pytest.mark.parametrize(
    ("ext", "error", "match"),
    [
        ((np.arange(50),), ValueError, "External indexing is not of list type"),
        (
            [list(range(50))],
            ValueError,
            "One of the given external indexing arrays is not a np.array",
        ),
        ([np.r_[np.arange(50), 3]], Warning, "There are duplicate indexing in train set"),
        ([np.arange(40), np.r_[40:50, 41]], Warning, "There are duplicate indexing in valid set"),
        (
            [np.arange(40), np.arange(40, 45), np.r_[45:50, 45]],
            Warning,
            "There are duplicate indexing in test set",
        ),
        ([np.arange(49)], Warning, "There are missing indices please fix or remove those lines"),
        (
            [np.arange(50), np.array([3])],
            ValueError,
            "There are overlapping indexing between train and valid sets",
        ),
        (
            [np.arange(50), np.array([], dtype=int), np.array([7])],
            ValueError,
            "There are overlapping indexing between train and test sets",
        ),
        (
            [np.arange(40), np.arange(40, 50), np.array([45])],
            ValueError,
            "There are overlapping indexing between test and valid sets",
        ),
        ([np.arange(51)], IndexError, "out of range"),
    ],
)
def test_external_indexing_errors(ext, error, match):
    manager = make_manager(50)
    with pytest.raises(error, match=match):
        DataSplitter(manager, external_indexing=ext)
    with pytest.raises(error, match=match):
        validate_data_split_with_external_indexing(50, ext)


def test_external_indexing_small_last_batch_warns():
    manager = make_manager(50)
    with pytest.warns(UserWarning, match="or change the given external indices accordingly"):
        DataSplitter(manager, external_indexing=[np.arange(33), np.arange(33, 50)], batch_size=16)
