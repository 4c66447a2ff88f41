"""Serving a stored blob over HTTP from any blob backend: a file (local store), a streamed and ranged proxy of the
object (S3), or a redirect to a presigned S3 URL where that is switched on.

The proxied stream reads 1 MiB at a time (bounded memory), answers single byte ranges with 206 (`Range`,
`If-Range` against the blob's ETag) and 416 for an unsatisfiable one; several ranges get the whole blob (allowed by
RFC 9110). The first block is read before the answer starts, so a missing blob is a clean 404 and an unreachable
store a 503, never a response cut off after its headers.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterator, Mapping
from typing import BinaryIO

from fastapi import Request, status
from fastapi.responses import FileResponse, RedirectResponse, Response, StreamingResponse

from backend.core.blobstore import BlobStore, presigned_get_url

_BLOCK = 1 << 20
_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def blob_response(
    request: Request,
    blobs: BlobStore,
    digest: str,
    *,
    media_type: str,
    filename: str,
    headers: Mapping[str, str],
    allow_redirect: bool = False,
) -> Response:
    """The blob as an attachment: a file, a redirect to a presigned URL (allow_redirect, S3 with presign on) or a
    streamed, ranged proxy of the object."""
    if allow_redirect:
        url = presigned_get_url(blobs, digest, filename=filename, media_type=media_type)
        if url is not None:
            # Not cached: the URL expires, and each read goes through the API (and its read log) again.
            return RedirectResponse(
                url, status_code=status.HTTP_307_TEMPORARY_REDIRECT, headers={"Cache-Control": "private, no-store"}
            )
    path = blobs.local_path(digest)
    if path is not None and path.is_file():
        return FileResponse(path, media_type=media_type, filename=filename, headers=dict(headers))
    return _streamed(request, blobs, digest, media_type=media_type, filename=filename, headers=headers)


def _requested_range(request: Request, total: int, etag: str | None) -> tuple[int, int] | None:
    """(start, stop) of a single satisfiable byte range; None for the whole blob; ValueError if unsatisfiable."""
    header = request.headers.get("range")
    if not header:
        return None
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range != etag:
        return None  # the client's copy is another blob: send the whole new one
    match = _RANGE_RE.match(header.strip().replace(" ", ""))
    if match is None or (not match.group(1) and not match.group(2)):
        return None  # several ranges or a malformed header: RFC 9110 lets the server send everything
    first, last = match.group(1), match.group(2)
    if not first:  # suffix: the last N bytes
        length = int(last)
        if length == 0 or total == 0:
            raise ValueError("empty suffix range")
        return max(0, total - length), total
    start = int(first)
    stop = min(total, int(last) + 1) if last else total
    if start >= total or stop <= start:
        raise ValueError("range starts past the end")
    return start, stop


def _streamed(
    request: Request, blobs: BlobStore, digest: str, *, media_type: str, filename: str, headers: Mapping[str, str]
) -> Response:
    """The object streamed through the API, whole or one byte range."""
    out = {
        **headers,
        "Accept-Ranges": "bytes",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    handle = blobs.open(digest)  # NotFound (404) or ServiceUnavailable (503) before anything is sent
    try:
        total = handle.seek(0, io.SEEK_END)
        try:
            span = _requested_range(request, total, headers.get("ETag"))
        except ValueError:
            handle.close()
            return Response(
                status_code=416,
                headers={**out, "Content-Range": f"bytes */{total}"},
            )
        start, stop = span if span is not None else (0, total)
        handle.seek(start)
        first = handle.read(min(_BLOCK, stop - start))
    except BaseException:
        handle.close()
        raise
    out["Content-Length"] = str(stop - start)
    code = status.HTTP_200_OK
    if span is not None:
        code = status.HTTP_206_PARTIAL_CONTENT
        out["Content-Range"] = f"bytes {start}-{stop - 1}/{total}"
    return StreamingResponse(
        _blocks(handle, first, stop - start - len(first)), status_code=code, media_type=media_type, headers=out
    )


def _blocks(handle: BinaryIO, first: bytes, remaining: int) -> Iterator[bytes]:
    """The first block, then the rest of the span a block at a time; the handle is closed at the end."""
    try:
        if first:
            yield first
        while remaining > 0:
            block = handle.read(min(_BLOCK, remaining))
            if not block:
                break
            remaining -= len(block)
            yield block
    finally:
        handle.close()
