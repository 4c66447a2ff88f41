"""DICOM export: a CT series written from a NIfTI grid, and a DICOM SEG (highdicom) that references it.

Geometry. NIfTI affines map voxel (i, j, k) to RAS+ millimetres; DICOM patient coordinates are LPS. Slice k of
the series is the plane data[:, :, k] stored as a Rows x Columns image with row index j and column index i, so

* ImageOrientationPatient = (LPS direction of +i, LPS direction of +j),
* PixelSpacing = (spacing along j [between rows], spacing along i [between columns]),
* ImagePositionPatient of slice k = LPS position of voxel (0, 0, k).

This holds for any orientation of the scan (RAS, LPS, IPL: then the slices are sagittal) and for oblique
affines; only sheared grids (non-orthogonal i/j axes) cannot be written. CT values are stored as unsigned
16-bit pixels with RescaleSlope 1 and RescaleIntercept = the lowest HU (at most -1024), i.e. exactly;
non-integer volumes are quantised to 1/16 HU.

SEG. BINARY, one segment per structure, overlapping structures stay separate segments (never flattened); only
the slab of slices holding voxels is encoded and empty frames are omitted (memory while building: slab voxels x
structures bytes). Segment labels and colours come from the label schema; the segment algorithm type is MANUAL
for human-made versions and AUTOMATIC for model versions. Segmented property categories are SNOMED CT
"Anatomical Structure" (123037004), or "Morphologically Altered Structure" (49755003) for lesions; property
types use the private coding scheme 99MASKLOOP with the structure name as code value (no SNOMED code is claimed).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import numpy as np
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian, generate_uid

from backend.core.errors import InvalidInput
from backend.imaging.nifti import Geometry

_LPS = np.diag([-1.0, -1.0, 1.0])
ANATOMICAL_STRUCTURE = Code("123037004", "SCT", "Anatomical Structure")
MORPHOLOGICALLY_ALTERED = Code("49755003", "SCT", "Morphologically Altered Structure")
PRIVATE_SCHEME = "99MASKLOOP"
SOFTWARE = "maskloop"


def uid(*parts: object) -> str:
    """A deterministic DICOM UID (2.25.<hash>) derived from the given parts, so reruns write identical files."""
    return str(generate_uid(prefix=None, entropy_srcs=[str(p) for p in parts]))


@dataclass(frozen=True)
class SegmentSpec:
    """One structure as a SEG segment: name, RGB colour '#rrggbb' and whether it is a lesion."""

    name: str
    color: str
    lesion: bool = False


@dataclass(frozen=True)
class SeriesIds:
    """Identifiers shared by the CT series and its SEG: patient, study, frame of reference, CT series."""

    patient_id: str
    study_uid: str
    frame_of_reference_uid: str
    series_uid: str

    @classmethod
    def derive(cls, case_id: str, seed: str) -> SeriesIds:
        """Deterministic identifiers of one case's export."""
        return cls(
            patient_id=case_id[:64],
            study_uid=uid(seed, case_id, "study"),
            frame_of_reference_uid=uid(seed, case_id, "frame"),
            series_uid=uid(seed, case_id, "ct-series"),
        )


def _plane_axes(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, float, float]:
    """LPS unit directions of +i and +j and their spacings; refuses sheared grids."""
    lps = _LPS @ np.asarray(affine, dtype=np.float64)[:3, :3]
    di, dj = lps[:, 0], lps[:, 1]
    si, sj = float(np.linalg.norm(di)), float(np.linalg.norm(dj))
    ui, uj = di / si, dj / sj
    if abs(float(np.dot(ui, uj))) > 1e-4:
        raise InvalidInput("the scan's voxel axes i and j are not orthogonal; DICOM cannot describe this grid")
    return ui, uj, si, sj


def _ds(value: float) -> str:
    """A decimal string of at most 16 characters."""
    text = f"{value:.10g}"
    return text if len(text) <= 16 else f"{value:.6e}"


