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

The series passes dicom3tools' `dciodvfy` without errors: ImageType DERIVED\\SECONDARY\\AXIAL (value 3 is
required for CT), and the type 2C Laterality and PatientPosition present and empty (unknown).

SEG. BINARY, one segment per structure, overlapping structures stay separate segments (never flattened); each
segment has frames only on the slices holding its voxels, written segment by segment in highdicom's layout
(`backend.imaging.dicom_seg_frames`: no dense slices x structures array; memory about one mask, or the box
holding its voxels, at a time plus the packed bits). Segment labels are the structure names (a name past DICOM's
64 characters is kept whole in the Segment Description) and colours come from the label schema (as CIELab); the
segment algorithm type is MANUAL for human-made versions and AUTOMATIC for model versions. Segments are coded with
standard codes (`backend.imaging.dicom_codes`: SNOMED CT category, type, laterality modifier and a lesion's
anatomic region), structures without one with the documented private scheme 99MASKLOOP, which the SEG then
identifies in its Coding Scheme Identification Sequence. Reading a SEG back: `backend.imaging.dicom_seg_read`
(`read_segments`).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sr.coding import Code
from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

from backend.core.errors import InvalidInput
from backend.imaging import dicom_codes, dicom_seg_frames
from backend.imaging.dicom_codes import PRIVATE_SCHEME, StructureCode
from backend.imaging.dicom_seg_frames import MaskBox, MaskSource
from backend.imaging.dicom_seg_read import ParsedSeg, SegmentInfo, masks_by_name, parse_seg, read_segments

if TYPE_CHECKING:
    from highdicom.content import AlgorithmIdentificationSequence
    from highdicom.seg import SegmentDescription

__all__ = [
    "PRIVATE_SCHEME",
    "SOFTWARE",
    "MaskBox",
    "ParsedSeg",
    "SegmentInfo",
    "SegmentSpec",
    "SeriesIds",
    "ct_series",
    "load_standard_tables",
    "masks_by_name",
    "parse_seg",
    "read_segments",
    "seg_to_bytes",
    "segmentation",
    "uid",
    "write_datasets",
]

_LPS = np.diag([-1.0, -1.0, 1.0])
SOFTWARE = "maskloop"
_MAX_LABEL = 64  # DICOM Segment Label (LO)


def uid(*parts: object) -> str:
    """A deterministic DICOM UID (2.25.<hash>) derived from the given parts, so reruns write identical files."""
    # pydicom's generate_uid ignores entropy_srcs when prefix is None (a random UUID): hash the parts ourselves.
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


@dataclass(frozen=True)
class SegmentSpec:
    """One structure as a SEG segment: name, RGB colour '#rrggbb', whether it is a lesion and its code.

    `code` is the schema's code (its JSON object, or a StructureCode); None codes the structure from the
    standard table by name, else with the private scheme (`dicom_codes.structure_code`).
    """

    name: str
    color: str
    lesion: bool = False
    code: Mapping[str, Any] | StructureCode | None = None

    def structure_code(self) -> StructureCode:
        """The code this segment is written with."""
        if isinstance(self.code, StructureCode):
            return self.code
        return dicom_codes.structure_code(self.name, self.code, lesion=self.lesion)


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
        # Value 3 is required for CT Image Storage (AXIAL: a cross-sectional slice, whatever its plane).
        ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
        # Type 2C: present, empty (not known for a volume that came without DICOM headers).
        ds.Laterality = ""
        ds.PatientPosition = ""
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


def load_standard_tables() -> None:
    """Read highdicom's tables of the DICOM standard (IODs, modules, attributes) now rather than inside the first SEG
    a process builds: half a second or more of JSON parsing, which a job can overlap with waiting on a PACS."""
    try:  # cached per process; no public entry point loads them, so a highdicom that moved them only costs time
        from highdicom import _standard_utils as standard

        standard.get_sop_class_iod_map()
        standard.get_iod_module_map()
        standard.get_module_attribute_map()
    except (ImportError, AttributeError):
        return


