"""AnnDataLoader (api_spec 3.1): batches, order, shuffling, options, prefetch thread shutdown."""

from __future__ import annotations

import gc
import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from anndata import AnnData
from torch.utils.data import BatchSampler, DataLoader, RandomSampler, SequentialSampler

from scvi_rs import REGISTRY_KEYS, settings
from scvi_rs.data import AnnDataManager
from scvi_rs.data.fields import CategoricalObsField, LayerField, NumericalJointObsField
from scvi_rs.dataloaders import AnnDataLoader, BatchDistributedSampler
from scvi_rs.dataloaders._prefetch import BufferPool

N, G = 301, 13


def make_manager(X, with_cont: bool = True) -> AnnDataManager:
    n = X.shape[0]
    rng = np.random.default_rng(1)
    adata = AnnData(X)
    adata.obs["batch"] = pd.Categorical([f"b{i}" for i in rng.integers(0, 3, n)])
    adata.obs["c1"] = rng.normal(size=n)
    fields = [
        LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False),
        CategoricalObsField(REGISTRY_KEYS.BATCH_KEY, "batch"),
        CategoricalObsField(REGISTRY_KEYS.LABELS_KEY, None),
    ]
    if with_cont:
        fields.append(NumericalJointObsField(REGISTRY_KEYS.CONT_COVS_KEY, ["c1"]))
    manager = AnnDataManager(
        fields=fields,
        setup_method_args={"model_name": "M", "setup_method_name": "setup_anndata"},
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        manager.register_fields(adata)
    return manager


@pytest.fixture(scope="module")
def X() -> sp.csr_matrix:
    rng = np.random.default_rng(0)
    M = sp.random(N, G, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    M.data = np.ceil(M.data * 9)
    return M


@pytest.fixture
def manager(X) -> AnnDataManager:
    return make_manager(X)


def prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("scvi_rs-loader")]


def wait_no_threads(timeout: float = 5.0) -> list[threading.Thread]:
    deadline = time.monotonic() + timeout
    while prefetch_threads() and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.01)
    return prefetch_threads()


@pytest.fixture(autouse=True)
def no_leaked_threads():
    yield
    assert wait_no_threads() == []


def stack_rows(batches, key="X"):
    return np.concatenate([b[key].numpy() for b in batches]) if batches else None


def test_unshuffled_batches_follow_indices(manager, X):
    indices = np.random.default_rng(3).permutation(N)[:200]
    loader = AnnDataLoader(manager, indices=indices, batch_size=64)
    assert loader.batch_size is None and len(loader) == 4
    batches = list(loader)
    assert [b["X"].shape for b in batches] == [(64, G)] * 3 + [(8, G)]  # last partial batch
    np.testing.assert_array_equal(stack_rows(batches), X[indices].toarray())
    codes = manager.adata.obs["_scvi_batch"].to_numpy()
    np.testing.assert_array_equal(stack_rows(batches, "batch").ravel(), codes[indices])
    b = batches[0]
    assert {k: (v.dtype, v.shape[1]) for k, v in b.items()} == {
        "X": (torch.float32, G),
        "batch": (torch.int64, 1),
        "labels": (torch.int64, 1),
        "extra_continuous_covs": (torch.float32, 1),
    }
    assert all(isinstance(v, torch.Tensor) for v in b.values())


def test_default_indices_bool_mask_and_list(manager, X):
    full = stack_rows(list(AnnDataLoader(manager, batch_size=100)))
    np.testing.assert_array_equal(full, X.toarray())
    mask = np.zeros(N, dtype=bool)
    mask[[5, 17, 200]] = True
    got = stack_rows(list(AnnDataLoader(manager, indices=mask)))
    np.testing.assert_array_equal(got, X[[5, 17, 200]].toarray())
    got = stack_rows(list(AnnDataLoader(manager, indices=[9, 2, 9])))
    np.testing.assert_array_equal(got, X[[9, 2, 9]].toarray())


