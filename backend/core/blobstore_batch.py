"""Blobs written together: a save hands its chunks to a batch and commits it before a row names them.

Any store (S3) gets `PooledBatch`, whose puts run on the I/O threads so that their round trips overlap; the local
store's batch (blobstore._LocalBatch, a PooledBatch that also records folders) fsyncs each folder once per batch.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_all
from typing import TYPE_CHECKING, Protocol, TypeVar

if TYPE_CHECKING:
    from backend.core.blobstore import BlobStore

# Blob writes or fsyncs in flight at once: each waits on storage (the disk's journal, an S3 round trip), not on
# the CPU, and concurrent fsyncs of one filesystem share its journal commits.
_IO_THREADS = 8
_THREAD_NAME = "blob-io"
_io_lock = threading.Lock()
_io: tuple[int, ThreadPoolExecutor] | None = None
T = TypeVar("T")


def io_pool() -> ThreadPoolExecutor:
    """The process's blob I/O threads, shared by every writer (started once, and again in a forked child)."""
    global _io
    with _io_lock:
        if _io is None or _io[0] != os.getpid():
            _io = (os.getpid(), ThreadPoolExecutor(max_workers=_IO_THREADS, thread_name_prefix=_THREAD_NAME))
        return _io[1]


def on_io_thread() -> bool:
    """Whether the caller is one of the I/O threads (which must not wait on tasks queued behind it)."""
    return threading.current_thread().name.startswith(_THREAD_NAME)


def start_each(work: Callable[[T], object], items: Iterable[T]) -> list[Future[None]]:
    """Start work on every item on the I/O threads; returns a future per item (wait on them with wait_each)."""
    todo = list(items)
    # A task of the pool waiting on tasks it queued there could wait forever: run those here, one by one (and a
    # single item too, which gains nothing from a thread hop).
    if len(todo) >= 2 and not on_io_thread():
        return [io_pool().submit(_run, work, item) for item in todo]
    futures: list[Future[None]] = []
    for item in todo:
        future: Future[None] = Future()
        try:
            work(item)
        except Exception as exc:  # kept in its future, raised by wait_each like a pooled task's error
            future.set_exception(exc)
        else:
            future.set_result(None)
        futures.append(future)
    return futures


def _run(work: Callable[[T], object], item: T) -> None:
    work(item)


def _done() -> None:
    """A finished wait."""


def wait_each(futures: Iterable[Future[None]]) -> None:
    """Wait until every future ended, then raise the first failure (in their order), if any."""
    done = list(futures)
    wait_all(done)
    for future in done:
        future.result()


class BlobBatch(Protocol):
    """The blobs of one save, stored together: `put` hands a blob over (its digest comes back at once), `commit`
    returns once every blob handed over is durably stored, and must return before a row naming them commits."""

    new_bytes: int  # bytes of the blobs this batch stored that were not stored before

    def put(self, data: bytes) -> str:
        """Hand a blob over; returns its sha256 (a blob already stored or already handed over is written once)."""
        ...

    def pending(self, digest: str) -> bytes | None:
        """A blob handed over and not yet committed (None for any other digest)."""
        ...

    def start_commit(self) -> Callable[[], None]:
        """Wait until every blob handed over is stored and readable (the first failure is raised), start what is left
        to make them durable, and return the wait for that (which raises its first failure): call it before a row
        naming them commits, and let other work (the rows' inserts) run meanwhile."""
        ...

    def commit(self) -> None:
        """Store every blob handed over durably: `start_commit()()`."""
        ...

    def abort(self) -> None:
        """Give up the batch: wait for writes in flight, drop what is not stored yet; never raises."""
        ...


def blob_batch(blobs: BlobStore) -> BlobBatch:
    """A batch on the store: its own when it has one (the local store's shares fsyncs), else puts on I/O threads."""
    batch = getattr(blobs, "batch", None)
    return batch() if callable(batch) else PooledBatch(blobs)


class PooledBatch:
    """A batch for any store: each blob is written by put_bytes on the I/O threads while the caller goes on (an S3
    store's round trips overlap); commit waits for all of them."""

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self.new_bytes = 0
        # Structures are encoded on several threads: each digest is written (and counted) by the first to claim it.
        self._lock = threading.Lock()
        self._claimed: set[str] = set()
        self._writes: list[Future[None]] = []
        self._pending: dict[str, bytes] = {}

    def put(self, data: bytes) -> str:
        """Hand a blob over; its write starts on an I/O thread."""
        digest = hashlib.sha256(data).hexdigest()
        with self._lock:
            if digest in self._claimed:
                return digest
            self._claimed.add(digest)
            self._pending[digest] = data
            self._writes.append(io_pool().submit(self._write, digest, data))
        return digest

    def _write(self, digest: str, data: bytes) -> None:
        try:
            if not self.blobs.exists(digest):
                self.blobs.put_bytes(data)
                with self._lock:
                    self.new_bytes += len(data)
        finally:
            with self._lock:
                self._pending.pop(digest, None)

    def pending(self, digest: str) -> bytes | None:
        """A blob still being written."""
        with self._lock:
            return self._pending.get(digest)

    def _writes_so_far(self) -> list[Future[None]]:
        # Every write is kept (not handed to the first commit that waits for it): a commit on another thread, or a
        # retry after a failure, waits for (and raises the failure of) each write handed over before it began.
        with self._lock:
            return list(self._writes)

    def start_commit(self) -> Callable[[], None]:
        """Wait for every write (a stored blob is durable); the first failed one is raised."""
        wait_each(self._writes_so_far())
        return _done

    def commit(self) -> None:
        """Wait for every write; the first failed one is raised."""
        self.start_commit()

    def abort(self) -> None:
        """Wait for the writes in flight (a blob stored meanwhile stays, unreferenced, for gc)."""
        wait_all(self._writes_so_far())
