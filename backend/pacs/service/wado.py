"""WADO-RS retrieval of a series straight to files: the multipart/related answer is split as it streams in and
each application/dicom part is written to its own file as received (no decoding and re-encoding), with at most
one network chunk in memory. A part stored without the PS3.10 preamble and 'DICM' prefix (some archives keep
what a client sent them that way) gets them, so the DICOM loader reads it like any file.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pydicom

from backend.pacs.service.client import Endpoint, check_url, session_of

# Uncompressed Explicit VR Little Endian, as dicomweb-client asks by default: the PACS transcodes when needed.
ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=1.2.840.10008.1.2.1'
_CHUNK = 1 << 20
_PREAMBLE = b"\x00" * 128 + b"DICM"


class MultipartError(ValueError):
    """The answer is not the multipart/related message WADO-RS promises."""


def _boundary(content_type: str) -> bytes:
    for param in content_type.split(";")[1:]:
        key, _, value = param.strip().partition("=")
        if key.lower() == "boundary" and value:
            return value.strip('"').encode()
    raise MultipartError(f"the answer is {content_type!r}, not multipart/related with a boundary")


def split_parts(chunks: Iterator[bytes], boundary: bytes, open_part: Callable[[], Callable[[bytes], object]]) -> int:
    """Write each part's body of a multipart message through the writer `open_part` returns; the part count."""
    delimiter = b"--" + boundary
    closing = b"\r\n" + delimiter
    buffer, state, write, parts = b"", "preamble", None, 0
    for chunk in chunks:
        buffer += chunk
        while True:
            if state == "preamble":
                at = buffer.find(delimiter)
                if at < 0:
                    buffer = buffer[-len(delimiter) :]
                    break
                buffer, state = buffer[at + len(delimiter) :], "delimiter"
            if state == "delimiter":
                if len(buffer) < 2:
                    break
                if buffer[:2] == b"--":
                    return parts
                end = buffer.find(b"\r\n\r\n")
                if end < 0:
                    if len(buffer) > 64 * 1024:
                        raise MultipartError("a part's headers never end")
                    break
                buffer, state, write = buffer[end + 4 :], "body", open_part()
                parts += 1
            if state == "body":
                assert write is not None
                at = buffer.find(closing)
                if at < 0:
                    keep = len(closing)
                    if len(buffer) > keep:
                        write(buffer[:-keep])
                        buffer = buffer[-keep:]
                    break
                write(buffer[:at])
                buffer, state = buffer[at + len(closing) :], "delimiter"
    if state != "delimiter" or parts == 0:
        raise MultipartError("the multipart answer ended in the middle of a part")
    return parts


def _as_part10(path: Path) -> None:
    """Give a file written without the PS3.10 preamble (it starts with the file meta group) its preamble."""
    with path.open("rb") as handle:
        head = handle.read(132)
    if head[128:132] != b"DICM" and head[:2] == b"\x02\x00":
        path.write_bytes(_PREAMBLE + path.read_bytes())


def _instance_name(path: Path, index: int) -> str:
    try:
        number = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["InstanceNumber"]).get("InstanceNumber")
    except Exception:  # not DICOM: the loader names the file and says so
        number = None
    return f"instance-{int(number):05d}" if str(number or "").isdigit() else f"instance-x{index:05d}"


class _Parts:
    """The files of the parts: one open while its bytes arrive, named by its instance number once complete."""

    def __init__(self, folder: Path, on_instance: Callable[[int], None]) -> None:
        self.folder, self.on_instance = folder, on_instance
        self.files: list[Path] = []
        self._open: tuple[Path, BinaryIO] | None = None

    def open(self) -> Callable[[bytes], object]:
        """Finish the previous part and open the next one; its writer."""
        self.finish()
        path = self.folder / f"part-{len(self.files):05d}.tmp"
        self._open = (path, path.open("wb"))
        return self._open[1].write

    def finish(self) -> None:
        """Close the open part, fix its preamble, name it and report it."""
        if self._open is None:
            return
        path, handle = self._open
        self._open = None
        handle.close()
        _as_part10(path)
        named = self.folder / f"{_instance_name(path, len(self.files))}.dcm"
        if named.exists():
            named = named.with_name(f"{named.stem}-{len(self.files):05d}.dcm")
        path.rename(named)
        self.files.append(named)
        self.on_instance(len(self.files))

    def abort(self) -> None:
        """Close the open part after a failure (the folder is temporary)."""
        if self._open is not None:
            self._open[1].close()
            self._open = None


def retrieve_series(
    endpoint: Endpoint,
    allowed_hosts: str,
    study_uid: str,
    series_uid: str,
    folder: Path,
    on_instance: Callable[[int], None],
) -> list[Path]:
    """Stream a series' instances into `folder`, each named by its instance number; `on_instance(count)` runs
    after each (it may raise to stop). Call inside `client.answering`."""
    url = check_url(endpoint.base_url, allowed_hosts)
    folder.mkdir(parents=True, exist_ok=True)
    parts = _Parts(folder, on_instance)
    with session_of(endpoint) as session:
        response = session.get(
            f"{url}/studies/{study_uid}/series/{series_uid}",
            headers={"Accept": ACCEPT},
            stream=True,
            timeout=endpoint.timeout_s,
        )
        with response:
            response.raise_for_status()
            boundary = _boundary(response.headers.get("Content-Type", ""))
            try:
                split_parts(response.iter_content(_CHUNK), boundary, parts.open)
                parts.finish()
            except BaseException:
                parts.abort()
                raise
    return parts.files
