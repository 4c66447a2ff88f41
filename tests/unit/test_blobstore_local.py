"""The local blob store's writes: content-addressed, never half-visible, durable (file and directory fsync) before
a batch returns, and batched so that a save's many chunks share their fsyncs."""

from __future__ import annotations

import hashlib
import os
import threading
from pathlib import Path

import pytest

from backend.core.blobstore import LocalBlobStore
from backend.core.blobstore_batch import BlobBatch, blob_batch
from tests.fsync_log import FsyncLog, fsyncs

__all__ = ["fsyncs"]  # the fixture


def _blobs(n: int, size: int = 3000) -> list[bytes]:
    return [bytes([k]) * 8 + os.urandom(size) for k in range(n)]


def _temp_files(store: LocalBlobStore) -> list[str]:
    return os.listdir(store.root / "tmp")


def _assert_durable(store: LocalBlobStore, fsyncs: FsyncLog, digest: str) -> None:
    path = store.local_path(digest)
    assert path is not None
    fsyncs.assert_durable(path)


def test_put_bytes_is_durable_file_and_folder(tmp_path: Path, fsyncs: FsyncLog) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    data = b"one blob"
    digest = store.put_bytes(data)
    assert digest == hashlib.sha256(data).hexdigest()
    assert store.get_bytes(digest) == data
    _assert_durable(store, fsyncs, digest)
    # The fan-out folders were created by this write: their entries are made durable too.
    assert fsyncs.synced(store.root) and fsyncs.synced(store.root / digest[:2])
    assert _temp_files(store) == []


def test_put_file_is_durable_and_a_second_put_writes_nothing(tmp_path: Path, fsyncs: FsyncLog) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(3 << 20))
    digest = store.put_file(source)
    assert digest == hashlib.sha256(source.read_bytes()).hexdigest()
    _assert_durable(store, fsyncs, digest)
    renames = sum(1 for kind, _, _ in fsyncs.events if kind == "rename")
    assert store.put_file(source) == digest
    assert store.put_bytes(source.read_bytes()) == digest
    assert sum(1 for kind, _, _ in fsyncs.events if kind == "rename") == renames  # never overwritten
    assert _temp_files(store) == []


def test_a_batch_makes_every_blob_durable_before_commit_returns(tmp_path: Path, fsyncs: FsyncLog) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    items = _blobs(40)
    batch = blob_batch(store)
    digests = [batch.put(data) for data in items]
    assert digests == [hashlib.sha256(data).hexdigest() for data in items]
    # A blob still being written is read from the batch (a patch's later box may need it).
    assert all(batch.pending(d) in (data, None) for d, data in zip(digests, items, strict=True))
    batch.commit()
    assert batch.pending(digests[0]) is None
    for digest, data in zip(digests, items, strict=True):
        assert store.get_bytes(digest) == data
        _assert_durable(store, fsyncs, digest)
    assert batch.new_bytes == sum(len(data) for data in items)
    # Each folder is fsynced once per batch, however many of its blobs the batch wrote.
    dirs = [ino for kind, ino, is_dir in fsyncs.events if kind == "fsync" and is_dir]
    assert len(dirs) == len(set(dirs))
    assert _temp_files(store) == []


def test_a_batch_writes_a_stored_or_repeated_blob_once(tmp_path: Path, fsyncs: FsyncLog) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    old, new = _blobs(2)
    store.put_bytes(old)
    files_before = sum(1 for kind, _, is_dir in fsyncs.events if kind == "fsync" and not is_dir)
    batch = blob_batch(store)
    batch.put(old)
    batch.put(new)
    batch.put(new)
    batch.commit()
    assert batch.new_bytes == len(new)
    files = sum(1 for kind, _, is_dir in fsyncs.events if kind == "fsync" and not is_dir) - files_before
    assert files == 1
    # The folder of the reused blob is fsynced too: another writer may have renamed it in a moment ago.
    old_path = store.local_path(hashlib.sha256(old).hexdigest())
    assert old_path is not None and fsyncs.index("fsync", old_path.parent) >= 0


def _assert_whole(store: LocalBlobStore, fsyncs: FsyncLog | None = None) -> None:
    """Every blob under its name is complete (its content hashes to its name) and, when fsyncs are recorded, its
    content was fsynced before it was renamed there."""
    for info in store.iter_blobs():
        assert hashlib.sha256(store.get_bytes(info.digest)).hexdigest() == info.digest
        path = store.local_path(info.digest)
        assert path is not None
        if fsyncs is not None:
            assert fsyncs.index("fsync", path) < fsyncs.index("rename", path)


