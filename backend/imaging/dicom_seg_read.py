"""Reading a DICOM SEG: its segments (labels and codes), the series it references, and its masks on a scan grid.

`parse_seg` reads the header (segments, referenced series, frame of reference, frame count) without decoding a
pixel; `ParsedSeg.masks` then decodes the frames one at a time onto a scan's voxel grid, placing each frame by its
PlanePositionSequence position and the plane orientation (LPS -> RAS -> voxel indices through the inverse affine),
not by frame order, so any frame order or omitted frames are handled; a frame off the grid is refused. BINARY and
FRACTIONAL segmentations are read (a fractional frame counts where its value passes half the maximum); segments
stay separate masks, so overlaps are kept.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels import iter_pixels
from pydicom.uid import SegmentationStorage

from backend.core import decode_limits
from backend.core.errors import InvalidInput
from backend.imaging import dicom
from backend.imaging.dicom_codes import Concept, SegmentCoding, StructureCode
from backend.imaging.nifti import Geometry

_LPS = np.diag([-1.0, -1.0, 1.0])
_TYPES = ("BINARY", "FRACTIONAL")
_MAX_LABEL = 64


@dataclass(frozen=True)
class SegmentInfo:
    """One segment of a SEG: its number, label (the full name when the label was cut at 64) and code."""

    number: int
    label: str
    code: StructureCode | None

    def coding(self) -> SegmentCoding:
        """The segment as `dicom_codes.match_segment` takes it."""
        return SegmentCoding(self.number, self.label, self.code)


@dataclass
class ParsedSeg:
    """A SEG's header: segments, referenced series and study, frame of reference, and the frames to decode."""

    name: str
    dataset: Dataset
    segmentation_type: str
    segments: list[SegmentInfo]
    series_uids: list[str]
    study_uid: str
    frame_of_reference_uid: str
    frames: int
    rows: int
    columns: int

    def masks(self, geometry: Geometry, numbers: Collection[int] | None = None) -> dict[int, np.ndarray]:
        """Decode the frames of the chosen segments (default: all) onto a scan grid: {segment number: bool mask}.

        Frames are decoded one at a time; a frame that does not lie on the grid is refused (InvalidInput)."""
        wanted = [s.number for s in self.segments if numbers is None or s.number in numbers]
        shape = geometry.shape
        limit = decode_limits.current().max_decoded_bytes
        needed = len(wanted) * int(np.prod(shape))
        if needed > limit:
            raise InvalidInput(
                f"{self.name}: {len(wanted)} segments on a grid of {list(shape)} voxels need {needed >> 20} MiB, "
                f"more than the limit of {limit >> 20} MiB",
                file=self.name,
            )
        out = {number: np.zeros(shape, dtype=bool) for number in wanted}
        if self.frames == 0 or not out:
            return out
        ds = self.dataset
        shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else Dataset()
        per_frame = ds.PerFrameFunctionalGroupsSequence
        first = per_frame[0]
        orientation = _numbers(
            _group(first, shared, "PlaneOrientationSequence", self.name), "ImageOrientationPatient", 6
        )
        spacing = _numbers(_group(first, shared, "PixelMeasuresSequence", self.name), "PixelSpacing", 2)
        inverse = np.linalg.inv(geometry.affine)
        to_voxel = inverse[:3, :3] @ _LPS  # LPS displacement -> voxel displacement
        step_col = to_voxel @ (orientation[:3] * spacing[1])  # one column to the right
        step_row = to_voxel @ (orientation[3:] * spacing[0])  # one row down
        threshold = 0.0
        if self.segmentation_type == "FRACTIONAL":
            threshold = float(ds.get("MaximumFractionalValue", 255) or 255) / 2.0
        placements: list[tuple[int, np.ndarray]] = []
        for item in per_frame:
            # A macro shared by every frame (one segment, or one frame) sits in the shared functional groups.
            number = int(_group(item, shared, "SegmentIdentificationSequence", self.name).ReferencedSegmentNumber)
            position = _numbers(_group(item, shared, "PlanePositionSequence", self.name), "ImagePositionPatient", 3)
            placements.append((number, inverse[:3, :3] @ (_LPS @ position) + inverse[:3, 3]))
        with decode_limits.heavy_decode(f"DICOM SEG of {self.frames} frames"):
            for index, frame in enumerate(_frames(ds, self.name)):
                number, origin = placements[index]
                if number in out:
                    _place(out[number], np.asarray(frame) > threshold, origin, step_row, step_col, self.name)
        return out


