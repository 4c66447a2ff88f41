"""Content-addressed blob store: sha256 keys, atomic writes, never overwritten or deleted in place."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import BinaryIO, Protocol

from backend.core.config import get_settings
from backend.core.errors import NotFound

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_READ_CHUNK = 1 << 20


def sha256_hex(data: bytes) -> str:
    """Hex sha256 of a byte string."""
    return hashlib.sha256(data).hexdigest()


def check_digest(digest: str) -> str:
    """Return digest if it is a well-formed sha256 hex string; refuse anything else (no path tricks)."""
    if not _DIGEST_RE.match(digest):
        raise NotFound(f"no blob named {digest!r}")
    return digest


class BlobStore(Protocol):
    """What every blob backend offers: local folder now, an S3-compatible bucket in distributed setups."""

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


class LocalBlobStore:
    """Blobs as files under root/ab/cd/<sha256>; written to a temp file then renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.root.mkdir(parents=True, exist_ok=True)
        self._tmp = self.root / "tmp"
        self._tmp.mkdir(exist_ok=True)

    def _path(self, digest: str) -> Path:
        check_digest(digest)
        return self.root / digest[:2] / digest[2:4] / digest

    def put_bytes(self, data: bytes) -> str:
        """Store bytes under their sha256 (no-op if present) and return the digest."""
        digest = sha256_hex(data)
        target = self._path(digest)
        if target.exists():
            return digest
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp_name, target)
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise
        return digest

    def put_file(self, path: Path) -> str:
        """Store a file's content under its sha256 and return the digest."""
        hasher = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self._tmp)
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as src:
                while block := src.read(_READ_CHUNK):
                    hasher.update(block)
                    out.write(block)
                out.flush()
                os.fsync(out.fileno())
            digest = hasher.hexdigest()
            target = self._path(digest)
            if target.exists():
                Path(tmp_name).unlink()
                return digest
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(tmp_name, target)
            return digest
        except BaseException:
            Path(tmp_name).unlink(missing_ok=True)
            raise

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
        """Whether the blob is stored."""
        return self._path(digest).exists()

    def size(self, digest: str) -> int:
        """Size of a stored blob in bytes."""
        try:
            return self._path(digest).stat().st_size
        except FileNotFoundError as exc:
            raise NotFound(f"blob {digest} is missing from the store") from exc

    def local_path(self, digest: str) -> Path | None:
        """The file that holds the blob."""
        return self._path(digest)


@lru_cache
def get_blob_store() -> BlobStore:
    """The process-wide blob store chosen by settings."""
    settings = get_settings()
    if settings.blob_backend == "local":
        return LocalBlobStore(settings.resolved_blob_root)
    raise NotImplementedError(f"blob backend {settings.blob_backend!r} is not available in this build; use 'local'")
