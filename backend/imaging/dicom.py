"""DICOM CT series reading: one series -> a 3D volume in Hounsfield units with a RAS+ affine."""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.filereader import _read_file_meta_info, read_file_meta_info, read_preamble
from pydicom.uid import DeflatedExplicitVRLittleEndian

from backend.core import decode_limits
from backend.core.errors import InvalidInput, PayloadTooLarge
from backend.imaging import bounded
from backend.imaging.nifti import Geometry, LoadedVolume

# Objects that carry no CT image even when they share a folder with one.
_NON_IMAGE_MODALITIES = frozenset({"SEG", "RTSTRUCT", "RTPLAN", "RTRECORD", "SR", "PR", "KO", "REG", "DOC"})
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
_ORIENTATION_TOL = 1e-4
_SPACING_TOL = 1e-4
_PIXEL_DATA_TAGS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
_INT16_MIN = int(np.iinfo(np.int16).min)
_INT16_MAX = int(np.iinfo(np.int16).max)
_INT32_MIN = int(np.iinfo(np.int32).min)
_INT32_MAX = int(np.iinfo(np.int32).max)
# A deflated (1.2.840.10008.1.2.1.99) slice inflates to its whole dataset; a CT slice is well under 1 MiB, so
# this is generous, and it keeps a deflate bomb from ever being inflated in memory.
_MAX_INFLATED_FILE_BYTES = 256 * 1024**2
# Values larger than this (the pixel data) stay on disk until their slice is decoded: one slice in memory at a
# time instead of the whole series.
_DEFER_SIZE = "64 KB"


@dataclass(frozen=True, eq=False)
class DicomVolume(LoadedVolume):
    """A DICOM series as a volume, with the source identifiers a SEG or a PACS needs to refer back to it.

    `instance_uids` are the SOP Instance UIDs of the slices in the volume's slice order k."""

    series_uid: str = ""
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    instance_uids: tuple[str, ...] = ()


@dataclass
class _Slice:
    """One parsed slice: its file, dataset and position along the slice normal."""

    path: Path
    ds: Dataset
    position: np.ndarray
    distance: float


def _collect_files(files: Sequence[Path] | Path) -> list[Path]:
    """Expand a folder (recursively) or a file list into a sorted list of regular files."""
    if isinstance(files, str | Path):
        root = Path(files)
        if root.is_dir():
            found = sorted(p for p in root.rglob("*") if p.is_file())
            if not found:
                raise InvalidInput(f"folder {root.name!r} holds no files", folder=str(root))
            return found
        if not root.exists():
            raise InvalidInput(f"{root.name}: file not found", file=str(root))
        return [root]
    paths = [Path(p) for p in files]
    if not paths:
        raise InvalidInput("no DICOM files given")
    missing = [p.name for p in paths if not p.is_file()]
    if missing:
        raise InvalidInput(f"file(s) not found: {', '.join(missing[:10])}", missing=missing)
    return paths


def _check_deflated(source: Path | bytes, name: str) -> bool:
    """True when the file is deflate-compressed DICOM, after checking that it inflates within the bound.

    pydicom inflates such a dataset whole and unbounded, so its size is counted here first, piece by piece.
    """
    if isinstance(source, Path):
        meta = read_file_meta_info(source)
    else:
        # The same as read_file_meta_info, on bytes: the preamble, then the file meta group only.
        stream = BytesIO(source)
        read_preamble(stream, False)
        meta = _read_file_meta_info(stream)
    if meta.get("TransferSyntaxUID") != DeflatedExplicitVRLittleEndian:
        return False
    group_length = meta.get("FileMetaInformationGroupLength")
    if not isinstance(group_length, int):
        raise InvalidInput(f"{name}: deflated DICOM without a file meta group length", file=name)
    # Preamble (128) + "DICM" (4) + the group length element itself (12, explicit VR) + the rest of the group.
    start = 128 + 4 + 12 + group_length
    data = source.read_bytes() if isinstance(source, Path) else source
    bounded.inflated_size(data[start:], -15, _MAX_INFLATED_FILE_BYTES, name)
    return True


