"""``BlockLoader``: minibatches read from disk in contiguous blocks of rows.

Random rows of a file-backed X cost one small read each; this loader instead reads the
file in blocks of consecutive rows (one sequential read of ``indptr``, ``indices`` and
``data`` per block), visits the blocks in a seeded random order and shuffles the cells of
a window of several blocks. Every cell of the loader is yielded exactly once per epoch,
and only the loader's cells: the train/validation split stays per cell, a block's other
cells are read and skipped.

Three threads share the work: a reader reads the next window while a decoder turns the
current one into dense minibatches (the Rust CSR gather, GIL released) and the training
loop consumes them. Errors in either thread reach the consumer as an exception that names
the file; nothing waits forever on a thread that died.
"""

from __future__ import annotations

import logging
import math
import os
import queue
import stat
import threading
import warnings
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import scipy.sparse as sp
import torch

from .. import _core
from .._constants import REGISTRY_KEYS
from .._settings import settings
from ..data._anntorchdataset import _csr_parts, _make_reader, _native
from ._prefetch import BufferPool, pin_memory_available, to_torch, torch_allocator

if TYPE_CHECKING:
    from ..data import AnnDataManager

logger = logging.getLogger("scvi_rs")

LOAD_MODES = ("blocks", "random")
# Stored bytes per block by default: large enough for sequential disk reads, small enough
# that a window of blocks (and the one read ahead) stays a few hundred MB at most.
_BLOCK_BYTES = 32 << 20
_SHUFFLE_WINDOW = 4
_MIN_BLOCK_ROWS = 256
_POLL_S = 0.1
_HANDOFF_POLL_S = 0.002
_JOIN_TIMEOUT_S = 10.0
_DONE = object()
_IN_MEMORY = "<in memory>"


# -- where X lives ---------------------------------------------------------------------------
def _file_name(obj: Any) -> str:
    """The file (or store) a backed array lives in, for error messages."""
    for candidate in (obj, getattr(obj, "group", None)):
        file = getattr(candidate, "file", None)
        name = getattr(file, "filename", None)
        if name:
            return str(name)
        store = getattr(candidate, "store", None)
        root = getattr(store, "root", None) or getattr(store, "path", None)
        if root:
            return str(root)
    backing = getattr(obj, "backing_file", None) or getattr(obj, "filename", None)
    return str(backing) if backing else _IN_MEMORY


def _path_size(name: str) -> int | None:
    """Size of a file (0 for a zarr directory); None when the path does not exist."""
    if name == _IN_MEMORY:
        return None
    try:
        st = os.stat(name)
    except OSError:
        return None
    return 0 if stat.S_ISDIR(st.st_mode) else int(st.st_size)


def _backed_sparse_format(obj: Any) -> str | None:
    try:
        from anndata.abc import CSCDataset, CSRDataset
    except ImportError:  # pragma: no cover - anndata < 0.10.8
        from anndata.experimental import CSCDataset, CSRDataset
    if isinstance(obj, CSRDataset):
        return "csr"
    if isinstance(obj, CSCDataset):
        return "csc"
    return None


def _is_disk_dense(obj: Any) -> bool:
    module = type(obj).__module__
    return (module.startswith("h5py") or module.startswith("zarr")) and hasattr(obj, "shape")


def is_disk_backed(obj: Any) -> bool:
    """Whether a registered matrix is read from a file (h5ad backed or zarr) on demand."""
    return _backed_sparse_format(obj) is not None or _is_disk_dense(obj)


class _Window:
    """The stored rows of the blocks of one window, ready for gathers."""

    def __init__(self, indptr=None, indices=None, data=None, dense=None) -> None:
        self.indptr, self.indices, self.data, self.dense = indptr, indices, data, dense

    def gather(self, local_rows: np.ndarray, out: np.ndarray) -> None:
        if self.dense is not None:
            if self.dense.dtype == np.float32:
                np.take(self.dense, local_rows, axis=0, out=out, mode="clip")
            else:
                _core.gather_dense_rows(self.dense, local_rows, out)
            return
        _core.gather_csr_rows(self.indptr, self.indices, self.data, local_rows, out)


