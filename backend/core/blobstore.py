"""Content-addressed blob store: sha256 keys, atomic writes, never overwritten; only `maskloop gc` deletes."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from backend.core.blobstore_batch import BlobBatch, PooledBatch, start_each, wait_each
from backend.core.config import get_settings
from backend.core.errors import NotFound

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 << 20
# A blob found by a writer's dedup check (exists/put of stored content) gets its mtime refreshed at most this
# often, so gc's grace period (counted from the mtime) protects it like a fresh write.
_TOUCH_AFTER_S = 3600.0


@dataclass(frozen=True)
class BlobInfo:
    """One stored blob as listed by gc: its digest, size in bytes and last write (or dedup hit) time."""

    digest: str
    size: int
    mtime: float


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Return digest if it is a well-formed sha256 hex string; refuse anything else (no path tricks)."""
    if not _DIGEST_RE.match(digest):
        raise NotFound(f"no blob named {digest!r}")
    return digest


class BlobStore(Protocol):
    """What every blob backend offers: a local folder (LocalBlobStore) or an S3-compatible bucket
    (backend.core.blobstore_s3.S3BlobStore); local_path is None on S3, so callers stream through open()."""

    def put_bytes(self, data: bytes) -> str:
        """Store bytes under their sha256 (no-op if present) and return the digest."""
        ...

    def put_file(self, path: Path) -> str:
        """Store a file's content under its sha256 and return the digest."""
        ...

    def get_bytes(self, digest: str) -> bytes:
        """Read a whole blob."""
        ...

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for streaming reads."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored."""
        ...

    def size(self, digest: str) -> int:
        """Size of a stored blob in bytes."""
        ...

    def local_path(self, digest: str) -> Path | None:
        """A filesystem path for zero-copy serving, when the backend has one."""
        ...

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob with its size and age (gc's sweep; streamed, never all in memory)."""
        ...

    def delete(self, digest: str, *, older_than: float | None = None) -> bool:
        """Remove a blob (gc only); with older_than (epoch seconds) only if it was not written since. True if gone."""
        ...

    def remove_stale_temp(self, max_age_s: float) -> tuple[int, int]:
        """Remove leftovers of interrupted writes older than max_age_s; returns (files, bytes) removed."""
        ...


def _touch_if_old(path: Path, mtime: float) -> None:
    """Refresh a stored blob's mtime when a writer reuses it, so a concurrent gc does not sweep it."""
    if time.time() - mtime > _TOUCH_AFTER_S:
        # A read-only store cannot be touched, but gc cannot delete there either.
        with contextlib.suppress(OSError):
            os.utime(path)


def _fsync_path(path: str | Path, *, folder: bool = False) -> None:
    """fsync a file or a folder by name (a folder's fsync makes the names renamed into it durable)."""
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if folder else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(path: str | Path) -> None:
    """fsync a folder, so that the names renamed or created in it survive a power loss."""
    _fsync_path(path, folder=True)


class _LocalBatch(PooledBatch):
    """A batch on the local store. Each blob is written on the I/O threads while the caller goes on encoding: a temp
    file, fsynced, then renamed into place (its name appears only once its content is durable, since another
    writer that finds it skips its own write); commit waits for them and then fsyncs each folder that gained a name
    (or holds a reused blob), once per folder, so the renames are durable too. Concurrent fsyncs share the disk
    journal's commits, and a folder whose rename an earlier commit already carried costs next to nothing.

    Safe to use from several threads: a commit covers every blob handed over before it began, and returns only once
    those are durable, whichever commit (on whichever thread) started their fsyncs; a failure is kept, so every later
    commit of the batch raises it too (a failed fsync proves nothing about what reached the disk: never retried).
    """

    def __init__(self, store: LocalBlobStore) -> None:
        super().__init__(store)
        self.store = store
        # Held by a commit from taking its writes until its fsyncs are recorded, so that a concurrent commit that
        # finds no folder left to fsync still waits for the fsyncs the first one started.
        self._commit_lock = threading.Lock()
        self._folders: set[Path] = set()  # whose entries this batch's blobs need durable, no fsync started since
        self._syncs: list[Future[None]] = []  # every folder fsync started

    def _write(self, digest: str, data: bytes) -> None:
        try:
            folders, written = self.store._store(digest, data)
            with self._lock:
                self._folders |= folders
                self.new_bytes += len(data) if written else 0
        finally:
            with self._lock:
                self._pending.pop(digest, None)

    def start_commit(self) -> Callable[[], None]:
        """Wait for every write (the first failure is raised; the blobs are readable now), start the fsyncs of the
        folders they were renamed into (or found in), and return the wait for those (which raises their failure)."""
        with self._commit_lock:
            wait_each(self._writes_so_far())  # a write's folders are recorded before its future is done
            with self._lock:
                folders, self._folders = self._folders, set()
            self._syncs.extend(start_each(_fsync_folder, sorted(folders)))
            syncs = list(self._syncs)
        return lambda: wait_each(syncs)

    def commit(self) -> None:
        """Make every blob handed over durable, folders included."""
        self.start_commit()()


class LocalBlobStore:
    """Blobs as files under root/ab/cd/<sha256>; written to a temp file, fsynced, renamed into place, and the folder
    fsynced (blobs written together in a batch share their fsyncs)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def _path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest[2:4] / digest

    def batch(self) -> BlobBatch:
        """A batch of blobs stored together (see _LocalBatch); use through blob_batch()."""
        return _LocalBatch(self)

    def put_bytes(self, data: bytes) -> str:
        """Store bytes under their sha256 (no-op if present) and return the digest."""
        digest = sha256_hex(data)
        folders, _ = self._store(digest, data)
        for folder in folders:  # one, or up to three when the write created its fan-out folders
            _fsync_folder(folder)
        return digest

    def put_file(self, path: Path) -> str:
        """Store a file's content under its sha256 and return the digest (hashed while it is copied)."""
        hasher = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                while block := src.read(_READ_CHUNK):
                    hasher.update(block)
                    out.write(block)
            digest = hasher.hexdigest()
            target = self._path(digest)
            if self.exists(digest):
                Path(tmp_name).unlink()
                _fsync_folder(target.parent)  # another writer's rename may not be durable yet
                return digest
            _fsync_path(tmp_name)
            folders = self._make_folders(target.parent)
            os.replace(tmp_name, target)
            for folder in folders:
                _fsync_folder(folder)
            return digest
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

    def _store(self, digest: str, data: bytes) -> tuple[set[Path], bool]:
        """Write data (whose sha256 is digest) unless stored: temp file, fsync, rename into place. Returns the
        folders to fsync before a row may name it, and whether it was written; a stored blob's age is refreshed."""
        target = self._path(digest)
        if self.exists(digest):
            return {target.parent}, False  # another writer's rename may not be durable yet
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()  # out of Python's buffer, so that the fsync covers every byte
                os.fsync(handle.fileno())
            folders = self._make_folders(target.parent)
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return folders, True

    def _make_folders(self, leaf: Path) -> set[Path]:
        """Create the fan-out folders of leaf (root/ab/cd) as needed; the folders whose entries a write into leaf
        changes (leaf itself, and the parent of each folder created), to fsync once renamed."""
        changed = {leaf}
        for folder in (leaf.parent, leaf):
            try:
                folder.mkdir()
            except FileExistsError:
                continue
            changed.add(folder.parent)
        return changed

    def get_bytes(self, digest: str) -> bytes:
        """Read a whole blob."""
        try:
            return self._path(digest).read_bytes()
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from the store") from exc

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for streaming reads."""
        try:
            return self._path(digest).open("rb")
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from the store") from exc

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored (writers ask before skipping a write: that refreshes an old blob's age)."""
        path = self._path(digest)
        try:
            mtime = path.stat().st_mtime
        except FileNotFoundError:
            return False
        _touch_if_old(path, mtime)
        return True

    def size(self, digest: str) -> int:
        """Size of a stored blob in bytes."""
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from the store") from exc

    def local_path(self, digest: str) -> Path | None:
        """The file that holds the blob."""
        return self._path(digest)

    def iter_blobs(self) -> Iterator[BlobInfo]:
        """Every stored blob under root/ab/cd/ with its size and mtime (the tmp folder and strays are skipped)."""
        for top in _scandir_sorted(self.root):
            if len(top.name) != 2 or not top.is_dir(follow_symlinks=False):
                continue
            for mid in _scandir_sorted(Path(top.path)):
                if len(mid.name) != 2 or not mid.is_dir(follow_symlinks=False):
                    continue
                for entry in _scandir_sorted(Path(mid.path)):
                    name = entry.name
                    if not _DIGEST_RE.match(name) or name[:2] != top.name or name[2:4] != mid.name:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue  # deleted meanwhile
                    yield BlobInfo(name, st.st_size, st.st_mtime)

    def delete(self, digest: str, *, older_than: float | None = None) -> bool:
        """Remove a blob; with older_than, only if its mtime is still older (a writer may have reused it)."""
        path = self._path(digest)
        try:
            if older_than is not None and path.stat().st_mtime >= older_than:
                return False
            path.unlink()
        except FileNotFoundError:
            return True
        return True

    def remove_stale_temp(self, max_age_s: float) -> tuple[int, int]:
        """Remove temp files of interrupted writes (a killed import) older than max_age_s from root/tmp."""
        return remove_old_entries(self._tmp, max_age_s)


def _scandir_sorted(folder: Path) -> list[os.DirEntry[str]]:
    """A folder's entries by name (one folder of the fan-out at a time: at most a few thousand names)."""
    try:
        with os.scandir(folder) as entries:
            return sorted(entries, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _newest_mtime(entry: os.DirEntry[str]) -> tuple[float, int]:
    """(newest mtime, total bytes) of a file or folder tree: a folder still being written to is young."""
    st = entry.stat(follow_symlinks=False)
    newest, size = st.st_mtime, st.st_size
    if entry.is_dir(follow_symlinks=False):
        for root, dirs, files in os.walk(entry.path):
            for name in dirs + files:
                try:
                    sub = os.lstat(os.path.join(root, name))
                except FileNotFoundError:
                    continue
                newest = max(newest, sub.st_mtime)
                size += sub.st_size
    return newest, size


def remove_old_entries(folder: Path, max_age_s: float, prefix: str = "") -> tuple[int, int]:
    """Remove files and folders (whose name starts with prefix) untouched for max_age_s; returns (entries, bytes)."""
    cutoff = time.time() - max_age_s
    removed = freed = 0
    try:
        listing = os.scandir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return 0, 0
    with listing as entries:
        for entry in entries:
            if not entry.name.startswith(prefix):
                continue
            try:
                newest, size = _newest_mtime(entry)
                if newest >= cutoff:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path)
                else:
                    os.unlink(entry.path)
            except FileNotFoundError:
                continue  # another process cleaned it first
            except OSError:
                continue  # not ours to remove (permissions): leave it
            removed += 1
            freed += size
    return removed, freed


def presigned_get_url(blobs: BlobStore, digest: str, *, filename: str, media_type: str) -> str | None:
    """A time-limited URL the browser may GET the blob from directly, when the store offers one and it is on."""
    presign = getattr(blobs, "presigned_get_url", None)
    return presign(digest, filename=filename, media_type=media_type) if callable(presign) else None


def without_cache(blobs: BlobStore) -> BlobStore:
    """The same store without a local read cache (an S3 store keeps one): what fsck must check."""
    uncached = getattr(blobs, "uncached", None)
    return uncached() if callable(uncached) else blobs


@lru_cache
def get_blob_store() -> BlobStore:
    """The process-wide blob store chosen by settings (MASKLOOP_BLOB_BACKEND: local or s3)."""
    settings = get_settings()
    if settings.blob_backend == "s3":
        from backend.core.blobstore_s3 import S3BlobStore  # boto3 is imported only where S3 is used

        return S3BlobStore.from_settings(settings)
    return LocalBlobStore(settings.resolved_blob_root)
