"""A NIfTI mask file straight into stored chunks: decoded a few planes at a time, never as a whole volume.

`load_mask_with_values` followed by `chunks.build_manifest` decodes the whole mask (a 512×512×300 one is 79 MB,
most of whose cost is first touching that much fresh memory), then reads it again for its values, its bounding
box and its bit planes. A uint8 mask stored in NIfTI's x-fastest order decodes in k-planes; eight of them are
the input of one byte row of the chunks' bit packing (chunks._plane_rows). So the file is inflated 1 MiB of
planes at a time (the inflater's own output, no copy), each block checked and its planes packed while still in
the CPU cache, and the packed rows (8x smaller) of one 64-plane slab are cut into chunks once it is complete. The
chunks, digests and counts are byte for byte those of the whole-volume path; files of any other voxel type,
scaling or chunk shape take that path.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import product
from typing import Any

import numpy as np

from backend.core import decode_limits
from backend.core.errors import InvalidInput
from backend.imaging import chunks
from backend.imaging.chunks import CHUNK_SHAPE, ChunkEntry, MaskManifest, PutBlob, Shape3
from backend.imaging.nifti import Geometry, MaskValues, _check_grid, _Header, _mask_values, _open_header

# k-planes packed into one byte row (as chunks._plane_rows packs them), and the most bytes decoded per read.
_GROUP = 8
_READ_BYTES = 1 << 20


def mask_manifest(
    data: bytes, expected: Geometry, name: str, put: PutBlob, *, max_bytes: int | None = None
) -> tuple[MaskManifest, MaskValues]:
    """Decode a binary mask file (values > 0.5 are inside) into stored chunks: its manifest and stored values.

    Same checks, errors, chunks and values as `nifti.load_mask_with_values` then `chunks.build_manifest`: the
    grid is checked from the header before any voxel is inflated.
    """
    header = _open_header(data, name)
    _check_grid(header.geometry, expected, name)
    header.check_size(max_bytes)
    with decode_limits.heavy_decode(name):
        if not _streamable(header):
            mask, values = _mask_values(header.read())
            return chunks.build_manifest(mask, put), values
        return _stream_manifest(header, put)


def _streamable(header: _Header) -> bool:
    """True for the common case the streaming path handles: unscaled uint8 voxels, 64³ chunks."""
    return (
        header.dtype == np.dtype(np.uint8)
        and (header.slope, header.inter) == (1.0, 0.0)
        and CHUNK_SHAPE[2] % _GROUP == 0
    )


@dataclass
class _Values:
    """The running summary of the stored values (see MaskValues)."""

    off_binary: int = 0
    lo: int = 255
    hi: int = 0

    def add(self, planes: np.ndarray) -> np.ndarray:
        """Account for decoded uint8 voxels; the voxels as 0/1 bytes (a binarised copy when any is above 1)."""
        top = int(planes.max())
        if self.lo > 0:  # once a 0 was seen the minimum is known
            self.lo = min(self.lo, int(planes.min()))
        self.hi = max(self.hi, top)
        if top > 1:
            self.off_binary += int(np.count_nonzero(planes > 1))
            return (planes > 0).view(np.uint8)
        return planes

    def result(self, source_dtype: str, voxels: int) -> MaskValues:
        """The MaskValues of the whole file."""
        lo = 0 if voxels == 0 else self.lo
        return MaskValues(source_dtype, self.off_binary, float(lo), float(self.hi))


def _stream_manifest(header: _Header, put: PutBlob) -> tuple[MaskManifest, MaskValues]:
    """Inflate a few k-planes at a time, pack them into a slab's bit rows, cut each complete slab into chunks."""
    nx, ny, nz = header.shape
    shape: Shape3 = (nx, ny, nz)
    chunk = CHUNK_SHAPE
    grid = chunks.chunk_grid(shape, chunk)
    plane = nx * ny
    # Reads of at most the stream's output block come back as the inflater's own bytes, without a copy.
    per_read = max(1, _READ_BYTES // plane)
    rows = np.zeros((chunk[2] // _GROUP, ny, nx), dtype=np.uint8)  # [k // 8, j, i] of one slab (_plane_rows)
    # Eight voxels of a row at once: a byte holding 0 or 1 shifted by less than 8 never carries into the next.
    lane = np.dtype(np.uint64) if nx % 8 == 0 else np.dtype(np.uint8)
    shifted = np.empty((ny, nx), dtype=np.uint8).view(lane)
    values = _Values()
    entries: list[ChunkEntry] = []
    start = header.stream.position
    decoded = 0
    for k0 in range(0, nz, per_read):
        count = min(per_read, nz - k0)
        data = header.stream.read(count * plane)
        decoded += len(data)
        if len(data) != count * plane:
            _truncated(header, start, decoded)
        planes = values.add(np.frombuffer(data, dtype=np.uint8)).reshape(count, ny, nx)
        for offset in range(count):
            k = k0 + offset
            bit = k % _GROUP
            row = rows[(k % chunk[2]) // _GROUP].view(lane)
            voxels = planes[offset].view(lane)
            if bit == 0:
                np.left_shift(voxels, 7, out=row)
            else:
                np.left_shift(voxels, 7 - bit, out=shifted)
                np.bitwise_or(row, shifted, out=row)
            if (k + 1) % chunk[2] == 0 or k + 1 == nz:
                slab = k // chunk[2]
                used = -(-(k + 1 - slab * chunk[2]) // _GROUP)
                if (k + 1) % _GROUP:  # the last row of a slab cut short: its planes past the end are background
                    rows[used - 1].view(lane)[...] &= _high_bits(lane, (k + 1) % _GROUP)
                entries.extend(_slab_chunks(rows[:used], slab, shape, grid, put))
    if not header.stream.at_end():
        raise InvalidInput(
            f"{header.name}: the file holds more data than its header declares ({start + decoded} bytes); refusing it",
            file=header.name,
            declared_bytes=start + decoded,
        )
    # build_manifest lists the chunks in flat index order (k fastest); the slabs produced them k slowest.
    entries.sort(key=lambda entry: entry.flat_index)
    return MaskManifest(shape, chunk, tuple(entries)), values.result(header.dtype.name, nx * ny * nz)


def _high_bits(lane: np.dtype[Any], planes: int) -> np.integer[Any]:
    """A mask keeping the bits of the first `planes` planes (bits 7, 6, ...) in every byte of a lane."""
    byte = (0xFF << (8 - planes)) & 0xFF
    return lane.type(int.from_bytes(bytes([byte]) * lane.itemsize, "little"))


def _slab_chunks(rows: np.ndarray, slab: int, shape: Shape3, grid: Shape3, put: PutBlob) -> list[ChunkEntry]:
    """The stored non-empty chunks of one slab (chunk row `slab` along k) from its packed rows [k // 8, j, i]."""
    chunk = CHUNK_SHAPE
    depth = min(shape[2], (slab + 1) * chunk[2]) - slab * chunk[2]
    counts = _chunk_counts(rows, grid)
    entries = []
    for ci, cj in product(range(grid[0]), range(grid[1])):
        count = int(counts[cj, ci])
        if not count:
            continue
        i0, j0 = ci * chunk[0], cj * chunk[1]
        part = rows[:, j0 : j0 + chunk[1], i0 : i0 + chunk[0]]
        packed = _packed(part, depth)
        flat = int(np.ravel_multi_index((ci, cj, slab), grid))
        entries.append(ChunkEntry(flat, count, put(chunks._encode_packed(packed))))
    return entries


def _packed(part: np.ndarray, depth: int) -> np.ndarray:
    """A chunk's packed bits in C order ([i, j, k // 8] bytes, as chunks._rows_to_packed) from its rows [k // 8, j, i].

    One 2D transposing copy per row is ~3x faster than numpy's copy of the 3D transpose (whose innermost loop runs
    over the 8 rows); a depth that is not a multiple of 8 (the volume's last slab, at most) takes chunks' way.
    """
    if depth % _GROUP:
        return chunks._rows_to_packed(part, depth)
    out = np.empty((part.shape[2], part.shape[1], part.shape[0]), dtype=np.uint8)
    for row in range(part.shape[0]):
        out[:, :, row] = part[row].T
    return out.reshape(-1)


def _chunk_counts(rows: np.ndarray, grid: Shape3) -> np.ndarray:
    """Foreground voxels of each chunk of a slab, [cj, ci], from its packed rows [k // 8, j, i]."""
    used, ny, nx = rows.shape
    cx, cy = CHUNK_SHAPE[0], CHUNK_SHAPE[1]
    if (ny, nx) != (grid[1] * cy, grid[0] * cx):  # a grid whose edge chunks are cut: pad them with background
        padded = np.zeros((used, grid[1] * cy, grid[0] * cx), dtype=np.uint8)
        padded[:, :ny, :nx] = rows
        rows = padded
    # Eight bytes (64 voxels) counted at once; reshaping beats np.add.reduceat along the last axis ~5x.
    lanes = 8 if cx % 8 == 0 else 1
    bits = np.bitwise_count(rows.view(np.uint64) if lanes == 8 else rows)
    per_row = bits.reshape(used * grid[1] * cy, grid[0], cx // lanes).sum(axis=2, dtype=np.int64)
    return per_row.reshape(used, grid[1], cy, grid[0]).sum(axis=(0, 2))


def _truncated(header: _Header, start: int, got: int) -> None:
    """Refuse a stream that ended before the declared voxels (the message bounded.read_array gives)."""
    raise InvalidInput(
        f"{header.name}: file is truncated: voxel data needs {start + header.nbytes} bytes, the file holds "
        f"{start + got} (after decompression)",
        file=header.name,
        declared_bytes=start + header.nbytes,
        decoded_bytes=start + got,
    )