def segmentation(
    ct: Sequence[Dataset],
    segments: Sequence[tuple[SegmentSpec, MaskSource]],
    *,
    manual: bool,
    algorithm_name: str,
    algorithm_version: str,
    series_uid: str,
    sop_uid: str,
    series_description: str = "maskloop segmentation",
) -> Dataset:
    """A BINARY DICOM SEG over the CT series: one standard-coded segment per structure mask.

    `ct` holds the source slices in the volume's slice order k (as `ct_series` writes them, or an original series
    sorted along its normal as `backend.imaging.dicom.load_dicom_series` stacks it); masks are data[i, j, k]
    like the volume (i along a row, j down a column): whole arrays, `MaskBox`es (the box holding the voxels) or
    callables returning either, called one at a time so that only one mask is held. Segment numbers follow the
    order of `segments`.
    """
    import highdicom as hd
    from highdicom.coding_schemes import CodingSchemeIdentificationItem

    if not segments:
        raise InvalidInput("a DICOM SEG needs at least one structure")
    if not ct:
        raise InvalidInput("a DICOM SEG needs a source series of at least one slice")
    shape = (int(ct[0].Columns), int(ct[0].Rows), len(ct))
    # No dense (slices, rows, columns, segments) array: the frames are packed segment by segment, highdicom builds
    # a one-plane SEG (the metadata) and the writer gives it the frames (`backend.imaging.dicom_seg_frames`).
    frames = dicom_seg_frames.FrameWriter(ct, shape)
    for spec, source in segments:
        mask = dicom_seg_frames.load_mask(source)
        if mask.shape[2] != len(ct):
            raise InvalidInput(f"the series has {len(ct)} slices, the masks {mask.shape[2]}")
        if mask.shape != shape:
            raise InvalidInput(f"mask of {spec.name!r} has shape {list(mask.shape)}, expected {list(shape)}")
        frames.add(mask)
        del mask
    planes = frames.planes
    filled = planes.size > 0
    plane = int(planes[0]) if filled else 0
    template = np.zeros((1, shape[1], shape[0], len(segments)), dtype=np.uint8)
    if filled:
        template[0, 0, 0, :] = 1  # every segment has a frame, so the template has every segment's layout
    descriptions = []
    algorithm = None
    if not manual:
        algorithm = hd.AlgorithmIdentificationSequence(
            name=algorithm_name[:64] or "model",
            family=Code("123109", "DCM", "Artificial Intelligence"),
            version=algorithm_version[:64] or "1",
        )
    private = False
    for number, (spec, _) in enumerate(segments, start=1):
        code = spec.structure_code()
        private = private or PRIVATE_SCHEME in {c.scheme for c in (code.category, code.type)}
        tracking = uid(series_uid, spec.name)
        descriptions.append(_description(hd, number, spec, code, manual=manual, algorithm=algorithm, tracking=tracking))
    seg = hd.seg.Segmentation(
        source_images=list(ct),
        pixel_array=template,
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
        omit_empty_frames=False,
        plane_positions=[hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, ct[plane].ImagePositionPatient)],
        coding_schemes=(
            [
                CodingSchemeIdentificationItem(
                    designator=PRIVATE_SCHEME,
                    name=dicom_codes.PRIVATE_SCHEME_NAME,
                    responsible_organization=dicom_codes.PRIVATE_SCHEME_ORGANIZATION,
                )
            ]
            if private
            else None
        ),
    )
    if filled:
        frames.write_into(seg)
    return seg


def _description(
    hd: ModuleType,
    number: int,
    spec: SegmentSpec,
    code: StructureCode,
    *,
    manual: bool,
    algorithm: AlgorithmIdentificationSequence | None,
    tracking: str,
) -> SegmentDescription:
    """One Segment Sequence item: label, codes (with laterality modifier and region), colour, tracking ids."""
    red, green, blue = (int(spec.color[i : i + 2], 16) for i in (1, 3, 5))
    description: SegmentDescription = hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=spec.name[:_MAX_LABEL],
        segmented_property_category=code.category.to_code(),
        segmented_property_type=code.type.to_code(),
        algorithm_type=(
            hd.seg.SegmentAlgorithmTypeValues.MANUAL if manual else hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
        ),
        algorithm_identification=algorithm,
        tracking_uid=tracking,
        tracking_id=spec.name[:_MAX_LABEL],
        anatomic_regions=[code.region.to_code()] if code.region is not None else None,
        display_color=hd.color.CIELabColor.from_rgb(red, green, blue),
    )
    if code.modifier is not None:
        # Laterality: nested in the property type item (PS3.3 Segment Description macro, (0062,0011)).
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(code.modifier.value, code.modifier.scheme, code.modifier.meaning)
        ]
    if len(spec.name) > _MAX_LABEL:
        description.SegmentDescription = spec.name
    return description


def seg_to_bytes(seg: Dataset) -> bytes:
    """Encode a SEG as a DICOM Part 10 file."""
    buffer = BytesIO()
    seg.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()