def test_drop_last_and_empty_indices(manager, X):
    loader = AnnDataLoader(manager, batch_size=100, drop_last=True)
    batches = list(loader)
    assert len(loader) == 3 and [b["X"].shape[0] for b in batches] == [100, 100, 100]
    np.testing.assert_array_equal(stack_rows(batches), X[:300].toarray())
    empty = AnnDataLoader(manager, indices=np.array([], dtype=np.int64))
    assert len(empty) == 0 and list(empty) == []
    assert list(AnnDataLoader(manager, indices=[])) == []


def torch_reference_order(n_cells: int, batch_size: int, drop_last: bool, seed: int):
    """Index batches of the reference's loader: a torch DataLoader over a BatchSampler."""
    torch.manual_seed(seed)
    sampler = BatchSampler(RandomSampler(range(n_cells)), batch_size, drop_last)
    cells = np.arange(n_cells)
    loader = DataLoader(cells, batch_size=None, sampler=sampler, collate_fn=lambda b: b)
    order = [np.asarray(b) for b in loader]
    after = torch.rand(3)  # where torch's global RNG is left afterwards
    return order, after


@pytest.mark.parametrize("drop_last", [False, True])
def test_shuffle_matches_torch_batch_sampler(manager, X, drop_last):
    indices = np.arange(10, 260)
    order, rng_after = torch_reference_order(len(indices), 32, drop_last, seed=7)
    torch.manual_seed(7)
    batches = list(
        AnnDataLoader(manager, indices=indices, batch_size=32, shuffle=True, drop_last=drop_last)
    )
    assert torch.equal(torch.rand(3), rng_after)  # same draws from the global RNG
    assert len(batches) == len(order)
    for b, pos in zip(batches, order, strict=True):
        np.testing.assert_array_equal(b["X"].numpy(), X[indices[pos]].toarray())
    # another epoch reshuffles
    again = list(AnnDataLoader(manager, indices=indices, batch_size=32, shuffle=True))
    assert not np.array_equal(stack_rows(again), stack_rows(batches))


def test_settings_seed_makes_shuffling_reproducible(manager):
    def epoch():
        settings.seed = 11
        return stack_rows(list(AnnDataLoader(manager, batch_size=50, shuffle=True)))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        np.testing.assert_array_equal(epoch(), epoch())


def test_iter_ndarray_collate_fn_and_sparse(manager, X):
    batches = list(AnnDataLoader(manager, batch_size=100, iter_ndarray=True))
    assert all(isinstance(v, np.ndarray) for v in batches[0].values())
    np.testing.assert_array_equal(np.concatenate([b["X"] for b in batches]), X.toarray())

    seen = []

    def collate(batch):
        seen.append(type(batch["X"]))
        return batch["X"].sum()

    sums = list(AnnDataLoader(manager, batch_size=100, collate_fn=collate))
    assert seen == [np.ndarray] * 4
    np.testing.assert_allclose(sum(sums), X.sum(), rtol=1e-6)

    sparse = list(AnnDataLoader(manager, batch_size=64, load_sparse_tensor=True))
    assert sparse[0]["X"].layout is torch.sparse_csr
    dense = np.concatenate([b["X"].to_dense().numpy() for b in sparse])
    np.testing.assert_array_equal(dense, X.toarray())


def test_data_and_attributes(manager):
    b = next(iter(AnnDataLoader(manager, data_and_attributes=["X"])))
    assert list(b) == ["X"]
    b = next(iter(AnnDataLoader(manager, data_and_attributes={"X": np.float64})))
    assert b["X"].dtype == torch.float64


def test_every_x_layout_through_loader(X):
    for M in (X.tocsc(), X.toarray(), X.toarray().astype(np.float64), X.astype(np.int64)):
        manager = make_manager(M, with_cont=False)
        got = stack_rows(list(AnnDataLoader(manager, indices=np.arange(N)[::-1], batch_size=70)))
        np.testing.assert_array_equal(got, X.toarray()[::-1])


