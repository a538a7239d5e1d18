"""Background minibatch preparation for the main-process loader path.

One daemon thread per live iterator gathers minibatches while the consumer works on the
previous one (the Rust gathers release the GIL). The main thread draws the index batches
from the sampler, so every draw from torch's global RNG happens where it would happen in
torch's own single-process iterator, and keeps at most ``depth`` requests in flight. The
thread never references the iterator: when the iterator is exhausted, closed, garbage
collected (``break``, ``del``, an exception in the loop body) or a batch fails, a finalizer
stops and joins the thread.
"""

from __future__ import annotations

import math
import queue
import sys
import threading
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import torch

_STOP = object()
_JOIN_TIMEOUT_S = 10.0
_POLL_S = 1.0

_TORCH_DTYPES = {
    np.dtype(np.float32): torch.float32,
    np.dtype(np.float64): torch.float64,
    np.dtype(np.float16): torch.float16,
    np.dtype(np.int64): torch.int64,
    np.dtype(np.int32): torch.int32,
    np.dtype(np.int16): torch.int16,
    np.dtype(np.int8): torch.int8,
    np.dtype(np.uint8): torch.uint8,
    np.dtype(np.bool_): torch.bool,
}


def pin_memory_available() -> bool:
    """Whether page-locked host buffers can be allocated (an accelerator is present)."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        return bool(accelerator.is_available())
    return bool(torch.cuda.is_available())


# -- output buffers ------------------------------------------------------------------------
def _storage_use_count(t: torch.Tensor) -> int:
    return torch._C._storage_Use_Count(t.untyped_storage()._cdata)


class BufferPool:
    """Reuses large unpinned output buffers once nothing but the pool refers to them.

    A fresh multi-megabyte allocation per minibatch costs a page fault per 4 KiB page
    (the allocator returns such blocks to the OS on free); reusing a released buffer skips
    that. A buffer counts as released when the pool holds the only Python reference, the
    only ``TensorImpl`` reference (autograd keeps saved tensors alive this way) and the only
    storage reference (views, numpy arrays). Pinned buffers are never pooled: torch's
    caching host allocator already reuses them, and only it knows when an asynchronous copy
    out of one has finished.
    """

    def __init__(
        self, max_buffers: int, min_bytes: int = 1 << 18, max_bytes: int = 512 << 20
    ) -> None:
        self.max_buffers = max_buffers
        self.min_bytes = min_bytes
        self.max_bytes = max_bytes
        self._buffers: list[torch.Tensor] = []
        self._next = 0
        self._lock = threading.Lock()
        self.enabled = self._calibrate()

    def _calibrate(self) -> bool:
        try:
            probe = [torch.empty(4)]
            self._ref_base = sys.getrefcount(probe[0])
            self._storage_base = _storage_use_count(probe[0])
            self._impl_base = probe[0]._use_count()
            held = probe[0].numpy()
            busy = _storage_use_count(probe[0]) != self._storage_base
            del held
            return busy and self._is_free(probe, 0)
        except Exception:  # private torch API missing or changed: allocate per batch
            return False

    def _is_free(self, buffers: list[torch.Tensor], i: int) -> bool:
        return (
            sys.getrefcount(buffers[i]) == self._ref_base
            and buffers[i]._use_count() == self._impl_base
            and _storage_use_count(buffers[i]) == self._storage_base
        )

    def empty(self, shape: tuple, dtype: torch.dtype) -> torch.Tensor:
        """A tensor of ``shape``/``dtype``: a released pooled one, or a new one."""
        nbytes = math.prod(shape) * dtype.itemsize
        if not self.enabled or nbytes < self.min_bytes:
            return torch.empty(shape, dtype=dtype)
        shape = tuple(shape)
        with self._lock:
            buffers = self._buffers  # indexed only: a local name would add a reference
            n = len(buffers)
            start = self._next
            evict = None
            for k in range(n):
                i = (start + k) % n
                if buffers[i].dtype == dtype and buffers[i].shape == shape:
                    if self._is_free(buffers, i):
                        self._next = (i + 1) % n
                        return buffers[i]
                elif evict is None and self._is_free(buffers, i):
                    evict = i
            tensor = torch.empty(shape, dtype=dtype)
            pooled = sum(b.nbytes for b in buffers)
            if n < self.max_buffers and pooled + nbytes <= self.max_bytes:
                buffers.append(tensor)
            elif evict is not None:
                buffers[evict] = tensor
            return tensor

    def clear(self) -> None:
        """Drop every pooled buffer."""
        with self._lock:
            self._buffers.clear()


def torch_allocator(
    pin_memory: bool, pool: BufferPool | None
) -> Callable[[tuple, np.dtype], tuple[Any, np.ndarray]]:
    """Allocator for the dataset readers: torch-owned buffers and their numpy views."""

    def alloc(shape: tuple, dtype: np.dtype) -> tuple[Any, np.ndarray]:
        tdtype = _TORCH_DTYPES.get(dtype)
        if tdtype is None:
            arr = np.empty(shape, dtype=dtype)
            return arr, arr
        if pin_memory:
            try:
                tensor = torch.empty(shape, dtype=tdtype, pin_memory=True)
            except RuntimeError:  # no usable accelerator after all
                tensor = torch.empty(shape, dtype=tdtype)
        elif pool is not None:
            tensor = pool.empty(shape, tdtype)
        else:
            tensor = torch.empty(shape, dtype=tdtype)
        return tensor, tensor.numpy()

    alloc.pinned = pin_memory
    return alloc


def to_torch(batch: dict[str, Any], pin_memory: bool) -> dict[str, Any]:
    """Turn any numpy entries (obs columns, fallback readers) into tensors."""
    for key, value in batch.items():
        if type(value) is np.ndarray:
            if not value.flags.c_contiguous:
                value = np.ascontiguousarray(value)
            tensor = torch.from_numpy(value)
            if pin_memory:
                try:
                    tensor = tensor.pin_memory()
                except RuntimeError:
                    pass
            batch[key] = tensor
    return batch


def to_numpy(batch: dict[str, Any]) -> dict[str, Any]:
    """Numpy views of dense tensor entries (sparse tensors are kept)."""
    for key, value in batch.items():
        if isinstance(value, torch.Tensor) and value.layout == torch.strided:
            batch[key] = value.numpy()
    return batch


# -- the prefetching iterator --------------------------------------------------------------
def _run(
    fetch: Callable[[Any], Any],
    group: list[Any],
    stop: threading.Event,
    catch: type[BaseException] = BaseException,
) -> tuple:
    """Fetch every index batch of ``group``: ``(batches, None)`` or ``(done, exception)``."""
    done: list[Any] = []
    try:
        for item in group:
            if stop.is_set():
                break
            done.append(fetch(item))
    except catch as exc:  # forwarded to the consumer, raised there in order
        return done, exc
    return done, None


def _worker(
    fetch: Callable[[Any], Any],
    requests: queue.SimpleQueue,
    results: queue.SimpleQueue,
    stop: threading.Event,
) -> None:
    while True:
        request = requests.get()
        if request is _STOP or stop.is_set():
            return
        seq, group = request
        results.put((seq, *_run(fetch, group, stop)))
        # No local may keep a delivered batch alive: the buffer pool counts references.
        request = group = None


def _shutdown(
    thread: threading.Thread, requests: queue.SimpleQueue, stop: threading.Event
) -> None:
    stop.set()
    requests.put(_STOP)
    if thread is not threading.current_thread() and thread.is_alive():
        thread.join(_JOIN_TIMEOUT_S)


class PrefetchIterator(Iterator):
    """Yields ``fetch(b)`` for each index batch ``b`` of ``batches``, prepared ahead.

    Requests (groups of index batches, numbered) go to one background thread. When the
    consumer asks for a minibatch that is not ready yet, its own thread would only wait,
    so it takes the next queued request and fetches it itself (the gathers release the
    GIL, so both cores work); results are delivered in order.

    Parameters
    ----------
    fetch
        Builds one minibatch from one index batch (thread safe).
    batches
        Index batches; advanced on the consumer's thread only.
    depth
        How many groups may be requested ahead of the consumer.
    length
        ``len()`` of the iterator (number of minibatches).
    group
        Minibatches per request. Handing work to a thread and back costs tens of
        microseconds; grouping small minibatches pays that once per group.
    """

    def __init__(
        self,
        fetch: Callable[[Any], Any],
        batches: Iterator[Any],
        depth: int = 2,
        length: int | None = None,
        group: int = 1,
    ) -> None:
        self._fetch = fetch
        self._batches = batches
        self._depth = max(1, int(depth))
        self._group = max(1, int(group))
        self._length = length
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._results: queue.SimpleQueue = queue.SimpleQueue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._finalizer: weakref.finalize | None = None
        self._ready: deque[Any] = deque()
        self._done: dict[int, tuple[list[Any], BaseException | None]] = {}
        self._error: BaseException | None = None
        self._submitted = 0  # sequence number of the next request
        self._delivered = 0  # sequence number of the next group to hand out
        self._exhausted = False
        self._closed = False

    def __iter__(self) -> PrefetchIterator:
        return self

    def __len__(self) -> int:
        if self._length is None:
            raise TypeError("this loader iterator has no length")
        return self._length

    def _start(self) -> None:
        thread = threading.Thread(
            target=_worker,
            args=(self._fetch, self._requests, self._results, self._stop),
            name="scvi_rs-loader-prefetch",
            daemon=True,
        )
        thread.start()
        self._thread = thread
        self._finalizer = weakref.finalize(self, _shutdown, thread, self._requests, self._stop)
        for _ in range(self._depth):
            self._submit()

    def _submit(self) -> None:
        if self._exhausted:
            return
        request = []
        try:
            for _ in range(self._group):
                request.append(next(self._batches))
        except StopIteration:
            self._exhausted = True
        if request:
            self._requests.put((self._submitted, request))
            self._submitted += 1

    def _wait(self) -> None:
        """Store one finished group; fetch a queued one inline rather than sit idle."""
        try:
            request = self._requests.get_nowait()
        except queue.Empty:
            request = None
        if request is not None:
            seq, group = request
            # on the consumer's thread: KeyboardInterrupt and the like propagate at once
            self._done[seq] = _run(self._fetch, group, self._stop, catch=Exception)
            return
        while True:
            try:
                seq, done, error = self._results.get(timeout=_POLL_S)
            except queue.Empty:
                if self._thread is None or not self._thread.is_alive():
                    raise RuntimeError(
                        "the loader's prefetch thread stopped unexpectedly"
                    ) from None
            else:
                self._done[seq] = (done, error)
                return

    def __next__(self) -> Any:
        if self._closed:
            raise StopIteration
        try:
            if self._thread is None:
                self._start()
            while not self._ready:
                if self._error is not None:
                    error, self._error = self._error, None
                    raise error
                if self._delivered == self._submitted:
                    raise StopIteration
                while self._delivered not in self._done:
                    self._wait()
                done, error = self._done.pop(self._delivered)
                self._delivered += 1
                self._ready.extend(done)
                if error is not None:
                    self._error = error  # raised once the batches before it are consumed
                else:
                    self._submit()
            return self._ready.popleft()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Stop and join the background thread; further ``next()`` raises StopIteration."""
        if self._closed:
            return
        self._closed = True
        self._ready.clear()
        self._done.clear()
        if self._finalizer is not None:
            self._finalizer()


__all__ = [
    "BufferPool",
    "PrefetchIterator",
    "pin_memory_available",
    "to_numpy",
    "to_torch",
    "torch_allocator",
]
