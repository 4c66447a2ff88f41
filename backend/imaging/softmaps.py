"""Stored soft maps of a prediction: uint8 probability maps cropped to where they are non-zero (pure numpy/nibabel).

A probability map quantised to uint8 (round(p * 255)) is exactly zero far from the structure, so the stored blob is
the map's bounding box of non-zero voxels (lossless: every voxel outside it is 0) as a NIfTI-1 image whose affine
places the box in the scan's world space; the box origin and the scan shape are also kept in the prediction row.
The blob is zstd-compressed (level 1; ``zstd -d`` gives the .nii): a map of a confident model is mostly 0 and 255
and shrinks tenfold or more, while zstd passes the speckled map of an undecided one through at memory speed (gzip
cost ~20 ms of CPU per MB for it). Blobs written earlier as .nii.gz or raw .nii are still read.

The entropy map is not stored: it is a fixed function of the quantised probability (``ENTROPY_OF_QUANTISED``),
so it is derived on read without any loss.

NIfTI stores voxels x-fastest. A network's output is C-ordered (z fastest), and transposing it costs more than
quantising it, so a C-ordered map is stored with its voxel axes reversed: a NIfTI image of shape (Z, Y, X) whose
affine has the matching columns swapped, still a correct image for any NIfTI reader; ``axes: "zyx"`` in the row
tells ``decode_soft_map`` to turn it back. The transposition then happens on read, off the pre-annotation job.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from typing import Any

import nibabel as nib
import numpy as np
import zstandard

from backend.core.errors import InvalidInput
from backend.imaging import nifti
from backend.imaging.nifti import GZIP_MAGIC

__all__ = [
    "ENTROPY_OF_QUANTISED",
    "FORMAT",
    "MAP_KINDS",
    "EncodedMap",
    "decode_soft_map",
    "encode_soft_map",
    "entropy_u8",
    "full_grid_nifti_gz",
    "nonzero_box",
]

FORMAT = "u8-crop-1"
REVERSED_AXES = "zyx"
MAP_KINDS = ("probability", "entropy")
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
_ZSTD_LEVEL = 1


def _entropy_table() -> np.ndarray:
    """Binary entropy (log2, in [0, 1]) of each quantised probability q/255, itself quantised to uint8."""
    p = np.arange(256, dtype=np.float64) / 255.0
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    h = np.nan_to_num(h, nan=0.0)
    return np.round(h * 255.0).astype(np.uint8)


# A 256-entry lookup is exact for the stored quantised maps and far cheaper than logarithms over every voxel.
ENTROPY_OF_QUANTISED = _entropy_table()


def entropy_u8(quantised: np.ndarray) -> np.ndarray:
    """The uint8 entropy map of a uint8 probability map (255 = one bit, maximal doubt)."""
    return ENTROPY_OF_QUANTISED[quantised]


@dataclass(frozen=True)
class EncodedMap:
    """One stored soft map: the blob bytes and where its box sits in the scan grid."""

    data: bytes
    origin: tuple[int, int, int]
    shape: tuple[int, int, int]
    scan_shape: tuple[int, int, int]
    axes_reversed: bool = False

    def meta(self) -> dict[str, Any]:
        """The JSON kept next to the blob digest in the prediction row."""
        meta: dict[str, Any] = {
            "format": FORMAT,
            "origin": list(self.origin),
            "shape": list(self.shape),
            "scan_shape": list(self.scan_shape),
            "compression": "zstd",
        }
        if self.axes_reversed:
            meta["axes"] = REVERSED_AXES
        return meta


def nonzero_box(volume: np.ndarray) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """Origin and size of the bounding box of the non-zero voxels; a single voxel at 0 for an all-zero volume."""
    lo, hi = [], []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(volume.any(axis=other))
        if hits.size == 0:
            return (0, 0, 0), (1, 1, 1)
        lo.append(int(hits[0]))
        hi.append(int(hits[-1]) + 1)
    return (lo[0], lo[1], lo[2]), (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])


def _nifti_u8(data: np.ndarray, affine: np.ndarray) -> bytes:
    """Uncompressed single-file NIfTI-1 bytes of a uint8 volume (sform/qform code 1, mm)."""
    image = nib.Nifti1Image(data, affine, dtype=np.uint8)
    header = image.header
    header.set_sform(affine, code=1)
    header.set_qform(affine, code=1)
    header.set_xyzt_units(xyz="mm", t="sec")
    header.set_slope_inter(1.0, 0.0)
    return bytes(image.to_bytes())


def encode_soft_map(quantised: np.ndarray, affine: np.ndarray) -> EncodedMap:
    """Crop a uint8 (X, Y, Z) map to its non-zero box and encode it as zstd-compressed NIfTI."""
    volume = np.asarray(quantised)
    if volume.ndim != 3 or volume.dtype != np.uint8:
        raise InvalidInput(f"a soft map must be a 3D uint8 array, got {volume.dtype} {list(volume.shape)}")
    origin, size = nonzero_box(volume)
    box = volume[tuple(slice(o, o + s) for o, s in zip(origin, size, strict=True))]
    box_affine = np.array(affine, dtype=np.float64)
    box_affine[:3, 3] = box_affine[:3, :3] @ np.asarray(origin, dtype=np.float64) + box_affine[:3, 3]
    # A C-ordered map is written as its transpose (x-fastest already in memory, so no reordering copy).
    reversed_axes = not volume.flags.f_contiguous and volume.flags.c_contiguous
    if reversed_axes:
        raw = _nifti_u8(np.asfortranarray(box.T), box_affine[:, [2, 1, 0, 3]])
    else:
        raw = _nifti_u8(box, box_affine)
    # A compressor per call: zstd contexts are not thread-safe and maps are encoded on several threads.
    data = zstandard.ZstdCompressor(level=_ZSTD_LEVEL).compress(raw)
    scan_shape = (int(volume.shape[0]), int(volume.shape[1]), int(volume.shape[2]))
    return EncodedMap(data, origin, size, scan_shape, reversed_axes)


def _image_of(data: bytes) -> nib.Nifti1Image:
    """The NIfTI image stored in a soft-map blob (.nii or .nii.gz)."""
    try:
        if data.startswith(ZSTD_MAGIC):
            raw = zstandard.ZstdDecompressor().decompress(data)
        elif data.startswith(GZIP_MAGIC):  # maps written before zstd
            raw = zlib.decompress(data, wbits=31)
        else:
            raw = data
        return nib.Nifti1Image.from_bytes(raw)
    except Exception as exc:  # zlib and nibabel raise several types for damaged data
        raise InvalidInput(f"a stored soft map is not a readable NIfTI image ({exc})") from exc


def decode_soft_map(data: bytes, meta: dict[str, Any] | None = None) -> np.ndarray:
    """The full-grid uint8 map of a stored blob: its box placed at ``meta``'s origin in a zero volume.

    Blobs written before cropping (no ``format`` in ``meta``) hold the whole grid and are returned as they are.
    """
    return _decode(_image_of(data), meta)


def _decode(image: nib.Nifti1Image, meta: dict[str, Any] | None) -> np.ndarray:
    box = np.asarray(image.dataobj, dtype=np.uint8)
    if not meta or meta.get("format") != FORMAT:
        return box
    if meta.get("axes") == REVERSED_AXES:
        box = box.T
    origin = tuple(int(v) for v in meta["origin"])
    scan_shape = tuple(int(v) for v in meta["scan_shape"])
    if box.ndim != 3 or any(o < 0 or o + s > n for o, s, n in zip(origin, box.shape, scan_shape, strict=True)):
        raise InvalidInput(f"a stored soft map box {list(box.shape)} at {list(origin)} does not fit {list(scan_shape)}")
    full = np.zeros(scan_shape, dtype=np.uint8)
    full[tuple(slice(o, o + s) for o, s in zip(origin, box.shape, strict=True))] = box
    return full


def full_grid_nifti_gz(data: bytes, meta: dict[str, Any] | None, kind: str) -> bytes:
    """A stored map as .nii.gz on the scan's whole grid: the probability (p * 255) or its entropy (255 = 1 bit)."""
    if kind not in MAP_KINDS:
        raise InvalidInput(f"map kind must be one of {list(MAP_KINDS)}, got {kind!r}")
    image = _image_of(data)
    volume = _decode(image, meta)
    affine = np.array(image.affine, dtype=np.float64)
    if meta and meta.get("axes") == REVERSED_AXES:  # the stored image's voxel axes are (z, y, x)
        affine = affine[:, [2, 1, 0, 3]]
    if meta and meta.get("format") == FORMAT:  # the box's affine, moved back to the grid's first voxel
        affine[:3, 3] -= affine[:3, :3] @ np.asarray(meta["origin"], dtype=np.float64)
    out = entropy_u8(volume) if kind == "entropy" else volume
    return nifti.to_nifti_gz(out, affine)
