"""A scan's NIfTI file without the free text a de-identifying export must not carry.

A NIfTI volume is stored as it was uploaded (its header byte for byte), and converters and people write names,
hospital numbers and dates into it: the header's text fields (descrip, aux_file, intent_name and NIfTI-1's db_name
and data_type), header extensions (a DICOM header, a comment, a JSON sidecar) and the gzip header's original file
name. `without_free_text` blanks the text fields, drops the extensions and writes a plain gzip stream (no name, no
time); the rest of the header (geometry, data type, scaling) and the voxel bytes are kept exactly.
"""

from __future__ import annotations

import gzip
from typing import Literal

import nibabel as nib
import numpy as np

from backend.core.errors import InvalidInput

_TEXT_FIELDS = ("descrip", "aux_file", "intent_name", "db_name", "data_type")
_HEADERS = {348: nib.Nifti1Header, 540: nib.Nifti2Header}
_EXTENDER = 4  # the 4 bytes after the header: byte 0 non-zero when extensions follow
_ENDIANS: tuple[Literal["<", ">"], ...] = ("<", ">")


def without_free_text(data: bytes) -> bytes:
    """The gzip NIfTI-1/2 file `data` (gzip or not) with its header's text fields blank and no extensions."""
    raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
    size, endian = 0, _ENDIANS[0]
    for endian in _ENDIANS:
        size = int(np.frombuffer(raw[:4], dtype=f"{endian}i4")[0]) if len(raw) >= 4 else 0
        if size in _HEADERS:
            break
    if size not in _HEADERS or len(raw) < size + _EXTENDER:
        raise InvalidInput("the scan's image is not a single-file NIfTI-1 or NIfTI-2 volume")
    layout = _HEADERS[size].template_dtype.newbyteorder(endian)
    header = np.frombuffer(raw[:size], dtype=layout).copy()
    for name in _TEXT_FIELDS:
        if name in (layout.names or ()):
            header[name] = b""
    start = int(header["vox_offset"][0])
    if start < size + _EXTENDER or start > len(raw):
        raise InvalidInput(f"the scan's NIfTI header gives an impossible data offset ({start})")
    # The voxels then follow the header directly (352 or 544 bytes: a multiple of 16, as NIfTI asks).
    header["vox_offset"] = size + _EXTENDER
    return gzip.compress(header.tobytes() + bytes(_EXTENDER) + raw[start:], compresslevel=1, mtime=0)