def test_sampler_options(manager, X):
    with pytest.raises(
        ValueError, match="Cannot specify both `sampler` and `distributed_sampler`"
    ):
        AnnDataLoader(manager, sampler=SequentialSampler(range(N)), distributed_sampler=True)
    # a custom sampler: plain torch DataLoader semantics (batch_size=1, per-item fetch)
    custom = AnnDataLoader(manager, sampler=SequentialSampler(range(3)))
    items = list(custom)
    assert len(items) == 3 and items[0]["X"].shape == (1, 1, G)
    np.testing.assert_array_equal(items[2]["X"][0].numpy(), X[[2]].toarray())


@pytest.mark.parametrize(("drop_last", "drop_tail"), [(False, False), (True, True)])
def test_distributed_sampler_splits_between_replicas(manager, X, drop_last, drop_tail):
    seen = []
    for rank in range(2):
        loader = AnnDataLoader(
            manager,
            batch_size=40,
            distributed_sampler=True,
            drop_last=drop_last,
            drop_dataset_tail=drop_tail,
            num_replicas=2,
            rank=rank,
        )
        assert isinstance(loader.sampler, BatchDistributedSampler)
        batches = list(loader)
        assert len(batches) == len(loader)
        per_replica = 150 if drop_tail else 151
        sizes = [b["X"].shape[0] for b in batches]
        assert sum(sizes) == (per_replica // 40 * 40 if drop_last else per_replica)
        seen.append(stack_rows(batches))
    rows = np.concatenate(seen)
    if not drop_tail:
        assert rows.shape[0] == 302  # padded with one repeated cell
    want = X.toarray()
    # rank r gets cells r, r + 2, ... (no shuffle)
    np.testing.assert_array_equal(seen[0][:10], want[0:20:2])
    np.testing.assert_array_equal(seen[1][:10], want[1:21:2])


def test_pin_memory_is_accepted_without_cuda(manager, X):
    loader = AnnDataLoader(manager, batch_size=128, pin_memory=True)
    batches = list(loader)
    np.testing.assert_array_equal(stack_rows(batches), X.toarray())
    if torch.cuda.is_available():
        assert all(v.is_pinned() for v in batches[0].values())


def test_num_workers_uses_torch_workers(manager, X):
    loader = AnnDataLoader(manager, batch_size=100, num_workers=1)
    got = stack_rows(list(loader))
    np.testing.assert_array_equal(got, X.toarray())


def test_prefetch_factor_sets_depth(manager, X):
    loader = AnnDataLoader(manager, batch_size=10, prefetch_factor=5)
    assert loader._prefetch_depth == 5
    np.testing.assert_array_equal(stack_rows(list(loader)), X.toarray())


# -- prefetch thread lifecycle -------------------------------------------------------------
def test_thread_stops_after_full_epoch(manager):
    it = iter(AnnDataLoader(manager, batch_size=10))
    next(it)
    assert len(prefetch_threads()) == 1
    for _ in it:
        pass
    assert prefetch_threads() == []


def test_thread_stops_on_break(manager):
    for i, _ in enumerate(AnnDataLoader(manager, batch_size=10)):
        if i == 2:
            break
    assert wait_no_threads() == []


def test_thread_stops_on_del_and_close(manager):
    it = iter(AnnDataLoader(manager, batch_size=10))
    next(it)
    del it
    assert wait_no_threads() == []
    it = iter(AnnDataLoader(manager, batch_size=10))
    next(it)
    it.close()
    assert prefetch_threads() == []
    with pytest.raises(StopIteration):
        next(it)


def test_thread_stops_on_exception_in_loop_body(manager):
    def consume():
        for i, _ in enumerate(AnnDataLoader(manager, batch_size=10)):
            if i == 1:
                raise RuntimeError("training step failed")

    with pytest.raises(RuntimeError, match="training step failed"):
        consume()
    assert wait_no_threads() == []


def test_error_while_loading_is_raised_and_stops_thread(manager):
    loader = AnnDataLoader(manager, batch_size=10)
    dataset = loader.dataset.dataset
    dataset._prepare()
    reader = dataset._readers["X"]
    original = reader.read

    def failing(rows, alloc):
        if 25 in rows:  # the third minibatch, whichever thread loads it
            raise ValueError("corrupt block")
        return original(rows, alloc)

    reader.read = failing
    got = []
    with pytest.raises(ValueError, match="corrupt block"):
        for b in loader:
            got.append(b)
    assert len(got) == 2
    assert prefetch_threads() == []


def test_two_live_iterators(manager, X):
    loader = AnnDataLoader(manager, batch_size=50)
    a, b = iter(loader), iter(loader)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x["X"], y["X"])