class _BlockSource:
    """Reads the rows ``[start, stop)`` of several blocks into one :class:`_Window`."""

    in_place = False  # gathers use file rows directly (in-memory CSR: nothing is read)

    def __init__(self, name: str, n_vars: int) -> None:
        self.name = name
        self.n_vars = n_vars
        self._size = _path_size(name)

    def check_file(self) -> None:
        """Raise if the file went away or shrank since the loader opened it.

        Reads past the end of a truncated HDF5 file and missing zarr chunks come back as
        zeros, not errors; one ``stat`` per window turns both into a clear error.
        """
        if self._size is None:
            return
        size = _path_size(self.name)
        if size is None:
            raise FileNotFoundError(f"{self.name} disappeared while X was being read from it.")
        if size < self._size:
            raise OSError(
                f"{self.name} was truncated while X was being read from it "
                f"({self._size} bytes when opened, {size} now)."
            )

    def row_bytes(self) -> float:
        raise NotImplementedError

    def read(self, blocks: list[tuple[int, int]]) -> _Window:
        raise NotImplementedError

    def _fail(self, what: str, exc: BaseException) -> OSError:
        return OSError(f"Could not read {what} of X from {self.name}: {exc}")


class _CSRBlockSource(_BlockSource):
    """CSR X on disk (h5py/zarr datasets) or in memory: per block, slices of its arrays."""

    def __init__(self, indptr, indices, data, n_rows: int, n_vars: int, name: str) -> None:
        super().__init__(name, n_vars)
        self.h_indptr, self.h_indices, self.h_data = indptr, indices, data
        self.n_rows = n_rows
        if int(indptr.shape[0]) != n_rows + 1:
            raise ValueError(
                f"X of {name} is corrupt: indptr has {indptr.shape[0]} entries for {n_rows} rows."
            )

    def row_bytes(self) -> float:
        nnz = int(np.asarray(self.h_indptr[-1:])[0]) if self.n_rows else 0
        itemsize = np.dtype(self.h_indices.dtype).itemsize + np.dtype(self.h_data.dtype).itemsize
        return max(1.0, nnz * itemsize / max(1, self.n_rows))

    def _indptr(self, start: int, stop: int) -> np.ndarray:
        try:
            ptr = np.asarray(self.h_indptr[start : stop + 1]).astype(np.int64, copy=False)
        except Exception as exc:
            raise self._fail(f"indptr of rows {start}:{stop}", exc) from exc
        if len(ptr) != stop - start + 1 or (len(ptr) > 1 and np.any(np.diff(ptr) < 0)):
            raise ValueError(
                f"X of {self.name} is corrupt: indptr of rows {start}:{stop} is not "
                "non-decreasing (or is short)."
            )
        return ptr

    def read(self, blocks: list[tuple[int, int]]) -> _Window:
        ptrs = [self._indptr(a, b) for a, b in blocks]
        lengths = [int(p[-1] - p[0]) for p in ptrs]
        total = sum(lengths)
        indices = np.empty(total, dtype=np.dtype(self.h_indices.dtype).newbyteorder("="))
        data = np.empty(total, dtype=np.dtype(self.h_data.dtype).newbyteorder("="))
        indptr = np.empty(sum(b - a for a, b in blocks) + 1, dtype=np.int64)
        indptr[0] = 0
        row, pos = 0, 0
        for (a, b), ptr, n in zip(blocks, ptrs, lengths, strict=True):
            lo, hi = int(ptr[0]), int(ptr[-1])
            try:
                _read_into(self.h_indices, lo, hi, indices[pos : pos + n])
                _read_into(self.h_data, lo, hi, data[pos : pos + n])
            except Exception as exc:
                raise self._fail(f"rows {a}:{b} (stored entries {lo}:{hi})", exc) from exc
            indptr[row + 1 : row + 1 + b - a] = ptr[1:] - lo + pos
            row += b - a
            pos += n
        indptr, indices, data = _csr_parts(indptr, indices, data)
        return _Window(indptr, indices, data)


def _read_into(array: Any, lo: int, hi: int, out: np.ndarray) -> None:
    """``out[:] = array[lo:hi]``, straight into ``out`` for h5py datasets (no extra copy)."""
    if hi <= lo:
        return
    if hasattr(array, "read_direct") and array.dtype == out.dtype:
        array.read_direct(out, source_sel=np.s_[lo:hi])
    else:
        out[...] = array[lo:hi]