def _read(path: Path, name: str | None = None) -> Dataset | None:
    """Read one file; None when it is not DICOM at all, InvalidInput when it is broken DICOM."""
    return _read_source(path, name or path.name)


def _read_source(source: Path | bytes, name: str) -> Dataset | None:
    """Read one DICOM file (a path or its bytes); None when it is not DICOM, InvalidInput when it is broken."""
    try:
        deflated = _check_deflated(source, name)
        # A deflated dataset lives in memory once inflated: nothing to defer to.
        defer = None if deflated or isinstance(source, bytes) else _DEFER_SIZE
        return pydicom.dcmread(source if isinstance(source, Path) else BytesIO(source), force=False, defer_size=defer)
    except InvalidDicomError:
        return None
    except (InvalidInput, PayloadTooLarge):
        raise
    except Exception as exc:
        raise InvalidInput(f"{name}: unreadable DICOM file ({exc})", file=name) from exc


def read_dicom_file(source: Path | bytes, name: str | None = None) -> Dataset:
    """Read one DICOM file (a path or its bytes) with the deflate bound; InvalidInput naming it when not DICOM."""
    label = name or (source.name if isinstance(source, Path) else "file")
    ds = _read_source(source, label)
    if ds is None:
        raise InvalidInput(f"{label}: not a DICOM file", file=label)
    return ds


def is_dicom_file(path: Path) -> bool:
    """Whether a file starts like DICOM Part 10 (a 128-byte preamble then 'DICM')."""
    try:
        with path.open("rb") as handle:
            head = handle.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def _floats(ds: Dataset, keyword: str, count: int, path: Path) -> np.ndarray:
    """Read a multi-valued numeric tag, requiring exactly `count` finite values."""
    value = ds.get(keyword)
    if value is None or value == "":
        raise InvalidInput(f"{path.name}: missing {keyword}", file=path.name, tag=keyword)
    try:
        items = list(value) if isinstance(value, Sequence) and not isinstance(value, str) else [value]
        arr = np.array([float(v) for v in items], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{path.name}: {keyword} is not numeric ({value!r})", file=path.name) from exc
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise InvalidInput(f"{path.name}: {keyword} must hold {count} finite numbers, got {value!r}", file=path.name)
    return arr


def _float_or(ds: Dataset, keyword: str, default: float | None, path: Path) -> float | None:
    """Read a single numeric tag, or `default` when absent or blank."""
    value = ds.get(keyword)
    if value is None or value == "":
        return default
    try:
        out = float(value)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"{path.name}: {keyword} is not numeric ({value!r})", file=path.name) from exc
    if not np.isfinite(out):
        raise InvalidInput(f"{path.name}: {keyword} is not finite ({value!r})", file=path.name)
    return out


def _check_image(ds: Dataset, path: Path) -> None:
    """Refuse objects that are not single-frame greyscale images."""
    modality = str(ds.get("Modality", "")).upper()
    if modality == "SEG":
        raise InvalidInput(
            f"{path.name}: SEG object is not an image slice; import it as a label version of its scan "
            "(POST /api/scans/{scan_id}/labels/dicom-seg, or `maskloop import-labels`)",
            file=path.name,
            modality=modality,
        )
    if modality in _NON_IMAGE_MODALITIES:
        raise InvalidInput(
            f"{path.name}: {modality} object is not an image slice; upload the CT series only",
            file=path.name,
            modality=modality,
        )
    if not any(tag in ds for tag in _PIXEL_DATA_TAGS):
        raise InvalidInput(
            f"{path.name}: DICOM object has no pixel data (modality {modality or 'unknown'})",
            file=path.name,
        )
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise InvalidInput(f"{path.name}: colour images are not CT slices", file=path.name)
    if int(ds.get("NumberOfFrames", 1) or 1) != 1:
        raise InvalidInput(
            f"{path.name}: multi-frame (enhanced) DICOM is not supported; export classic single-frame slices",
            file=path.name,
        )