def parse_seg(source: bytes | Path, name: str | None = None) -> ParsedSeg:
    """Read a DICOM SEG's header; InvalidInput naming the file when it is not a readable BINARY/FRACTIONAL SEG."""
    label = name or (source.name if isinstance(source, Path) else "SEG")
    ds = dicom.read_dicom_file(source, label)
    modality = str(ds.get("Modality", "") or "").upper()
    if modality != "SEG" or str(ds.get("SOPClassUID", "")) != SegmentationStorage:
        raise InvalidInput(
            f"{label}: not a DICOM SEG (modality {modality or 'unknown'}); import images as scans",
            file=label,
            modality=modality,
        )
    seg_type = str(ds.get("SegmentationType", "") or "")
    if seg_type not in _TYPES:
        raise InvalidInput(
            f"{label}: {seg_type or 'unknown'} segmentations cannot be imported; use a BINARY or FRACTIONAL SEG",
            file=label,
            segmentation_type=seg_type,
        )
    segments = [_segment(item, label) for item in ds.get("SegmentSequence", [])]
    if not segments:
        raise InvalidInput(f"{label}: the SEG holds no segments", file=label)
    numbers = [s.number for s in segments]
    if len(set(numbers)) != len(numbers):
        raise InvalidInput(f"{label}: segment numbers repeat ({numbers})", file=label)
    frames = int(ds.get("NumberOfFrames", 0) or 0)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence", [])
    if frames < 0 or len(per_frame) != frames:
        raise InvalidInput(
            f"{label}: the SEG declares {frames} frames but describes {len(per_frame)}",
            file=label,
        )
    series = [str(item.get("SeriesInstanceUID", "")) for item in ds.get("ReferencedSeriesSequence", [])]
    return ParsedSeg(
        name=label,
        dataset=ds,
        segmentation_type=seg_type,
        segments=segments,
        series_uids=[uid for uid in series if uid],
        study_uid=str(ds.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=str(ds.get("FrameOfReferenceUID", "") or ""),
        frames=frames,
        rows=int(ds.get("Rows", 0) or 0),
        columns=int(ds.get("Columns", 0) or 0),
    )


def read_segments(data: bytes | Path, geometry: Geometry, name: str | None = None) -> dict[str, np.ndarray]:
    """Decode a SEG onto a scan grid: {segment label: bool mask data[i, j, k]} (segments sharing a label merged)."""
    parsed = parse_seg(data, name)
    masks = parsed.masks(geometry)
    out: dict[str, np.ndarray] = {}
    for segment in parsed.segments:
        mask = masks[segment.number]
        out[segment.label] = out[segment.label] | mask if segment.label in out else mask
    return out


def masks_by_name(segments: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Segments keyed by structure name, in the given order (absent names skipped)."""
    return {name: segments[name] for name in names if name in segments}


def _concept(item: Dataset | None) -> Concept | None:
    """A code sequence item as a Concept (None when absent or incomplete)."""
    if item is None:
        return None
    scheme, value = str(item.get("CodingSchemeDesignator", "") or ""), str(item.get("CodeValue", "") or "")
    if not scheme or not value:
        return None
    return Concept(scheme, value, str(item.get("CodeMeaning", "") or value))


def _first(ds: Dataset, keyword: str) -> Dataset | None:
    """The first item of a code sequence, or None."""
    items = ds.get(keyword)
    return items[0] if items else None


def _segment(item: Dataset, name: str) -> SegmentInfo:
    """One Segment Sequence item: number, label and code (None when its property codes are missing)."""
    try:
        number = int(item.SegmentNumber)
    except (AttributeError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{name}: a segment has no valid SegmentNumber", file=name) from exc
    label = str(item.get("SegmentLabel", "") or "").strip()
    description = str(item.get("SegmentDescription", "") or "").strip()
    if len(label) >= _MAX_LABEL and description.startswith(label):
        label = description  # maskloop keeps a name past 64 characters whole there
    type_item = _first(item, "SegmentedPropertyTypeCodeSequence")
    category = _concept(_first(item, "SegmentedPropertyCategoryCodeSequence"))
    kind = _concept(type_item)
    code = None
    if category is not None and kind is not None:
        modifier = _concept(_first(type_item, "SegmentedPropertyTypeModifierCodeSequence")) if type_item else None
        region = _concept(_first(item, "AnatomicRegionSequence"))
        code = StructureCode(category, kind, modifier, region)
    return SegmentInfo(number, label or f"segment {number}", code)


def _frames(ds: Dataset, name: str) -> Iterator[np.ndarray]:
    """The frames' pixel arrays, one at a time."""
    try:
        yield from iter_pixels(ds)
    except InvalidInput:
        raise
    except Exception as exc:
        raise InvalidInput(f"{name}: cannot decode the SEG's pixel data ({exc})", file=name) from exc


def _numbers(item: Dataset, keyword: str, count: int) -> np.ndarray:
    """A multi-valued numeric attribute of a functional group item, exactly `count` finite numbers."""
    value = item.get(keyword)
    try:
        arr = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(f"the SEG's {keyword} is not {count} numbers") from exc
    if arr.shape != (count,) or not np.all(np.isfinite(arr)):
        raise InvalidInput(f"the SEG's {keyword} is not {count} finite numbers")
    return arr


def _group(frame: Dataset, shared: Dataset, keyword: str, name: str) -> Dataset:
    """A functional group macro of a frame, from its per-frame item or else the shared functional groups."""
    for source in (frame, shared):
        if keyword in source and source[keyword].value:
            return source[keyword].value[0]
    raise InvalidInput(f"{name}: the SEG frames lack {keyword}", file=name)


def _place(
    target: np.ndarray,
    frame: np.ndarray,
    origin: np.ndarray,
    step_row: np.ndarray,
    step_col: np.ndarray,
    name: str,
) -> None:
    """Write one frame into a voxel grid whose axes it runs along (each step must be +-1 along one axis)."""
    axes = []
    for step in (step_row, step_col):
        axis = int(np.argmax(np.abs(step)))
        if abs(abs(step[axis]) - 1) > 1e-3 or np.abs(np.delete(step, axis)).max() > 1e-3:
            raise InvalidInput(
                f"{name}: the SEG frames do not run along the scan's voxel axes (other orientation or pixel spacing)",
                file=name,
            )
        axes.append((axis, round(float(step[axis]))))
    start = np.rint(origin).astype(int)
    if np.abs(origin - start).max() > 1e-2:
        raise InvalidInput(f"{name}: a SEG frame does not lie on the scan's voxel grid", file=name)
    (row_axis, row_sign), (col_axis, col_sign) = axes
    if row_axis == col_axis:
        raise InvalidInput(f"{name}: the SEG frames' rows and columns run along one axis", file=name)
    index: list[object] = list(start)
    rows, cols = frame.shape
    index[row_axis] = np.arange(rows) * row_sign + start[row_axis]
    index[col_axis] = np.arange(cols) * col_sign + start[col_axis]
    arrays = [np.atleast_1d(np.asarray(v)) for v in index]
    if any(a.min() < 0 or a.max() >= n for a, n in zip(arrays, target.shape, strict=True)):
        raise InvalidInput(f"{name}: a SEG frame lies outside the scan's voxel grid", file=name)
    grid = np.ix_(*arrays)
    block = frame if row_axis < col_axis else frame.T
    target[grid] |= block.reshape(target[grid].shape)