def ct_series(
    volume: np.ndarray, affine: np.ndarray, ids: SeriesIds, *, description: str = "maskloop export"
) -> list[Dataset]:
    """One CT Image Storage dataset per slice k of a HU volume, positioned from its RAS affine."""
    if volume.ndim != 3:
        raise InvalidInput(f"expected a 3D volume, got shape {volume.shape}")
    ui, uj, si, sj = _plane_axes(affine)
    lps_affine = _LPS @ np.asarray(affine, dtype=np.float64)[:3, :]
    if volume.dtype.kind == "f" and not np.all(volume == np.rint(volume)):
        slope = 1.0 / 16.0
        scaled = np.rint(volume.astype(np.float64) / slope)
    else:
        slope = 1.0
        scaled = volume.astype(np.int64)
    low = int(scaled.min()) if scaled.size else 0
    intercept_units = min(low, round(-1024 / slope))
    if int(scaled.max()) - intercept_units > 65535:
        raise InvalidInput("CT values span more than 65535 steps; cannot store them as 16-bit pixels")
    stored = (scaled - intercept_units).astype(np.uint16)
    now = dt.datetime(2000, 1, 1)
    slice_thickness = float(np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, 2]))
    out: list[Dataset] = []
    for k in range(volume.shape[2]):
        sop_uid = uid(ids.series_uid, k)
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CTImageStorage
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = sop_uid
        ds.StudyInstanceUID = ids.study_uid
        ds.SeriesInstanceUID = ids.series_uid
        ds.FrameOfReferenceUID = ids.frame_of_reference_uid
        ds.PatientName = f"{ids.patient_id}^"
        ds.PatientID = ids.patient_id
        ds.PatientBirthDate = ""
        ds.PatientSex = ""
        ds.StudyDate = now.strftime("%Y%m%d")
        ds.StudyTime = now.strftime("%H%M%S")
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.Modality = "CT"
        ds.SeriesNumber = 1
        ds.SeriesDescription = description[:64]
        ds.InstanceNumber = k + 1
        ds.Manufacturer = SOFTWARE
        ds.ImageType = ["DERIVED", "SECONDARY"]
        ds.PositionReferenceIndicator = ""
        ds.KVP = ""
        ds.AcquisitionNumber = 1
        position = lps_affine @ np.array([0.0, 0.0, float(k), 1.0])
        ds.ImagePositionPatient = [_ds(float(v)) for v in position]
        ds.ImageOrientationPatient = [_ds(float(v)) for v in (*ui, *uj)]
        ds.PixelSpacing = [_ds(sj), _ds(si)]
        ds.SliceThickness = _ds(slice_thickness)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = int(volume.shape[1])
        ds.Columns = int(volume.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 0
        ds.RescaleIntercept = _ds(intercept_units * slope)
        ds.RescaleSlope = _ds(slope)
        ds.RescaleType = "HU"
        ds.PixelData = np.ascontiguousarray(stored[:, :, k].T).tobytes()
        out.append(ds)
    return out


def write_datasets(datasets: Sequence[Dataset], folder: Path, stem: str = "") -> list[Path]:
    """Save datasets as DICOM Part 10 files <stem><nnnn>.dcm in a folder."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for index, ds in enumerate(datasets, start=1):
        path = folder / f"{stem}{index:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def segmentation(
    ct: Sequence[Dataset],
    segments: Sequence[tuple[SegmentSpec, np.ndarray]],
    *,
    manual: bool,
    algorithm_name: str,
    algorithm_version: str,
    series_uid: str,
    sop_uid: str,
    series_description: str = "maskloop segmentation",
) -> Dataset:
    """A BINARY DICOM SEG over the CT series: one segment per structure mask (data[i, j, k] like the volume)."""
    import highdicom as hd

    if not segments:
        raise InvalidInput("a DICOM SEG needs at least one structure")
    shape = segments[0][1].shape
    if len(ct) != shape[2]:
        raise InvalidInput(f"the series has {len(ct)} slices, the masks {shape[2]}")
    # Only the slab of slices holding any voxel becomes frames (memory: slab x structures bytes); the frames are
    # placed by explicit plane positions of their source slices.
    filled = np.zeros(shape[2], dtype=bool)
    for _, mask in segments:
        if mask.shape == shape:
            filled |= mask.any(axis=(0, 1))
    ks = np.flatnonzero(filled)
    k0, k1 = (int(ks[0]), int(ks[-1]) + 1) if ks.size else (0, 1)
    # (frames = slices k0..k1-1, rows = j, columns = i, segments)
    pixels = np.zeros((k1 - k0, shape[1], shape[0], len(segments)), dtype=np.uint8)
    descriptions = []
    algorithm = None
    if not manual:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=algorithm_name[:64] or "model",
            family=Code("123109", "DCM", "Artificial Intelligence"),
            version=algorithm_version[:64] or "1",
        )
    for number, (spec, mask) in enumerate(segments, start=1):
        if mask.shape != shape:
            raise InvalidInput(f"mask of {spec.name!r} has shape {list(mask.shape)}, expected {list(shape)}")
        pixels[..., number - 1] = np.transpose(mask[:, :, k0:k1], (2, 1, 0))
        red, green, blue = (int(spec.color[i : i + 2], 16) for i in (1, 3, 5))
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=spec.name[:64],
                segmented_property_category=MORPHOLOGICALLY_ALTERED if spec.lesion else ANATOMICAL_STRUCTURE,
                segmented_property_type=Code(spec.name[:16], PRIVATE_SCHEME, spec.name[:64]),
                algorithm_type=(
                    hd.seg.SegmentAlgorithmTypeValues.MANUAL if manual else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
                ),
                algorithm_identification=algorithm,
                tracking_uid=uid(series_uid, spec.name),
                tracking_id=spec.name[:64],
                display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
            )
        )
    seg = hd.seg.Segmentation(
        source_images=list(ct),
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_uid,
        series_number=2,
        sop_instance_uid=sop_uid,
        instance_number=1,
        manufacturer=SOFTWARE,
        manufacturer_model_name=SOFTWARE,
        software_versions=algorithm_version[:64] or "1",
        device_serial_number="0",
        series_description=series_description[:64],
        omit_empty_frames=bool(ks.size),
        plane_positions=[
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, ct[k].ImagePositionPatient)
            for k in range(k0, k1)
        ],
    )
    return seg


def seg_to_bytes(seg: Dataset) -> bytes:
    """Encode a SEG as a DICOM Part 10 file."""
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def read_segments(data: bytes | Path, geometry: Geometry) -> dict[str, np.ndarray]:
    """Decode a SEG back onto a scan grid: {segment label: bool mask data[i, j, k]}.

    Frames are placed by their PlanePositionSequence positions and the plane orientation (LPS -> RAS -> voxel
    indices through the inverse affine), not by their order, so any frame order or omitted frames are handled.
    """
    ds = dcmread(BytesIO(data) if isinstance(data, bytes) else data)
    if getattr(ds, "SegmentationType", "") != "BINARY":
        raise InvalidInput(f"expected a BINARY segmentation, got {getattr(ds, 'SegmentationType', None)!r}")
    labels = {int(item.SegmentNumber): str(item.SegmentLabel) for item in ds.SegmentSequence}
    shape = geometry.shape
    out = {label: np.zeros(shape, dtype=bool) for label in labels.values()}
    n_frames = int(getattr(ds, "NumberOfFrames", 0) or 0)
    if n_frames == 0:
        return out
    frames = np.asarray(ds.pixel_array).reshape(n_frames, int(ds.Rows), int(ds.Columns)).astype(bool)
    shared = ds.SharedFunctionalGroupsSequence[0]
    first = ds.PerFrameFunctionalGroupsSequence[0]
    orientation = np.array(_group(first, shared, "PlaneOrientationSequence").ImageOrientationPatient, dtype=float)
    spacing = np.array(_group(first, shared, "PixelMeasuresSequence").PixelSpacing, dtype=np.float64)
    inverse = np.linalg.inv(geometry.affine)
    to_voxel = inverse[:3, :3] @ _LPS  # LPS displacement -> voxel displacement
    step_col = to_voxel @ (orientation[:3] * spacing[1])  # one column to the right
    step_row = to_voxel @ (orientation[3:] * spacing[0])  # one row down
    for frame_index, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        # A macro shared by every frame (one segment, or one frame) sits in the shared functional groups.
        identification = _group(item, shared, "SegmentIdentificationSequence")
        number = int(identification.ReferencedSegmentNumber)
        position = np.array(_group(item, shared, "PlanePositionSequence").ImagePositionPatient, dtype=np.float64)
        origin = inverse[:3, :3] @ (_LPS @ position) + inverse[:3, 3]
        _place(out[labels[number]], frames[frame_index], origin, step_row, step_col)
    return out


def _group(frame: Dataset, shared: Dataset, keyword: str) -> Dataset:
    """A functional group macro of a frame, from its per-frame item or else the shared functional groups."""
    for source in (frame, shared):
        if keyword in source:
            return source[keyword].value[0]
    raise InvalidInput(f"the SEG frames lack {keyword}")


def _place(
    target: np.ndarray, frame: np.ndarray, origin: np.ndarray, step_row: np.ndarray, step_col: np.ndarray
) -> None:
    """Write one frame into a voxel grid whose axes it runs along (each step must be +-1 along one axis)."""
    axes = []
    for step in (step_row, step_col):
        axis = int(np.argmax(np.abs(step)))
        if abs(abs(step[axis]) - 1) > 1e-3 or np.abs(np.delete(step, axis)).max() > 1e-3:
            raise InvalidInput("the SEG frames do not run along the scan's voxel axes")
        axes.append((axis, round(float(step[axis]))))
    start = np.rint(origin).astype(int)
    if np.abs(origin - start).max() > 1e-2:
        raise InvalidInput("a SEG frame does not lie on the scan's voxel grid")
    (row_axis, row_sign), (col_axis, col_sign) = axes
    index: list[object] = list(start)
    rows, cols = frame.shape
    index[row_axis] = np.arange(rows) * row_sign + start[row_axis]
    index[col_axis] = np.arange(cols) * col_sign + start[col_axis]
    arrays = [np.atleast_1d(np.asarray(v)) for v in index]
    if any(a.min() < 0 or a.max() >= n for a, n in zip(arrays, target.shape, strict=True)):
        raise InvalidInput("a SEG frame lies outside the scan's voxel grid")
    grid = np.ix_(*arrays)
    block = frame if row_axis < col_axis else frame.T
    target[grid] |= block.reshape(target[grid].shape)


def masks_by_name(segments: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Segments keyed by structure name, in the given order (absent names skipped)."""
    return {name: segments[name] for name in names if name in segments}