def _pixels(ds: Dataset, path: Path) -> np.ndarray:
    """Decode a slice's stored pixel values."""
    try:
        arr = np.asarray(ds.pixel_array)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        syntax_name = getattr(syntax, "name", str(syntax))
        raise InvalidInput(
            f"{path.name}: cannot decode pixel data (transfer syntax {syntax_name}): {exc}",
            file=path.name,
            transfer_syntax=str(syntax),
        ) from exc
    rows, cols = int(ds.Rows), int(ds.Columns)
    if arr.shape != (rows, cols):
        raise InvalidInput(
            f"{path.name}: pixel array shape {arr.shape} does not match Rows x Columns ({rows}, {cols})",
            file=path.name,
        )
    return arr


def _check_size(rows: int, cols: int, n: int, bits: int, max_voxels: int | None, max_bytes: int | None) -> None:
    """Refuse (413) a series whose declared size passes the limits, before any pixel is decoded."""
    limits = decode_limits.current()
    max_voxels = limits.max_scan_voxels if max_voxels is None else max_voxels
    max_bytes = limits.max_decoded_bytes if max_bytes is None else max_bytes
    voxels = rows * cols * n
    if voxels > max_voxels:
        raise PayloadTooLarge(
            f"the series declares {n} slices of {rows}x{cols} = {voxels} voxels; a scan may hold at most {max_voxels}",
            declared_voxels=voxels,
            limit_voxels=max_voxels,
        )
    # The volume is assembled as int32/float32 (4 bytes a voxel) whatever the stored bit depth.
    declared = voxels * max(4, (bits + 7) // 8)
    bounded.check_declared(
        "DICOM series", declared, max_bytes, f"{n} slices of {rows}x{cols} voxels", by="Rows x Columns x slices"
    )


def load_dicom_series(
    files: Sequence[Path] | Path, *, max_voxels: int | None = None, max_bytes: int | None = None
) -> DicomVolume:
    """Load one DICOM CT series (a folder, searched recursively, or a list of files) as a HU volume.

    Its size (slices x Rows x Columns) is checked against `max_voxels` and `max_bytes` (default: the settings)
    before any pixel data is decoded; slices are decoded one at a time into the preallocated volume.
    """
    paths = _collect_files(files)
    datasets: list[tuple[Path, Dataset]] = []
    for path in paths:
        ds = _read(path)
        if ds is None:
            continue
        meta = getattr(ds, "file_meta", None)
        sop_class = str(ds.get("SOPClassUID", "") or getattr(meta, "MediaStorageSOPClassUID", "") or "")
        if sop_class == _DICOMDIR_SOP_CLASS or "DirectoryRecordSequence" in ds:
            continue
        datasets.append((path, ds))
    if not datasets:
        raise InvalidInput(f"none of the {len(paths)} file(s) is a DICOM file", files=len(paths))

    series = Counter(str(ds.get("SeriesInstanceUID", "") or "<missing>") for _, ds in datasets)
    if len(series) > 1:
        listing = ", ".join(f"{uid} ({n} files)" for uid, n in series.most_common())
        raise InvalidInput(
            f"mixed series: the files hold {len(series)} series: {listing}; upload one series at a time",
            series=dict(series),
        )

    for path, ds in datasets:
        _check_image(ds, path)

    first_path, first = datasets[0]
    rows = int(first.get("Rows", 0) or 0)
    cols = int(first.get("Columns", 0) or 0)
    if rows < 1 or cols < 1:
        raise InvalidInput(f"{first_path.name}: invalid Rows/Columns ({rows}, {cols})", file=first_path.name)
    iop = _floats(first, "ImageOrientationPatient", 6, first_path)
    spacing = _floats(first, "PixelSpacing", 2, first_path)
    if np.any(spacing <= 0):
        raise InvalidInput(f"{first_path.name}: PixelSpacing must be positive, got {spacing.tolist()}")
    row_dir, col_dir = iop[:3], iop[3:]
    if abs(np.linalg.norm(row_dir) - 1) > 1e-2 or abs(np.linalg.norm(col_dir) - 1) > 1e-2:
        raise InvalidInput(f"{first_path.name}: ImageOrientationPatient cosines are not unit vectors")
    if abs(float(np.dot(row_dir, col_dir))) > 1e-2:
        raise InvalidInput(f"{first_path.name}: ImageOrientationPatient cosines are not orthogonal")
    row_dir = row_dir / np.linalg.norm(row_dir)
    col_dir = col_dir / np.linalg.norm(col_dir)
    normal = np.cross(row_dir, col_dir)

    slices: list[_Slice] = []
    for path, ds in datasets:
        r, c = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        if (r, c) != (rows, cols):
            raise InvalidInput(
                f"inconsistent slice size: {first_path.name} is {rows}x{cols}, {path.name} is {r}x{c}",
                files=[first_path.name, path.name],
            )
        other_iop = _floats(ds, "ImageOrientationPatient", 6, path)
        if not np.allclose(other_iop, iop, atol=_ORIENTATION_TOL, rtol=0):
            raise InvalidInput(
                f"inconsistent ImageOrientationPatient: {first_path.name} has {iop.tolist()}, "
                f"{path.name} has {other_iop.tolist()}",
                files=[first_path.name, path.name],
            )
        other_spacing = _floats(ds, "PixelSpacing", 2, path)
        if not np.allclose(other_spacing, spacing, atol=_SPACING_TOL, rtol=0):
            raise InvalidInput(
                f"inconsistent PixelSpacing: {first_path.name} has {spacing.tolist()}, "
                f"{path.name} has {other_spacing.tolist()}",
                files=[first_path.name, path.name],
            )
        pos = _floats(ds, "ImagePositionPatient", 3, path)
        slices.append(_Slice(path, ds, pos, float(np.dot(normal, pos))))

    slices.sort(key=lambda s: s.distance)
    n = len(slices)
    dist = np.array([s.distance for s in slices])
    for a, b in itertools.pairwise(slices):
        if abs(b.distance - a.distance) < 1e-3:
            raise InvalidInput(
                f"duplicate slice position {a.distance:.3f} mm along the slice normal: {a.path.name} and {b.path.name}",
                files=[a.path.name, b.path.name],
            )

    thickness = _float_or(first, "SliceThickness", None, first_path)
    if n > 1:
        step = (slices[-1].position - slices[0].position) / (n - 1)
        step_len = float(np.linalg.norm(step))
        tol = max(0.01, 0.01 * step_len)
        for k, s in enumerate(slices):
            deviation = float(np.linalg.norm(s.position - (slices[0].position + k * step)))
            if deviation > tol:
                gaps = np.diff(dist)
                raise InvalidInput(
                    f"slice positions are not evenly spaced (slice {s.path.name} is {deviation:.3f} mm off; "
                    f"gaps between slices range {gaps.min():.3f}..{gaps.max():.3f} mm); "
                    "a slice may be missing",
                    file=s.path.name,
                )
    else:
        # One slice: its extent along the normal comes from its own tags, never guessed from the pixel spacing.
        between = _float_or(first, "SpacingBetweenSlices", None, first_path)
        third_or_none = between if between and between > 0 else thickness if thickness and thickness > 0 else None
        if third_or_none is None:
            raise InvalidInput(
                f"{first_path.name}: a single slice needs SliceThickness or SpacingBetweenSlices to give the "
                "volume its third spacing; neither is set (upload the whole series, or set one of them)",
                file=first_path.name,
            )
        step = normal * third_or_none

    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_dir * spacing[1]  # i: along a row, one column apart
    affine_lps[:3, 1] = col_dir * spacing[0]  # j: down a column, one row apart
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = slices[0].position
    affine = affine_lps.copy()
    affine[:2, :] *= -1.0  # LPS -> RAS

    _check_size(rows, cols, n, int(first.get("BitsAllocated", 16) or 16), max_voxels, max_bytes)
    with decode_limits.heavy_decode(f"DICOM series of {n} slices"):
        volume, source_dtype = _assemble(slices, rows, cols)
    geometry = Geometry.from_affine(volume.shape, affine)
    return DicomVolume(
        data=volume,
        geometry=geometry,
        source_dtype=source_dtype,
        header_pixdim=geometry.spacing,
        slice_thickness=thickness if thickness and thickness > 0 else None,
        series_uid=str(first.get("SeriesInstanceUID", "") or ""),
        study_uid=str(first.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(first.get("FrameOfReferenceUID", "") or ""),
        instance_uids=tuple(str(s.ds.get("SOPInstanceUID", "") or "") for s in slices),
    )


def _drop_pixels(ds: Dataset) -> None:
    """Forget a decoded slice's pixel data (and pydicom's cached array): one slice in memory at a time."""
    for tag in _PIXEL_DATA_TAGS:
        if tag in ds:
            delattr(ds, tag)


def _assemble(slices: list[_Slice], rows: int, cols: int) -> tuple[np.ndarray, str]:
    """Stack decoded slices as data[i=column, j=row, k=slice] in HU (int16 when exact, else float32)."""
    n = len(slices)
    scales: list[tuple[float, float]] = []
    for s in slices:
        slope = _float_or(s.ds, "RescaleSlope", None, s.path)
        inter = _float_or(s.ds, "RescaleIntercept", None, s.path)
        slope = 1.0 if slope is None else slope
        inter = 0.0 if inter is None else inter
        if slope == 0:
            raise InvalidInput(f"{s.path.name}: RescaleSlope is 0", file=s.path.name)
        scales.append((slope, inter))
    # Exact integer arithmetic only while pixel * slope + intercept cannot overflow int64 (else float).
    integral = all(sl.is_integer() and it.is_integer() and abs(sl) <= 2**16 and abs(it) <= 2**31 for sl, it in scales)

    source_dtype = ""
    volume: np.ndarray = np.empty((cols, rows, n), dtype=np.int32 if integral else np.float32, order="F")
    lo, hi = np.inf, -np.inf
    for k, (s, (slope, inter)) in enumerate(zip(slices, scales, strict=True)):
        px = _pixels(s.ds, s.path)
        if px.dtype.kind not in "biuf":
            raise InvalidInput(f"{s.path.name}: unsupported pixel type {px.dtype}", file=s.path.name)
        if not source_dtype:
            source_dtype = px.dtype.name
        if integral and px.dtype.kind != "f":
            hu: Any = px.astype(np.int64) * int(slope) + int(inter)
            lo, hi = min(lo, int(hu.min())), max(hi, int(hu.max()))
            if volume.dtype == np.int32 and (lo < _INT32_MIN or hi > _INT32_MAX):
                volume = volume.astype(np.float32)
        else:
            if volume.dtype != np.float32:
                volume = volume.astype(np.float32)
            hu = px.astype(np.float64) * slope + inter
            if not np.all(np.isfinite(hu)):
                raise InvalidInput(f"{s.path.name}: pixel values are not finite", file=s.path.name)
            if hu.size and float(np.abs(hu).max()) > float(np.finfo(np.float32).max):
                raise InvalidInput(
                    f"{s.path.name}: rescaled pixel values exceed the float32 range "
                    f"(RescaleSlope {slope:g}, RescaleIntercept {inter:g})",
                    file=s.path.name,
                )
        volume[:, :, k] = hu.T
        _drop_pixels(s.ds)
    if volume.dtype == np.int32:
        if lo >= _INT16_MIN and hi <= _INT16_MAX:
            return volume.astype(np.int16), source_dtype
        return volume.astype(np.float32), source_dtype
    out = volume
    if (
        out.size
        and float(out.min()) >= _INT16_MIN
        and float(out.max()) <= _INT16_MAX
        and bool(np.all(out == np.rint(out)))
    ):
        return out.astype(np.int16), source_dtype
    return out, source_dtype
