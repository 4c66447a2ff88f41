"""A bounded local disk cache of blobs kept in an object store (S3): blobs are immutable and named by their
sha256, so a cached copy never goes stale; only bytes that hash to their name are admitted.

Filled on writes (the bytes just uploaded) and on reads (a whole blob read front to back is kept as it streams by);
least recently used copies go first once the cache outgrows its size (file mtime is the use time; several
processes may share one folder: each evicts by what it finds on disk). Existence checks never use the cache — a
blob gc deleted from the bucket must not look present to a writer or to fsck.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import BinaryIO

from backend.core.blobstore import check_digest, remove_old_entries


class BlobCache:
    """Blobs as files root/ab/<sha256>, at most max_bytes in all (approximately, between evictions)."""

    def __init__(self, root: Path, max_bytes: int) -> None:
        self.root = root
        self.max_bytes = max_bytes
        self._tmp = root / "tmp"
        self._tmp.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._total: int | None = None  # bytes on disk as this process believes; None: not counted yet

    def path(self, digest: str) -> Path:
        """Where a cached blob lives."""
        check_digest(digest)
        return self.root / digest[:2] / digest

    def admits(self, size: int) -> bool:
        """Whether a blob of this size is worth caching (at most a quarter of the cache)."""
        return 0 < size <= self.max_bytes // 4

    def open(self, digest: str) -> BinaryIO | None:
        """The cached copy opened for reading (its use time refreshed), or None."""
        path = self.path(digest)
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            return None
        with contextlib.suppress(OSError):
            os.utime(path)
        return handle

    def get(self, digest: str) -> bytes | None:
        """The cached bytes, or None."""
        handle = self.open(digest)
        if handle is None:
            return None
        with handle:
            return handle.read()

    def put_bytes(self, digest: str, data: bytes) -> None:
        """Keep bytes known to hash to digest (just uploaded or verified)."""
        if not self.admits(len(data)) or self.path(digest).exists():
            return
        writer = self.writer(digest, len(data), verify=False)
        writer.write(data)
        writer.commit()

    def put_file(self, digest: str, source: Path) -> None:
        """Keep a copy of a file known to hash to digest."""
        size = source.stat().st_size
        if not self.admits(size) or self.path(digest).exists():
            return
        writer = self.writer(digest, size, verify=False)
        with source.open("rb") as src:
            while block := src.read(1 << 20):
                writer.write(block)
        writer.commit()

    def writer(self, digest: str, size: int, *, verify: bool = True) -> CacheWriter:
        """A temp file that becomes the cached copy once complete (and, with verify, hashing to digest)."""
        return CacheWriter(self, digest, size, verify=verify)

    def _admit(self, tmp: Path, digest: str, size: int) -> None:
        target = self.path(digest)
        target.parent.mkdir(exist_ok=True)
        os.replace(tmp, target)
        with self._lock:
            if self._total is None:
                self._total = self._scan_total()
            else:
                self._total += size
            over = self._total > self.max_bytes
        if over:
            self.evict()

    def _scan_total(self) -> int:
        return sum(size for _, size, _ in self._entries())

    def _entries(self) -> list[tuple[float, int, Path]]:
        """(use time, size, path) of every cached copy."""
        out = []
        for top in self.root.iterdir() if self.root.is_dir() else []:
            if len(top.name) != 2 or not top.is_dir():
                continue
            for entry in os.scandir(top):
                with contextlib.suppress(FileNotFoundError):
                    st = entry.stat()
                    out.append((st.st_mtime, st.st_size, Path(entry.path)))
        return out

    def evict(self) -> None:
        """Remove least recently used copies until the cache is at most 90 % full."""
        entries = sorted(self._entries())
        total = sum(size for _, size, _ in entries)
        goal = self.max_bytes * 9 // 10
        for _, size, path in entries:
            if total <= goal:
                break
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            total -= size
        with self._lock:
            self._total = total

    def discard(self, digest: str) -> None:
        """Forget a blob (it was deleted from the store)."""
        with contextlib.suppress(FileNotFoundError):
            self.path(digest).unlink()

    def remove_stale_temp(self, max_age_s: float) -> tuple[int, int]:
        """Temp files of fills that never finished (a killed process), older than max_age_s."""
        return remove_old_entries(self._tmp, max_age_s)


class CacheWriter:
    """Collects a blob's bytes in order; commit() admits them only when complete and hashing to the digest."""

    def __init__(self, cache: BlobCache, digest: str, size: int, *, verify: bool = True) -> None:
        self.cache, self.digest, self.size = cache, digest, size
        fd, name = tempfile.mkstemp(dir=cache._tmp)
        self._file: BinaryIO | None = os.fdopen(fd, "wb")
        self._name = Path(name)
        self._hasher = hashlib.sha256() if verify else None
        self.written = 0

    def write(self, data: bytes | memoryview) -> None:
        """Append the next bytes of the blob."""
        if self._file is None:
            return
        self._file.write(data)
        if self._hasher is not None:
            self._hasher.update(data)
        self.written += len(data)

    def commit(self) -> bool:
        """Admit the copy if it is complete (and, when verifying, hashes to the digest); True if admitted."""
        if self._file is None:
            return False
        self._file.close()
        self._file = None
        hashed = self._hasher is None or self._hasher.hexdigest() == self.digest
        ok = self.written == self.size and hashed
        try:
            if ok:
                self.cache._admit(self._name, self.digest, self.size)
                return True
        except OSError:
            pass  # a full or read-only disk only costs the cache
        self._name.unlink(missing_ok=True)
        return False

    def abandon(self) -> None:
        """Drop the partial copy (the reader seeked or stopped early)."""
        if self._file is not None:
            self._file.close()
            self._file = None
            self._name.unlink(missing_ok=True)
