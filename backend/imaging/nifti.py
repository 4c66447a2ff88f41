"""NIfTI reading and writing: volumes, binary masks and label maps, with strict input checks."""

from __future__ import annotations

import gzip
import io
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from backend.core import decode_limits
from backend.core.errors import InvalidInput, PayloadTooLarge
from backend.imaging import bounded

GZIP_MAGIC = bounded.GZIP_MAGIC
_NIFTI1_HEADER_SIZE = 348
_NIFTI2_HEADER_SIZE = 540
_INT16_MIN = int(np.iinfo(np.int16).min)
_INT16_MAX = int(np.iinfo(np.int16).max)


def orientation_code(affine: np.ndarray) -> str:
    """Return the 3-letter axis code (e.g. "RAS", "LPS") of a 4x4 voxel-to-world affine."""
    arr = _as_affine(affine, "affine")
    codes = nib.aff2axcodes(arr)
    if any(c is None for c in codes):
        raise InvalidInput("affine has a degenerate axis; cannot derive an orientation", affine=arr.tolist())
    return "".join(str(c) for c in codes)


def _as_affine(affine: Any, what: str) -> np.ndarray:
    """Validate and copy a 4x4 finite, invertible affine as float64."""
    try:
        arr = np.array(affine, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{what} is not a numeric 4x4 matrix") from exc
    if arr.shape != (4, 4):
        raise InvalidInput(f"{what} must be 4x4, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{what} contains NaN or infinite values", affine=arr.tolist())
    if abs(float(np.linalg.det(arr[:3, :3]))) < 1e-12:
        raise InvalidInput(f"{what} is singular (a voxel axis has zero length)", affine=arr.tolist())
    return arr


@dataclass(frozen=True, eq=False)
class Geometry:
    """Voxel grid of a 3D volume: shape, RAS+ affine (mm), voxel spacing and orientation code."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]
    orientation: str

    def __post_init__(self) -> None:
        """Freeze a float64 copy of the affine so the geometry stays immutable."""
        arr = np.array(self.affine, dtype=np.float64)
        if arr.shape != (4, 4):
            raise InvalidInput(f"affine must be 4x4, got shape {arr.shape}")
        arr.setflags(write=False)
        object.__setattr__(self, "affine", arr)
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))

    @classmethod
    def from_affine(cls, shape: tuple[int, ...], affine: np.ndarray) -> Geometry:
        """Build a geometry from a shape and affine, deriving spacing and orientation."""
        if len(shape) != 3:
            raise InvalidInput(f"expected a 3D shape, got {tuple(shape)}")
        if any(int(s) < 1 for s in shape):
            raise InvalidInput(f"every dimension must be >= 1, got shape {tuple(shape)}")
        arr = _as_affine(affine, "affine")
        norms = np.sqrt((arr[:3, :3] ** 2).sum(axis=0))
        sx, sy, sz = (float(v) for v in norms)
        nx, ny, nz = (int(s) for s in shape)
        return cls(shape=(nx, ny, nz), affine=arr, spacing=(sx, sy, sz), orientation=orientation_code(arr))

    def to_json(self) -> dict[str, Any]:
        """Serialise to plain JSON types."""
        return {
            "shape": list(self.shape),
            "affine": [[float(v) for v in row] for row in self.affine],
            "spacing": list(self.spacing),
            "orientation": self.orientation,
        }

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Geometry:
        """Rebuild a geometry from `to_json` output (spacing and orientation are re-derived)."""
        if not isinstance(d, dict) or "shape" not in d or "affine" not in d:
            raise InvalidInput("geometry JSON must be an object with 'shape' and 'affine'")
        shape = d["shape"]
        if (
            not isinstance(shape, list | tuple)
            or len(shape) != 3
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
        ):
            raise InvalidInput(f"geometry 'shape' must be a list of 3 integers, got {shape!r}")
        return cls.from_affine(tuple(shape), d["affine"])

    def matches(self, other: Geometry, atol_mm: float = 1e-3) -> bool:
        """True when both grids have the same shape and affines equal within `atol_mm`."""
        return self.shape == other.shape and bool(np.allclose(self.affine, other.affine, rtol=0.0, atol=atol_mm))

    def __eq__(self, other: object) -> bool:
        """Exact equality of shape and affine."""
        if not isinstance(other, Geometry):
            return NotImplemented
        return self.shape == other.shape and bool(np.array_equal(self.affine, other.affine))

    def __hash__(self) -> int:
        """Hash consistent with exact equality."""
        return hash((self.shape, self.affine.tobytes()))


@dataclass(frozen=True, eq=False)
class LoadedVolume:
    """A 3D scan in memory: scaled voxel values (int16 or float32) and its geometry."""

    data: np.ndarray
    geometry: Geometry
    source_dtype: str
    header_pixdim: tuple[float, float, float]
    slice_thickness: float | None


@dataclass(frozen=True, eq=False)
class _Raw:
    """Unscaled on-disk array plus the scaling and geometry read from a NIfTI header."""

    raw: np.ndarray
    slope: float
    inter: float
    geometry: Geometry
    source_dtype: str
    header_pixdim: tuple[float, float, float]


# Header extensions (between the header and vox_offset) are metadata: a few KiB in practice.
_MAX_EXTENSION_BYTES = 16 * 1024**2


def _header_kind(data: bytes, name: str) -> type[nib.Nifti1Image] | type[nib.Nifti2Image]:
    """Identify NIfTI-1 or NIfTI-2 single-file data from the header size field and magic."""
    if len(data) < _NIFTI1_HEADER_SIZE:
        raise InvalidInput(
            f"{name}: {len(data)} bytes is too short to hold a NIfTI header ({_NIFTI1_HEADER_SIZE} bytes)",
            file=name,
        )
    sizes = {struct.unpack("<i", data[:4])[0], struct.unpack(">i", data[:4])[0]}
    if _NIFTI1_HEADER_SIZE in sizes:
        magic = data[344:348]
        if magic == b"ni1\x00":
            raise InvalidInput(
                f"{name}: this is the header of a .hdr/.img pair; upload a single-file .nii or .nii.gz",
                file=name,
            )
        if magic != b"n+1\x00":
            raise InvalidInput(f"{name}: not a NIfTI-1 file (magic {magic!r})", file=name)
        return nib.Nifti1Image
    if _NIFTI2_HEADER_SIZE in sizes:
        if len(data) < _NIFTI2_HEADER_SIZE:
            raise InvalidInput(f"{name}: NIfTI-2 header is truncated", file=name)
        if data[4:8] != b"n+2\x00":
            raise InvalidInput(f"{name}: not a single-file NIfTI-2 image (magic {data[4:8]!r})", file=name)
        return nib.Nifti2Image
    raise InvalidInput(f"{name}: not a NIfTI file (no NIfTI header found)", file=name)


@dataclass(frozen=True, eq=False)
class _Header:
    """A parsed NIfTI header whose voxel data is still compressed: what it declares, checked before decoding."""

    stream: bounded.ByteStream
    name: str
    shape: tuple[int, int, int]
    dtype: np.dtype[Any]
    slope: float
    inter: float
    geometry: Geometry
    header_pixdim: tuple[float, float, float]

    @property
    def voxels(self) -> int:
        """Number of voxels the header declares."""
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        """Decoded size of the voxel data the header declares."""
        return self.voxels * self.dtype.itemsize

    def check_size(self, max_bytes: int | None) -> None:
        """Refuse (413) voxel data larger than `max_bytes` (default: the settings' max_decoded_mb) once decoded."""
        # Default 3 GiB: a 512x512x3000 float32 or a 1024x1024x1500 int16 study fits.
        limit = decode_limits.current().max_decoded_bytes if max_bytes is None else max_bytes
        bounded.check_declared(self.name, self.nbytes, limit, f"{self.shape} {self.dtype.name} voxels")

    def read(self) -> _Raw:
        """Decode exactly the declared voxel data into one preallocated array (call inside a decode slot)."""
        flat = bounded.read_array(self.stream, self.dtype, self.voxels)
        if not self.dtype.isnative:
            # Swap in place: a big-endian file costs no second copy of the volume.
            flat = flat.byteswap(inplace=True).view(self.dtype.newbyteorder("="))
        raw = flat.reshape(self.shape, order="F")
        if self.dtype.kind == "f":
            bad = int(raw.size - np.count_nonzero(np.isfinite(raw)))
            if bad:
                raise InvalidInput(f"{self.name}: volume contains {bad} NaN or infinite voxel(s)", file=self.name)
        return _Raw(raw, self.slope, self.inter, self.geometry, self.dtype.name, self.header_pixdim)


def _open_header(data: bytes, name: str) -> _Header:
    """Read and check a NIfTI header from the first decoded bytes of .nii/.nii.gz data; no voxel is decoded.

    Only the header (and its extensions) is decompressed here, so what it declares (shape, type, grid) can be
    checked against the limits before any voxel is inflated or allocated.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput(f"{name}: expected bytes, got {type(data).__name__}")
    if len(data) == 0:
        raise InvalidInput(f"{name}: the file is empty", file=name)
    stream = bounded.open_stream(data, name)
    prefix = stream.read(_NIFTI1_HEADER_SIZE)
    if len(prefix) >= 4 and _NIFTI2_HEADER_SIZE in {struct.unpack(f"{e}i", prefix[:4])[0] for e in "<>"}:
        prefix += stream.read(_NIFTI2_HEADER_SIZE - len(prefix))
    image_cls = _header_kind(prefix, name)
    header_cls = image_cls.header_class
    try:
        # A first parse without extensions gives vox_offset; the extensions (up to it) are then read bounded.
        bare = header_cls.from_fileobj(io.BytesIO(prefix), check=False)
        offset = int(bare.get_data_offset())
    except Exception as exc:
        raise InvalidInput(f"{name}: invalid NIfTI header ({exc})", file=name) from exc
    if offset < len(prefix) or offset > len(prefix) + _MAX_EXTENSION_BYTES:
        raise InvalidInput(
            f"{name}: invalid NIfTI header (vox_offset {offset} must lie between {len(prefix)} and "
            f"{len(prefix) + _MAX_EXTENSION_BYTES})",
            file=name,
        )
    prefix += stream.read(offset - len(prefix))
    if len(prefix) < offset:
        raise InvalidInput(
            f"{name}: file is truncated: voxel data starts at byte {offset}, the file holds {len(prefix)}", file=name
        )
    try:
        header = header_cls.from_fileobj(io.BytesIO(prefix))
        shape = tuple(int(s) for s in header.get_data_shape())
        dtype = np.dtype(header.get_data_dtype())
        slope_or_none, inter_or_none = header.get_slope_inter()
        affine = np.asarray(header.get_best_affine(), dtype=np.float64)
        pixdim = tuple(float(v) for v in header["pixdim"][1:4])
    except Exception as exc:
        raise InvalidInput(f"{name}: invalid NIfTI header ({exc})", file=name) from exc
    # As nibabel's array proxy: no valid scaling in the header means none at all.
    slope = 1.0 if slope_or_none is None else float(slope_or_none)
    inter = 0.0 if inter_or_none is None else float(inter_or_none)

    if any(s < 1 for s in shape):
        raise InvalidInput(f"{name}: every dimension must be >= 1, got shape {shape}", file=name)
    if len(shape) == 4 and shape[3] == 1:
        shape3 = shape[:3]
    elif len(shape) == 3:
        shape3 = shape
    else:
        raise InvalidInput(f"{name}: expected a 3D volume, got shape {shape}", file=name, shape=list(shape))
    if dtype.fields is not None or dtype.kind not in "biuf":
        raise InvalidInput(f"{name}: unsupported voxel type {dtype} (need integer or real)", file=name)
    if not (np.isfinite(slope) and np.isfinite(inter)):
        raise InvalidInput(f"{name}: invalid scl_slope/scl_inter ({slope}, {inter})", file=name)
    try:
        geometry = Geometry.from_affine(shape3, affine)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc.message}", file=name) from exc
    px: tuple[float, float, float] = (pixdim[0], pixdim[1], pixdim[2])
    s3: tuple[int, int, int] = (shape3[0], shape3[1], shape3[2])
    return _Header(stream, name, s3, dtype, slope, inter, geometry, px)


def _scale(raw: np.ndarray, slope: float, inter: float, name: str) -> np.ndarray:
    """Apply scl_slope/inter; int16 when every value is an integer in int16 range, else float32."""
    if raw.dtype.kind in "biu":
        if raw.dtype == np.bool_:
            raw = raw.astype(np.uint8)
        if slope.is_integer() and inter.is_integer():
            lo, hi = int(raw.min()), int(raw.max())
            ends = (lo * int(slope) + int(inter), hi * int(slope) + int(inter))
            if min(ends) >= _INT16_MIN and max(ends) <= _INT16_MAX:
                if slope == 1.0 and inter == 0.0:
                    return np.asarray(raw, dtype=np.int16)
                work = np.int32 if abs(inter) < 2**30 else np.int64
                return (raw.astype(work) * int(slope) + int(inter)).astype(np.int16)
    out = raw.astype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        if slope != 1.0:
            out *= np.float32(slope)
        if inter != 0.0:
            out += np.float32(inter)
    if not np.all(np.isfinite(out)):
        raise InvalidInput(f"{name}: scaled voxel values exceed the float32 range", file=name)
    if (
        out.size
        and float(out.min()) >= _INT16_MIN
        and float(out.max()) <= _INT16_MAX
        and bool(np.all(out == np.rint(out)))
    ):
        return out.astype(np.int16)
    return out


def load_nifti_bytes(
    data: bytes, name: str = "volume.nii.gz", *, max_bytes: int | None = None, max_voxels: int | None = None
) -> LoadedVolume:
    """Load a 3D NIfTI volume from .nii or .nii.gz bytes (gzip detected by magic bytes).

    The header is checked first: more than `max_voxels` voxels (413) or `max_bytes` of decoded voxel data (413)
    is refused before anything is decompressed; the data is then decoded into an array of exactly that size.
    """
    header = _checked_header(data, name, max_bytes, max_voxels)
    with decode_limits.heavy_decode(name):
        parsed = header.read()
        values = _scale(parsed.raw, parsed.slope, parsed.inter, name)
    return LoadedVolume(
        data=values,
        geometry=parsed.geometry,
        source_dtype=parsed.source_dtype,
        header_pixdim=parsed.header_pixdim,
        slice_thickness=None,
    )


def header_geometry(
    data: bytes, name: str = "volume.nii.gz", *, max_bytes: int | None = None, max_voxels: int | None = None
) -> Geometry:
    """The grid a volume's header declares, checked as load_nifti_bytes checks it; no voxel is decompressed
    (an import checks its masks against it while the CT itself is still decoding)."""
    return _checked_header(data, name, max_bytes, max_voxels).geometry


def _checked_header(data: bytes, name: str, max_bytes: int | None, max_voxels: int | None) -> _Header:
    """The parsed header, refused (413) when it declares more voxels or decoded bytes than allowed."""
    header = _open_header(data, name)
    if max_voxels is not None and header.voxels > max_voxels:
        raise PayloadTooLarge(
            f"{name}: the header declares {header.shape} = {header.voxels} voxels; a scan may hold at most "
            f"{max_voxels}",
            file=name,
            declared_voxels=header.voxels,
            limit_voxels=max_voxels,
        )
    header.check_size(max_bytes)
    return header


def load_nifti_path(path: Path) -> LoadedVolume:
    """Load a 3D NIfTI volume from a file path."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidInput(f"{path.name}: file not found", file=str(path)) from exc
    except IsADirectoryError as exc:
        raise InvalidInput(f"{path.name}: is a directory, not a NIfTI file", file=str(path)) from exc
    except OSError as exc:
        raise InvalidInput(f"{path.name}: cannot read file ({exc.strerror})", file=str(path)) from exc
    return load_nifti_bytes(data, name=path.name)


def _check_grid(got: Geometry, expected: Geometry, name: str, atol_mm: float = 1e-3) -> None:
    """Raise InvalidInput when a mask's grid (read from its header) differs from the scan's."""
    if got.shape != expected.shape:
        raise InvalidInput(
            f"{name}: mask shape {got.shape} does not match the scan shape {expected.shape}",
            file=name,
            mask_shape=list(got.shape),
            scan_shape=list(expected.shape),
        )
    if not got.matches(expected, atol_mm=atol_mm):
        diff = float(np.max(np.abs(got.affine - expected.affine)))
        hint = ""
        if got.orientation != expected.orientation:
            hint = f"; mask orientation {got.orientation}, scan orientation {expected.orientation}"
        raise InvalidInput(
            f"{name}: mask affine differs from the scan affine by up to {diff:.4g} mm (tolerance {atol_mm:g} mm){hint}",
            file=name,
            max_abs_difference=diff,
            mask_affine=got.affine.tolist(),
            scan_affine=expected.affine.tolist(),
        )


@dataclass(frozen=True)
class MaskValues:
    """What a mask file held before binarisation: its stored type and how many voxels were off {0, 1}."""

    source_dtype: str
    off_binary_voxels: int
    min_value: float
    max_value: float

    @property
    def is_binary(self) -> bool:
        """True when every stored (scaled) value was exactly 0 or 1."""
        return self.off_binary_voxels == 0


def load_mask_with_values(
    data: bytes, expected: Geometry, name: str, *, max_bytes: int | None = None
) -> tuple[np.ndarray, MaskValues]:
    """Load a binary mask (values > 0.5 are inside) and report values off {0, 1} (for the import QA rule).

    The grid is checked from the header alone: a mask whose shape or affine differs from the scan's is refused
    before any voxel is decompressed.
    """
    header = _open_header(data, name)
    _check_grid(header.geometry, expected, name)
    header.check_size(max_bytes)
    with decode_limits.heavy_decode(name):
        return _mask_values(header.read())


def _mask_values(parsed: _Raw) -> tuple[np.ndarray, MaskValues]:
    """Binarise a decoded mask and summarise its stored values."""
    raw = parsed.raw
    values: np.ndarray
    if (parsed.slope, parsed.inter) == (1.0, 0.0) and raw.dtype.kind in "bu" and raw.dtype.itemsize == 1 and raw.size:
        # The common case (uint8 or bool 0/1 masks): one pass for the maximum; when it is at most 1 the bytes
        # already are a boolean mask and are viewed as one, without a copy.
        hi_u = int(raw.max())
        if hi_u <= 1:
            lo_u = 0 if hi_u == 0 else int(raw.min())
            return raw.view(np.bool_), MaskValues(parsed.source_dtype, 0, float(lo_u), float(hi_u))
    if (parsed.slope, parsed.inter) == (1.0, 0.0):
        values = raw
        # For integers "> 0.5" is "> 0"; comparing with an int avoids a float copy of the whole volume.
        mask = raw > 0 if raw.dtype.kind in "biu" else raw > 0.5
    else:
        values = raw.astype(np.float32) * np.float32(parsed.slope) + np.float32(parsed.inter)
        mask = values > 0.5
    off, lo, hi = 0, 0.0, 0.0
    if values.size:
        off = int(values.size - np.count_nonzero((values == 0) | (values == 1)))
        lo, hi = float(values.min()), float(values.max())
    return np.asarray(mask, dtype=bool), MaskValues(parsed.source_dtype, off, lo, hi)


def load_mask_bytes(data: bytes, expected: Geometry, name: str, *, max_bytes: int | None = None) -> np.ndarray:
    """Load a binary mask (values > 0.5 are inside) whose grid must match `expected`."""
    return load_mask_with_values(data, expected, name, max_bytes=max_bytes)[0]


def load_label_map_bytes(data: bytes, expected: Geometry, name: str, *, max_bytes: int | None = None) -> np.ndarray:
    """Load an integer label map (uint8/uint16/uint32) whose grid must match `expected` (checked from the header)."""
    header = _open_header(data, name)
    _check_grid(header.geometry, expected, name)
    header.check_size(max_bytes)
    with decode_limits.heavy_decode(name):
        return _label_values(header.read(), name)


def _label_values(parsed: _Raw, name: str) -> np.ndarray:
    """Check a decoded label map's values and narrow it to the smallest unsigned type."""
    values: np.ndarray
    if parsed.raw.dtype.kind in "biu" and (parsed.slope, parsed.inter) == (1.0, 0.0):
        values = parsed.raw
    else:
        values = parsed.raw.astype(np.float64) * parsed.slope + parsed.inter
        nonint = int(values.size - np.count_nonzero(values == np.rint(values)))
        if nonint:
            example = float(values[values != np.rint(values)].flat[0])
            raise InvalidInput(
                f"{name}: label map has {nonint} non-integer voxel value(s), e.g. {example:g}",
                file=name,
            )
    if values.size == 0:
        return np.zeros(values.shape, dtype=np.uint8)
    lo, hi = int(values.min()), int(values.max())
    if lo < 0:
        raise InvalidInput(f"{name}: label map has negative label {lo}", file=name)
    for dtype in (np.uint8, np.uint16, np.uint32):
        if hi <= int(np.iinfo(dtype).max):
            return np.asarray(values, dtype=dtype)
    raise InvalidInput(f"{name}: label {hi} is too large", file=name)


def _writable_dtype(data: np.ndarray) -> np.dtype[Any]:
    """Choose a NIfTI-compatible dtype for an array."""
    dt = data.dtype
    if dt == np.bool_:
        return np.dtype(np.uint8)
    if dt.kind in "iu" and dt.itemsize == 8:
        if data.size == 0:
            return np.dtype(np.int32)
        lo, hi = int(data.min()), int(data.max())
        for cand in (np.uint8, np.int16, np.int32, np.uint32):
            info = np.iinfo(cand)
            if info.min <= lo and hi <= info.max:
                return np.dtype(cand)
        raise InvalidInput(f"integer values {lo}..{hi} do not fit a 32-bit NIfTI type")
    if dt == np.float16:
        return np.dtype(np.float32)
    if dt.kind in "iuf":
        return np.dtype(dt.newbyteorder("="))
    raise InvalidInput(f"cannot write voxel type {dt} to NIfTI")


def to_nifti_gz(data: np.ndarray, affine: np.ndarray, compresslevel: int = 1) -> bytes:
    """Encode an array as gzip-compressed NIfTI-1 (sform and qform code 1, mm units, no scaling)."""
    arr = np.asarray(data)
    if arr.ndim < 1 or arr.size == 0:
        raise InvalidInput(f"cannot write an empty array of shape {arr.shape} to NIfTI")
    aff = _as_affine(affine, "affine")
    dtype = _writable_dtype(arr)
    out = arr.astype(dtype, copy=False)
    img = nib.Nifti1Image(out, aff, dtype=dtype)
    hdr = img.header
    hdr.set_sform(aff, code=1)
    hdr.set_qform(aff, code=1)
    hdr.set_xyzt_units(xyz="mm", t="sec")
    hdr.set_slope_inter(1.0, 0.0)
    return gzip.compress(img.to_bytes(), compresslevel=compresslevel, mtime=0)


def ensure_gzip(data: bytes) -> bytes:
    """Return gzip-compressed NIfTI bytes; bytes that are already gzip are returned unchanged."""
    if data.startswith(GZIP_MAGIC):
        return data
    if len(data) == 0:
        raise InvalidInput("the file is empty")
    _header_kind(data, "upload")
    return gzip.compress(data, compresslevel=1, mtime=0)