class _InMemoryCSRSource(_BlockSource):
    """CSR X in memory: nothing to read, gathers address the whole matrix."""

    in_place = True

    def __init__(self, X: Any, name: str) -> None:
        super().__init__(name, int(X.shape[1]))
        indptr, indices, data = _csr_parts(X.indptr, X.indices, X.data)
        self.window = _Window(indptr, indices, data)
        self.n_rows = int(X.shape[0])
        self._row_bytes = max(
            1.0, X.nnz * (indices.dtype.itemsize + data.dtype.itemsize) / max(1, X.shape[0])
        )

    def row_bytes(self) -> float:
        return self._row_bytes

    def read(self, blocks: list[tuple[int, int]]) -> _Window:
        return self.window


class _DenseBlockSource(_BlockSource):
    """Dense X (on disk or in memory): a block is a slice of rows."""

    def __init__(self, X: Any, name: str) -> None:
        super().__init__(name, int(X.shape[1]))
        self.X = X
        self.in_place = isinstance(X, np.ndarray)
        if self.in_place:
            self.window = _Window(dense=_native(X))

    def row_bytes(self) -> float:
        return float(self.n_vars * np.dtype(self.X.dtype).itemsize)

    def read(self, blocks: list[tuple[int, int]]) -> _Window:
        if self.in_place:
            return self.window
        parts = []
        for a, b in blocks:
            try:
                parts.append(np.asarray(self.X[a:b]))
            except Exception as exc:
                raise self._fail(f"rows {a}:{b}", exc) from exc
        dense = np.concatenate(parts, axis=0) if len(parts) > 1 else parts[0]
        return _Window(dense=_native(dense))


class _RowReadSource(_BlockSource):
    """Anything else (backed CSC): the window's rows read through the dataset's reader."""

    def __init__(self, X: Any, name: str) -> None:
        super().__init__(name, int(X.shape[1]))
        self.X = X
        self.reader = _make_reader(REGISTRY_KEYS.X_KEY, X, np.dtype(np.float32), False)

    def row_bytes(self) -> float:
        return float(self.n_vars * 4)

    def read(self, blocks: list[tuple[int, int]]) -> _Window:
        rows = np.concatenate([np.arange(a, b, dtype=np.int64) for a, b in blocks])
        try:
            dense = self.reader.read(rows, lambda shape, dtype: (np.empty(shape, dtype),) * 2)
        except Exception as exc:
            raise self._fail(f"{len(rows)} rows", exc) from exc
        return _Window(dense=np.asarray(dense, dtype=np.float32))