def test_a_failed_fsync_fails_the_batch_and_leaves_only_whole_durable_blobs(tmp_path: Path, fsyncs: FsyncLog) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    fsyncs.fail_after = 5
    batch = blob_batch(store)
    digests = [batch.put(data) for data in _blobs(12)]
    with pytest.raises(OSError, match="injected"):
        batch.commit()
    assert sum(store.exists(d) for d in digests) <= 5
    _assert_whole(store, fsyncs)
    assert _temp_files(store) == []


def test_an_aborted_batch_leaves_no_temp_file(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    batch = blob_batch(store)
    for data in _blobs(5):
        batch.put(data)
    batch.abort()
    assert batch.pending(hashlib.sha256(b"x").hexdigest()) is None
    _assert_whole(store)
    assert _temp_files(store) == []


def test_two_batches_writing_one_digest_both_succeed(tmp_path: Path) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    shared = _blobs(1)[0]
    batches = [blob_batch(store) for _ in range(8)]
    barrier = threading.Barrier(len(batches))

    def write(batch: BlobBatch) -> str:
        digest = batch.put(shared)
        barrier.wait()
        batch.commit()
        return digest

    threads = []
    results: list[str] = []
    for batch in batches:
        thread = threading.Thread(target=lambda b=batch: results.append(write(b)))
        threads.append(thread)
        thread.start()
    for thread in threads:
        thread.join()
    assert set(results) == {hashlib.sha256(shared).hexdigest()} and len(results) == 8
    assert store.get_bytes(results[0]) == shared
    assert [info.digest for info in store.iter_blobs()] == [results[0]]
    assert _temp_files(store) == []


def test_a_store_without_batches_gets_one_that_puts_through_it(tmp_path: Path) -> None:
    class Plain:
        """A store that offers only the protocol's put_bytes/exists (as an S3 store or a wrapper does)."""

        def __init__(self) -> None:
            self.inner = LocalBlobStore(tmp_path / "plain")
            self.puts = 0

        def put_bytes(self, data: bytes) -> str:
            self.puts += 1
            return self.inner.put_bytes(data)

        def exists(self, digest: str) -> bool:
            return self.inner.exists(digest)

    plain = Plain()
    stored, fresh = _blobs(2)
    plain.inner.put_bytes(stored)
    batch = blob_batch(plain)  # type: ignore[arg-type]
    digests = [batch.put(stored), batch.put(fresh), batch.put(fresh)]
    batch.commit()
    assert plain.puts == 1 and batch.new_bytes == len(fresh)
    assert plain.inner.get_bytes(digests[1]) == fresh


def test_a_commit_on_another_thread_waits_for_the_fsyncs_a_first_commit_started(
    tmp_path: Path, fsyncs: FsyncLog
) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    batch = blob_batch(store)
    for data in _blobs(12):
        batch.put(data)
    fsyncs.folder_delay_s = 0.05  # the first commit is still fsyncing folders when the second one starts
    first = threading.Thread(target=batch.commit)
    first.start()
    assert fsyncs.folder_syncing.wait(10)
    batch.commit()  # its blobs were taken by the first commit: it must still wait for their folders
    folders_synced = {ino for kind, ino, is_dir in fsyncs.events if kind == "fsync" and is_dir}
    first.join()
    for info in store.iter_blobs():
        path = store.local_path(info.digest)
        assert path is not None and path.parent.stat().st_ino in folders_synced


def test_a_failed_batch_fails_every_later_commit(tmp_path: Path, fsyncs: FsyncLog) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    batch = blob_batch(store)
    for data in _blobs(6):
        batch.put(data)
    fsyncs.fail_folders = True
    with pytest.raises(OSError, match="injected"):
        batch.commit()
    fsyncs.fail_folders = False
    # A failed fsync says nothing about what reached the disk: a retry must not claim the blobs durable.
    with pytest.raises(OSError, match="injected"):
        batch.commit()


def test_blobs_handed_over_after_a_commit_are_made_durable_by_the_next(tmp_path: Path, fsyncs: FsyncLog) -> None:
    store = LocalBlobStore(tmp_path / "blobs")
    batch = blob_batch(store)
    first, second = _blobs(2)
    batch.put(first)
    batch.commit()
    digest = batch.put(second)
    batch.commit()
    _assert_durable(store, fsyncs, digest)
