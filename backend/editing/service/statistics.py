"""Statistics per structure: voxels, mL and the CT values (HU) under the mask, reading only the needed box.

The CT volume is the stored .nii.gz the viewer is served (validated at import). Its voxels are read through
nibabel's array proxy, which decompresses the stream up to the box's last slice and keeps only the box, a block of
slices at a time: memory stays proportional to the box, not to the volume.
"""

from __future__ import annotations

import gzip
import io
import struct
from dataclasses import dataclass
from typing import BinaryIO, cast

import nibabel as nib
import numpy as np

from backend.core.errors import InvalidInput
from backend.editing.service.boxes import Region

_NIFTI1_HEADER = 348
_BLOCK_VOXELS = 8_000_000


@dataclass(frozen=True)
class Measures:
    """One structure's size and the CT values under it (None for an empty structure)."""

    voxels: int
    volume_ml: float
    hu_mean: float | None
    hu_sd: float | None
    hu_min: float | None
    hu_max: float | None


def _open(raw: BinaryIO, name: str) -> nib.Nifti1Image | nib.Nifti2Image:
    """The stored volume as a nibabel image whose voxels are read on demand from the (gzip) stream."""
    magic = raw.read(2)
    raw.seek(0)
    stream: BinaryIO = gzip.GzipFile(fileobj=raw) if magic == b"\x1f\x8b" else raw  # type: ignore[assignment]
    head = stream.read(4)
    stream.seek(0)
    sizes = {struct.unpack("<i", head)[0], struct.unpack(">i", head)[0]} if len(head) == 4 else set()
    kind = nib.Nifti1Image if _NIFTI1_HEADER in sizes else nib.Nifti2Image
    try:
        return kind.from_stream(cast(io.IOBase, stream))
    except Exception as exc:  # the stored file was checked at import; this would be a damaged blob
        raise InvalidInput(f"{name}: the stored volume cannot be read ({exc})") from exc


def read_region(raw: BinaryIO, name: str, region: Region) -> np.ndarray:
    """The CT values (float32, scaled as the file says) of a region of the stored volume, from a seekable
    stream of its .nii(.gz) file."""
    image = _open(raw, name)
    proxy = image.dataobj
    out = np.empty(region.size, dtype=np.float32)
    (i0, j0, k0), (i1, j1, k1) = region.origin, region.stop
    step = max(1, _BLOCK_VOXELS // max(1, image.shape[0] * image.shape[1]))
    for k in range(k0, k1, step):
        stop = min(k1, k + step)
        # A 4D file with one volume (x, y, z, 1) is a 3D scan too.
        index = (slice(i0, i1), slice(j0, j1), slice(k, stop), *((0,) * (len(image.shape) - 3)))
        block = np.asarray(proxy[index])
        out[:, :, k - k0 : stop - k0] = block
    return out


def measure(mask: np.ndarray, values: np.ndarray | None, voxel_volume_mm3: float) -> Measures:
    """Voxels, mL and HU mean / population SD / min / max of `values` under `mask` (same shape)."""
    voxels = int(np.count_nonzero(mask))
    volume_ml = voxels * voxel_volume_mm3 / 1000.0
    if voxels == 0 or values is None:
        return Measures(voxels, volume_ml, None, None, None, None)
    under = values[mask].astype(np.float64)
    return Measures(
        voxels,
        volume_ml,
        float(under.mean()),
        float(under.std()),
        float(under.min()),
        float(under.max()),
    )