def block_source(X: Any) -> _BlockSource:
    """The block reader for a registered X, warning when its layout on disk is slow."""
    name = _file_name(X)
    layout = _backed_sparse_format(X)
    if layout == "csr":
        group = X.group
        return _CSRBlockSource(
            group["indptr"], group["indices"], group["data"], X.shape[0], X.shape[1], name
        )
    if layout == "csc":
        warnings.warn(
            f"X of {name} is stored as CSC on disk: reading a block of rows reads every "
            "column, so training is much slower than from CSR. Rewrite the file with CSR X "
            "(`adata.X = adata.X.tocsr()` before `write_h5ad`).",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
        return _RowReadSource(X, name)
    if _is_disk_dense(X):
        warnings.warn(
            f"X of {name} is stored dense on disk: every zero is read, so training is slower "
            "than from a sparse CSR file of the same counts.",
            UserWarning,
            stacklevel=settings.warnings_stacklevel,
        )
        return _DenseBlockSource(X, name)
    if sp.issparse(X):
        if X.format != "csr":
            X = sp.csr_matrix(X)
        return _InMemoryCSRSource(X, name)
    if isinstance(X, np.ndarray):
        return _DenseBlockSource(X, name)
    return _RowReadSource(X, name)


def default_block_size(row_bytes: float, batch_size: int) -> int:
    """Rows per block: about 32 MiB of stored entries, and at least one minibatch."""
    return int(max(_MIN_BLOCK_ROWS, batch_size, _BLOCK_BYTES // max(1.0, row_bytes)))


# -- the epoch plan ----------------------------------------------------------------------------
@dataclass
class _WindowPlan:
    blocks: list[tuple[int, int]]  # [start, stop) file rows of each block read
    file_rows: np.ndarray  # the cells of the window in yield order (file rows)
    local_rows: np.ndarray  # the same cells as rows of the window's buffer


class BlockSampler:
    """Plans each epoch of a :class:`BlockLoader`: blocks, windows and the order of cells.

    Parameters
    ----------
    cells
        File rows of the loader's cells (any order; each is yielded once per epoch).
    block_size
        Rows per block.
    shuffle_window
        Blocks whose cells are shuffled together.
    shuffle
        Visit blocks in random order and shuffle cells within windows; otherwise read the
        file front to back and yield the cells in row order.
    seed
        Seed of the epoch orders (epoch ``e`` uses ``(seed, e)``).
    num_replicas, rank
        Data-parallel sharding. The epoch's block order is cut into ``num_replicas``
        consecutive runs holding the same number of cells (a block on a cut is shared, each
        of its cells going to one process); process ``rank`` reads its run. A process whose
        share is one cell short repeats one cell, so every process takes the same steps.
    """

    def __init__(
        self,
        cells: np.ndarray,
        block_size: int,
        shuffle_window: int,
        shuffle: bool,
        seed: int,
        num_replicas: int = 1,
        rank: int = 0,
    ) -> None:
        if block_size < 1 or shuffle_window < 1:
            raise ValueError(
                f"block_size and shuffle_window must be >= 1, got {block_size} and "
                f"{shuffle_window}."
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas}).")
        cells = np.asarray(cells).reshape(-1)
        self.block_size = int(block_size)
        self.shuffle_window = int(shuffle_window)
        self.shuffle = shuffle
        self.seed = int(seed)
        self.num_replicas = int(num_replicas)
        self.rank = int(rank)
        self.epoch = 0
        self._epoch_set = False
        self.n_cells = int(cells.size)
        self._index_cells(cells)
        self.num_samples = -(-self.n_cells // self.num_replicas)

    def _index_cells(self, cells: np.ndarray) -> None:
        """Per-block counts and a compact record of which file rows are cells.

        Distinct cells (a split's training set) are kept as a bitmap, an eighth of a byte
        per file row, so the loader's memory hardly grows with the file; cells given with
        repeats are kept as a sorted array, each repeat yielded like any other cell.
        """
        n_rows = int(cells.max()) + 1 if cells.size else 0
        member = np.zeros(n_rows, dtype=np.bool_)
        member[cells] = True
        n_distinct = int(np.count_nonzero(member))
        n_blocks = -(-n_rows // self.block_size)
        if n_distinct == cells.size:
            counts = (
                np.add.reduceat(
                    member.view(np.uint8), np.arange(n_blocks) * self.block_size, dtype=np.int64
                )
                if n_blocks
                else np.zeros(0, np.int64)
            )
            self._bits = np.packbits(member, bitorder="little")
            self._sorted = None
        else:
            small = int(cells.max()) < np.iinfo(np.int32).max
            self._sorted = np.sort(cells.astype(np.int32 if small else np.int64))
            counts = np.bincount(self._sorted // self.block_size, minlength=n_blocks)
            self._bits = None
        del member
        counts = np.asarray(counts, dtype=np.int64)
        self.block_ids = np.flatnonzero(counts)
        self.block_offsets = np.concatenate([[0], np.cumsum(counts[self.block_ids])]).astype(
            np.int64
        )

    def _block_cells(self, k: int) -> np.ndarray:
        """File rows (sorted, int64) of the cells in the ``k``-th non-empty block."""
        if self._sorted is not None:
            lo, hi = self.block_offsets[k], self.block_offsets[k + 1]
            return self._sorted[lo:hi].astype(np.int64)
        start = int(self.block_ids[k]) * self.block_size
        stop = start + self.block_size
        first_byte, shift = divmod(start, 8)
        bits = np.unpackbits(self._bits[first_byte : -(-stop // 8)], bitorder="little")[
            shift : shift + self.block_size
        ]
        return np.flatnonzero(bits).astype(np.int64) + start

    def set_epoch(self, epoch: int) -> None:
        """Use the order of epoch ``epoch`` next (the trainer calls this every epoch)."""
        self.epoch = int(epoch)
        self._epoch_set = True

    def __len__(self) -> int:
        return self.num_samples

    def _my_pieces(self, order: np.ndarray) -> list[tuple[int, int, int]]:
        """``(block, first cell, end cell)`` of this process's run of the block ``order``;
        cells are counted within each block."""
        counts = np.diff(self.block_offsets)[order]
        ends = np.cumsum(counts)
        total = int(ends[-1]) if len(ends) else 0
        lo = self.rank * total // self.num_replicas
        hi = (self.rank + 1) * total // self.num_replicas
        pieces = []
        first = int(np.searchsorted(ends, lo, side="right"))
        for i in range(first, len(order)):
            begin = int(ends[i] - counts[i])
            if begin >= hi:
                break
            a, b = max(lo, begin) - begin, min(hi, int(ends[i])) - begin
            pieces.append((int(order[i]), a, b))
        return pieces

    def windows(self) -> Iterator[_WindowPlan]:
        """The windows of the current epoch, in order; advances the epoch afterwards.

        The epoch's order is drawn here, on the caller's thread; the windows themselves are
        built as the returned iterator (run on the reader thread) advances.
        """
        rng = np.random.default_rng([self.seed, self.epoch]) if self.shuffle else None
        if not self._epoch_set:
            self.epoch += 1  # iterated without set_epoch: a new order next time
        self._epoch_set = False
        order = np.arange(len(self.block_ids))
        if rng is not None:
            order = rng.permutation(order)
        return self._windows(self._my_pieces(order), rng)

    def _windows(
        self, pieces: list[tuple[int, int, int]], rng: np.random.Generator | None
    ) -> Iterator[_WindowPlan]:
        yielded = 0
        last: _WindowPlan | None = None
        for start in range(0, len(pieces), self.shuffle_window):
            last = self._window(pieces[start : start + self.shuffle_window], rng)
            yielded += len(last.file_rows)
            yield last
        if yielded < self.num_samples and last is not None and len(last.file_rows):
            take = np.resize(np.arange(len(last.file_rows)), self.num_samples - yielded)
            yield _WindowPlan([], last.file_rows[take], last.local_rows[take])

    def _window(
        self, pieces: list[tuple[int, int, int]], rng: np.random.Generator | None
    ) -> _WindowPlan:
        # each piece is read from its first to its last cell; pieces close in the file
        # (sequential epochs, neighbouring blocks) become one read
        chosen = [self._block_cells(k)[a:b] for k, a, b in pieces if b > a]
        spans = sorted(
            ((int(c[0]), int(c[-1]) + 1, i) for i, c in enumerate(chosen)), key=lambda t: t[0]
        )
        reads: list[list[int]] = []
        for start, stop, _ in spans:
            if reads and start - reads[-1][1] <= self.block_size // 8:
                reads[-1][1] = max(reads[-1][1], stop)
            else:
                reads.append([start, stop])
        read_starts = np.array([r[0] for r in reads], dtype=np.int64)
        read_offsets = np.cumsum([0] + [r[1] - r[0] for r in reads])[:-1]
        file_rows, local_rows = [], []
        for start, _, i in spans:
            cells = chosen[i]
            r = int(np.searchsorted(read_starts, start, side="right")) - 1
            file_rows.append(cells)
            local_rows.append(cells - read_starts[r] + read_offsets[r])
        rows = np.concatenate(file_rows).astype(np.int64) if file_rows else np.zeros(0, np.int64)
        local = np.concatenate(local_rows) if local_rows else np.zeros(0, np.int64)
        if rng is not None:
            perm = rng.permutation(len(rows))
            rows, local = rows[perm], local[perm]
        return _WindowPlan([(a, b) for a, b in reads], rows, local)


# -- threads -----------------------------------------------------------------------------------
def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    while not stop.is_set():
        try:
            q.put(item, timeout=_POLL_S)
            return True
        except queue.Full:
            continue
    return False


def _get(q: queue.Queue, stop: threading.Event, producer: threading.Thread | None) -> Any:
    while True:
        try:
            return q.get(timeout=_POLL_S)
        except queue.Empty:
            if stop.is_set():
                return _DONE
            if producer is not None and not producer.is_alive():
                try:
                    return q.get_nowait()
                except queue.Empty:
                    raise RuntimeError("the block loader's reader stopped unexpectedly") from None


def _wait_taken(q: queue.Queue, stop: threading.Event) -> None:
    """Wait until the consumer has taken what was put in ``q``.

    The reader starts the next window only once the decoder holds the last one, so at
    most two windows are alive (one decoded, one read): peak memory is the same whatever
    the relative speed of disk and decoder, and does not grow with the file.
    """
    while not q.empty() and not stop.wait(_HANDOFF_POLL_S):
        pass


def _read_windows(
    source: _BlockSource, plans: Iterator[_WindowPlan], out: queue.Queue, stop: threading.Event
) -> None:
    try:
        for plan in plans:
            if stop.is_set():
                return
            window = None
            if plan.blocks and not source.in_place:
                source.check_file()
                window = source.read(plan.blocks)
                source.check_file()
            elif source.in_place:
                window = source.read(plan.blocks)
            if not _put(out, (plan, window), stop):
                return
            if window is not None:
                _wait_taken(out, stop)
    except BaseException as exc:  # forwarded to the consumer, raised there
        _put(out, exc, stop)
        return
    _put(out, _DONE, stop)


def _decode_batches(
    windows: queue.Queue,
    reader: threading.Thread,
    make_batch: Callable[[list], Any],
    batch_size: int,
    drop_last: bool,
    out: queue.Queue,
    stop: threading.Event,
) -> None:
    try:
        pending: list[tuple[_Window, np.ndarray, np.ndarray]] = []
        n_pending = 0
        last_window = None
        while not stop.is_set():
            item = _get(windows, stop, reader)
            if item is _DONE:
                break
            if isinstance(item, BaseException):
                raise item
            plan, window = item
            window = window if window is not None else last_window
            last_window = window
            pos, n = 0, len(plan.file_rows)
            while pos < n:
                take = min(batch_size - n_pending, n - pos)
                pending.append(
                    (window, plan.local_rows[pos : pos + take], plan.file_rows[pos : pos + take])
                )
                n_pending += take
                pos += take
                if n_pending == batch_size:
                    # the batch is a copy: drop the window references before waiting on a full
                    # queue, so an older window is freed while the reader fills the next one
                    batch = make_batch(pending)
                    pending, n_pending = [], 0
                    if not _put(out, batch, stop):
                        return
                    del batch
        if n_pending and not drop_last and not stop.is_set():
            _put(out, make_batch(pending), stop)
    except BaseException as exc:
        _put(out, exc, stop)
        return
    _put(out, _DONE, stop)


def _shutdown(stop: threading.Event, threads: list[threading.Thread]) -> None:
    stop.set()
    for thread in threads:
        if thread is not threading.current_thread() and thread.is_alive():
            thread.join(_JOIN_TIMEOUT_S)


class _BlockIterator(Iterator):
    """One epoch of a :class:`BlockLoader`: minibatches from the decoder thread, in order."""

    def __init__(self, loader: BlockLoader) -> None:
        self._length = len(loader)
        self._stop = threading.Event()
        windows: queue.Queue = queue.Queue(maxsize=loader.prefetch_windows)
        self._batches: queue.Queue = queue.Queue(maxsize=loader.prefetch_batches)
        plans = loader.sampler.windows()
        self._reader = threading.Thread(
            target=_read_windows,
            args=(loader.source, plans, windows, self._stop),
            name="scvi_rs-block-reader",
            daemon=True,
        )
        self._decoder = threading.Thread(
            target=_decode_batches,
            args=(
                windows,
                self._reader,
                loader._make_batch,
                loader.batch_size,
                loader.drop_last,
                self._batches,
                self._stop,
            ),
            name="scvi_rs-block-decoder",
            daemon=True,
        )
        self._finalizer = weakref.finalize(
            self, _shutdown, self._stop, [self._decoder, self._reader]
        )
        self._reader.start()
        self._decoder.start()
        self._done = False

    def __len__(self) -> int:
        return self._length

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        item = _get(self._batches, self._stop, self._decoder)
        if item is _DONE or isinstance(item, BaseException):
            self.close()
            if isinstance(item, BaseException):
                raise item
            raise StopIteration
        return item

    def close(self) -> None:
        """Stop and join the reader and decoder threads."""
        self._done = True
        self._finalizer()


# -- the loader --------------------------------------------------------------------------------
class _NarrowReader:
    """An obs column or narrow array: rows cast per minibatch, no full-length copy."""

    def __init__(self, arr: np.ndarray, dtype: np.dtype) -> None:
        self.arr, self.dtype = arr, dtype

    def read(self, rows: np.ndarray, alloc: Any) -> np.ndarray:
        return np.ascontiguousarray(self.arr[rows], dtype=self.dtype)


def _field_reader(key: str, obj: Any, dtype: np.dtype) -> Any:
    # per-cell fields of backed data are in memory; a cast copy of each would cost
    # n_cells * 8 bytes per field for 20M cells, so small arrays are cast per minibatch
    if isinstance(obj, np.ndarray) and obj.ndim <= 2 and obj[:1].nbytes <= 1024:
        return _NarrowReader(obj, dtype)
    return _make_reader(key, obj, dtype, False)


def _distributed_place(kwargs: dict) -> tuple[int, int]:
    import torch.distributed as dist

    num_replicas = kwargs.pop("num_replicas", None)
    rank = kwargs.pop("rank", None)
    if num_replicas is None:
        num_replicas = dist.get_world_size() if dist.is_initialized() else 1
    if rank is None:
        rank = dist.get_rank() if dist.is_initialized() else 0
    return int(num_replicas), int(rank)


class BlockLoader:
    """Minibatches of registered fields, X read in contiguous blocks of rows.

    The default training loader of :class:`~scvi_rs.dataloaders.DataSplitter` when X is
    on disk (backed h5ad, zarr); ``datasplitter_kwargs={"load_mode": "blocks"}`` selects
    it for in-memory data too.

    Parameters
    ----------
    adata_manager
        Manager with a registered AnnData.
    indices
        Cells to load (ints or a boolean mask); all cells by default.
    batch_size
        Minibatch size (per process with ``distributed_sampler``).
    shuffle
        Visit the blocks in a random order and shuffle cells within each window of blocks;
        otherwise yield the cells in file order.
    drop_last
        Drop the last incomplete minibatch.
    block_size
        Rows per block (one sequential read each); by default about 32 MiB of stored entries
        (``32 MiB / bytes per row``, at least ``batch_size``).
    shuffle_window
        Blocks whose cells are shuffled together (default 4). Larger windows mix cells more
        and hold more rows in memory (two windows at a time).
    seed
        Seed of the epoch orders; ``settings.seed``, else a draw from torch's generator.
    data_and_attributes
        Registry keys to load: a list, a dict of key to numpy dtype, or None for all.
    distributed_sampler
        Shard the blocks between ``torch.distributed`` processes (or ``num_replicas`` and
        ``rank`` given in ``kwargs``).
    load_sparse_tensor
        Yield X as torch sparse CSR tensors.
    pin_memory
        Allocate minibatches in page-locked memory (with an accelerator).
    prefetch_factor
        Minibatches decoded ahead of the consumer (default 4).
    **kwargs
        ``num_replicas``, ``rank``, ``drop_dataset_tail``; other DataLoader arguments
        (``num_workers``, ...) are ignored: the loader has its own threads.
    """

    def __init__(
        self,
        adata_manager: AnnDataManager,
        indices: Any = None,
        batch_size: int = 128,
        shuffle: bool = False,
        drop_last: bool = False,
        block_size: int | None = None,
        shuffle_window: int | None = None,
        seed: int | None = None,
        data_and_attributes: list[str] | dict[str, np.dtype] | None = None,
        distributed_sampler: bool = False,
        load_sparse_tensor: bool = False,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
        **kwargs: Any,
    ) -> None:
        n_obs = int(adata_manager.adata.shape[0])
        if indices is None:
            indices = np.arange(n_obs, dtype=np.int64)
        else:
            indices = np.asarray(indices)
            if indices.dtype == np.bool_:
                indices = np.flatnonzero(indices)
            if indices.dtype.kind not in "iu":
                raise TypeError(
                    f"indices must be integers or a boolean mask, got {indices.dtype}."
                )
            indices = indices.reshape(-1)
        if indices.size and (indices.min() < 0 or indices.max() >= n_obs):
            raise IndexError(f"indices must lie in [0, {n_obs}).")
        self.indices = indices
        self.batch_size = int(batch_size)
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
        self.drop_last = bool(drop_last)
        self.shuffle = bool(shuffle)
        self.load_sparse_tensor = load_sparse_tensor
        self.dataset = adata_manager.create_torch_dataset(
            indices=None, data_and_attributes=data_and_attributes
        )
        keys = dict(self.dataset.keys_and_dtypes)
        if REGISTRY_KEYS.X_KEY not in keys:
            raise ValueError("BlockLoader reads X in blocks; X is not among the loaded keys.")
        self.x_dtype = np.dtype(keys.pop(REGISTRY_KEYS.X_KEY))
        self.source = block_source(self.dataset.data[REGISTRY_KEYS.X_KEY])
        self._field_readers = {
            key: _field_reader(key, self.dataset.data[key], np.dtype(dtype))
            for key, dtype in keys.items()
            if not (
                key == REGISTRY_KEYS.MINIFY_TYPE_KEY and isinstance(self.dataset.data[key], str)
            )
        }
        if block_size is None:
            block_size = default_block_size(self.source.row_bytes(), self.batch_size)
        if shuffle_window is None:
            shuffle_window = _SHUFFLE_WINDOW
        if seed is None:
            seed = settings.seed
        if seed is None:
            seed = int(torch.empty((), dtype=torch.int64).random_().item())
        num_replicas, rank = _distributed_place(kwargs) if distributed_sampler else (1, 0)
        kwargs.pop("drop_dataset_tail", None)
        self.sampler = BlockSampler(
            indices, int(block_size), int(shuffle_window), self.shuffle, seed, num_replicas, rank
        )
        self.block_size, self.shuffle_window = self.sampler.block_size, self.sampler.shuffle_window
        self.pin_memory = bool(pin_memory) and pin_memory_available()
        self.prefetch_batches = max(1, int(prefetch_factor or 4))
        self.prefetch_windows = 1
        self._pool = BufferPool(max_buffers=self.prefetch_batches + 4)
        self._alloc = torch_allocator(self.pin_memory, None if self.pin_memory else self._pool)

    def __len__(self) -> int:
        n = len(self.sampler)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        return _BlockIterator(self)

    def _make_batch(self, parts: list[tuple[_Window, np.ndarray, np.ndarray]]) -> dict:
        """One minibatch from row segments of (at most a few) windows."""
        n = sum(len(local) for _, local, _ in parts)
        rows = np.concatenate([file_rows for _, _, file_rows in parts])
        x, out = self._alloc((n, self.source.n_vars), np.dtype(np.float32))
        pos = 0
        try:
            for window, local, file_rows in parts:
                chosen = file_rows if self.source.in_place else local
                window.gather(chosen, out[pos : pos + len(local)])
                pos += len(local)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"X of {self.source.name} is corrupt: {exc}") from exc
        if self.x_dtype != np.float32:
            x = torch.from_numpy(out.astype(self.x_dtype))
        if self.load_sparse_tensor:
            x = x.to_sparse_csr()
        batch: dict[str, Any] = {REGISTRY_KEYS.X_KEY: x}
        for key, reader in self._field_readers.items():
            batch[key] = reader.read(rows, self._alloc)
        return to_torch(batch, self.pin_memory)


def resolve_load_mode(load_mode: str | None, X: Any) -> str:
    """``"blocks"`` or ``"random"``: the user's choice, else blocks for X on disk."""
    if load_mode is None:
        return "blocks" if is_disk_backed(X) else "random"
    if load_mode not in LOAD_MODES:
        raise ValueError(f"load_mode must be one of {LOAD_MODES} or None, got {load_mode!r}.")
    return load_mode


def block_loader_kwargs(
    adata_manager: AnnDataManager, kwargs: dict, splitter: Any
) -> dict[str, Any] | None:
    """Pop the block-loading arguments of a splitter's ``kwargs``; None for random reads.

    ``load_mode`` defaults to blocks when X is on disk. Splitters with loaders of their own
    (semi-supervised, device-backed) keep them: there blocks must not be asked for.
    """
    load_mode = kwargs.pop("load_mode", None)
    block_kwargs = {
        name: kwargs.pop(name) for name in ("block_size", "shuffle_window") if name in kwargs
    }
    from ._ann_dataloader import AnnDataLoader
    from ._data_splitting import DataSplitter

    own_loaders = getattr(type(splitter), "data_loader_cls", None) is not AnnDataLoader or any(
        getattr(type(splitter), name) is not getattr(DataSplitter, name)
        for name in ("train_dataloader", "val_dataloader", "test_dataloader", "_loader")
    )
    if own_loaders:
        if load_mode == "blocks":
            raise ValueError(f"load_mode='blocks' is not supported by {type(splitter).__name__}.")
        return None
    X = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
    if resolve_load_mode(load_mode, X) == "random":
        return None
    return block_kwargs


__all__ = [
    "BlockLoader",
    "BlockSampler",
    "block_loader_kwargs",
    "default_block_size",
    "resolve_load_mode",
]