# -- buffer reuse ----------------------------------------------------------------------------
def test_kept_batches_are_never_overwritten(X):
    big = sp.random(400, 2000, density=0.05, format="csr", random_state=0, dtype=np.float32)
    manager = make_manager(big, with_cont=False)
    kept = list(AnnDataLoader(manager, batch_size=64))  # 512 KB buffers: pooled size
    np.testing.assert_array_equal(stack_rows(kept), big.toarray())
    views, arrays, grads = [], [], []
    w = torch.ones(2000, requires_grad=True)
    for i, b in enumerate(AnnDataLoader(manager, batch_size=64)):
        if i == 0:
            views.append(b["X"][:3])
        if i == 1:
            arrays.append(b["X"].numpy())
        if i == 2:
            grads.append((b["X"] * w).sum())  # autograd keeps X alive without a Python ref
    want = big.toarray()
    np.testing.assert_array_equal(views[0].numpy(), want[:3])
    np.testing.assert_array_equal(arrays[0], want[64:128])
    assert grads[0].item() == pytest.approx(want[128:192].sum(), rel=1e-5)


def test_released_buffers_are_reused():
    pool = BufferPool(max_buffers=3)
    assert pool.enabled
    a = pool.empty((300, 300), torch.float32)
    ptr = a.data_ptr()
    assert pool.empty((300, 300), torch.float32).data_ptr() != ptr  # `a` still held
    del a
    assert pool.empty((300, 300), torch.float32).data_ptr() == ptr
    small = pool.empty((2, 2), torch.float32)
    assert small.shape == (2, 2)  # small buffers are not pooled


def test_next_minibatches_are_prepared_while_the_current_one_is_used():
    big = sp.random(2000, 2000, density=0.02, format="csr", random_state=0, dtype=np.float32)
    manager = make_manager(big, with_cont=False)
    it = iter(AnnDataLoader(manager, batch_size=512))  # 4 MB minibatches: one per request
    first = next(it)

    def prepared():  # finished by the thread, or fetched inline while waiting for the first
        return it._results.qsize() + len(it._done) + len(it._ready)

    deadline = time.monotonic() + 5
    while prepared() < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert prepared() == 2  # minibatches 2 and 3 were gathered while the consumer slept
    rest = [first, *it]
    np.testing.assert_array_equal(stack_rows(rest), big.toarray())


def test_backed_anndata_through_loader(tmp_path, X):
    import anndata

    adata = AnnData(X)
    adata.write_h5ad(tmp_path / "x.h5ad")
    backed = anndata.read_h5ad(tmp_path / "x.h5ad", backed="r")
    manager = AnnDataManager(
        fields=[LayerField(REGISTRY_KEYS.X_KEY, None, is_count_data=False)],
        setup_method_args={"model_name": "M", "setup_method_name": "setup_anndata"},
    )
    manager.register_fields(backed)
    indices = np.random.default_rng(0).permutation(N)
    batches = list(AnnDataLoader(manager, indices=indices, batch_size=50))
    for k, b in enumerate(batches):  # rows of a backed minibatch come sorted
        rows = np.sort(indices[k * 50 : (k + 1) * 50])
        np.testing.assert_array_equal(b["X"].numpy(), X[rows].toarray())
    backed.file.close()


def test_dataset_pickles_for_spawned_workers(manager, X):
    import pickle

    ds = AnnDataLoader(manager).dataset.dataset
    ds[[0]]
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[[3, 1]]["X"], X[[3, 1]].toarray())
