"""Reading uploaded files within the configured size limit."""

from __future__ import annotations

from typing import Protocol

from backend.core.errors import PayloadTooLarge

_BLOCK = 1 << 20


class _Readable(Protocol):
    filename: str | None

    async def read(self, size: int = -1) -> bytes: ...


async def read_limited(upload: _Readable, limit: int) -> bytes:
    """Read an upload completely, refusing it as soon as it passes limit bytes."""
    parts: list[bytes] = []
    total = 0
    while block := await upload.read(_BLOCK):
        total += len(block)
        if total > limit:
            raise PayloadTooLarge(
                f"file {upload.filename or '(unnamed)'} is larger than the upload limit of {limit // (1 << 20)} MiB"
            )
        parts.append(block)
    return b"".join(parts)
