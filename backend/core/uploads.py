"""Reading uploaded files within the configured size limit."""

from __future__ import annotations

from typing import BinaryIO, Protocol

from backend.core.errors import PayloadTooLarge

_BLOCK = 1 << 20


class Upload(Protocol):
    """What an uploaded file offers (starlette's UploadFile has both)."""

    filename: str | None
    file: BinaryIO


def read_limited(upload: Upload, limit: int) -> bytes:
    """Read an upload completely (blocking: call from a worker thread), refusing it once it passes limit bytes."""
    parts: list[bytes] = []
    total = 0
    upload.file.seek(0)
    while block := upload.file.read(_BLOCK):
        total += len(block)
        if total > limit:
            raise PayloadTooLarge(
                f"file {upload.filename or '(unnamed)'} is larger than the upload limit of {limit // (1 << 20)} MiB"
            )
        parts.append(block)
    return b"".join(parts)
