"""The frames of a BINARY DICOM SEG built segment by segment, never as a dense (slices, rows, columns, segments) array.

highdicom's constructor wants one array holding every segment on every plane (a 28-structure 512x512x256 version:
about 1.9 GB, and highdicom scans it several times: tens of seconds). `dicom_seg.segmentation` instead lets highdicom
build a one-plane SEG (all the metadata: segments, shared functional groups, dimension index, references) and then
`replace_frames` writes the real frames exactly as highdicom lays them out:

* one frame per (segment, slice) that holds voxels of that segment (empty frames omitted), segments in order and,
  within a segment, planes in highdicom's order (ascending distance along its normal vector);
* DimensionIndexValues = (segment number, 1-based index of the plane among all planes that hold any frame);
* per-frame PlanePosition = the source slice's ImagePositionPatient, DerivationImage = the source slice (spatial
  locations preserved), SegmentIdentification = the segment number;
* PixelData = the frames' bits packed LSB first as one continuous stream (PS3.5 8.1.1), padded to an even length;
* SegmentsOverlap = YES or NO from the masks; SpacingBetweenSlices from the slab of slices, as highdicom gives it;
  a single segment is identified in the shared functional groups (DimensionOrganizationType 3D when regular).

Memory: one slice of one mask at a time, plus the packed bits (1/8 byte per voxel of the frames written).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import format_number_as_ds

_GROUP = 8  # frames packed together: 8 frames always hold a whole number of bytes


def occupied_slices(mask: np.ndarray) -> np.ndarray:
    """The slice indices k of a mask data[i, j, k] that hold any voxel."""
    return np.flatnonzero(np.asarray(mask).any(axis=(0, 1)))


def _frame_bits(mask: np.ndarray, k: int) -> np.ndarray:
    """Slice k as a frame's pixels in row-major order (rows = j, columns = i), flattened, as bool."""
    return np.asarray(mask[:, :, k], dtype=bool).ravel(order="F")


def _plane_order(ct: Sequence[Dataset], planes: np.ndarray) -> dict[int, int]:
    """1-based dimension index of each plane k: its rank by distance along highdicom's normal vector."""
    from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_normal_vector

    orientation = [float(v) for v in ct[int(planes[0])].ImageOrientationPatient]
    normal = get_normal_vector(orientation, index_convention=VOLUME_INDEX_CONVENTION)
    positions = np.array([[float(v) for v in ct[int(k)].ImagePositionPatient] for k in planes])
    order = np.argsort(positions @ normal, kind="stable")
    return {int(planes[index]): rank for rank, index in enumerate(order, start=1)}


def _spacing(ct: Sequence[Dataset], first: int, last: int) -> float | None:
    """The regular spacing of slices first..last (None: one slice or irregular), as highdicom computes it."""
    from highdicom.spatial import get_volume_positions

    if last <= first:
        return None
    positions = [[float(v) for v in ct[k].ImagePositionPatient] for k in range(first, last + 1)]
    orientation = [float(v) for v in ct[first].ImageOrientationPatient]
    spacing, _ = get_volume_positions(image_positions=positions, image_orientation=orientation)
    return float(spacing) if spacing is not None and spacing > 0 else None


def _frame_item(template: Dataset, source: Dataset, segment: int, plane: int, *, identify: bool) -> Dataset:
    """One Per-Frame Functional Groups item, shaped as highdicom's (`template`: the one-plane SEG's first item)."""
    content = Dataset()
    content.add(DataElement(0x00209157, "UL", [segment, plane]))  # DimensionIndexValues
    position = Dataset()
    position.add(DataElement(0x00200032, "DS", source.ImagePositionPatient))  # ImagePositionPatient
    reference = Dataset()
    reference.add(DataElement(0x00081150, "UI", source.SOPClassUID))  # ReferencedSOPClassUID
    reference.add(DataElement(0x00081155, "UI", source.SOPInstanceUID))  # ReferencedSOPInstanceUID
    derived = template.DerivationImageSequence[0]
    purpose = derived.SourceImageSequence[0].PurposeOfReferenceCodeSequence
    reference.add(DataElement(0x0040A170, "SQ", purpose))  # PurposeOfReferenceCodeSequence
    reference.add(DataElement(0x0028135A, "CS", "YES"))  # SpatialLocationsPreserved
    derivation = Dataset()
    derivation.add(DataElement(0x00089215, "SQ", derived.DerivationCodeSequence))  # DerivationCodeSequence
    derivation.add(DataElement(0x00082112, "SQ", [reference]))  # SourceImageSequence
    item = Dataset()
    item.add(DataElement(0x00209111, "SQ", [content]))  # FrameContentSequence
    item.add(DataElement(0x00209113, "SQ", [position]))  # PlanePositionSequence
    item.add(DataElement(0x00089124, "SQ", [derivation]))  # DerivationImageSequence
    if identify:
        identification = Dataset()
        identification.add(DataElement(0x0062000B, "US", segment))  # ReferencedSegmentNumber
        item.add(DataElement(0x0062000A, "SQ", [identification]))  # SegmentIdentificationSequence
    return item


def replace_frames(
    seg: Dataset, ct: Sequence[Dataset], masks: Sequence[np.ndarray], occupied: Sequence[np.ndarray]
) -> None:
    """Give a one-plane SEG built by highdicom the frames of `masks` (segment n = masks[n - 1]) on slices `ct`,
    each mask's frames on its `occupied` slices (see the module's layout); at least one slice must hold voxels."""
    planes = np.unique(np.concatenate([np.asarray(o, dtype=np.int64) for o in occupied]))
    rank = _plane_order(ct, planes)
    template = seg.PerFrameFunctionalGroupsSequence[0]
    # highdicom names a single segment once, in the shared functional groups, and then calls a regularly spaced
    # stack of planes a 3D dimension organization.
    single = len(masks) == 1
    items: list[Dataset] = []
    packed: list[bytes] = []
    pending: list[np.ndarray] = []
    covered: dict[int, np.ndarray] = {}  # the union of segments seen so far on a slice (overlap check)
    overlap = False
    for number, (mask, slices) in enumerate(zip(masks, occupied, strict=True), start=1):
        for k in sorted((int(k) for k in slices), key=rank.__getitem__):
            bits = _frame_bits(mask, k)
            if not overlap:
                seen = covered.get(k)
                if seen is None:
                    covered[k] = bits.copy()
                elif bool(np.any(seen & bits)):
                    overlap, covered = True, {}
                else:
                    seen |= bits
            items.append(_frame_item(template, ct[k], number, rank[k], identify=not single))
            pending.append(bits)
            if len(pending) == _GROUP:
                packed.append(np.packbits(np.concatenate(pending), bitorder="little").tobytes())
                pending = []
    if pending:
        packed.append(np.packbits(np.concatenate(pending), bitorder="little").tobytes())
    data = b"".join(packed)
    seg.PerFrameFunctionalGroupsSequence = DicomSequence(items)
    seg.NumberOfFrames = len(items)
    seg["PixelData"].value = data + b"\x00" if len(data) % 2 else data  # keeps highdicom's element (OB)
    seg.SegmentsOverlap = "YES" if overlap else "NO"
    measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    spacing = _spacing(ct, int(planes[0]), int(planes[-1]))
    if spacing is not None:
        measures.SpacingBetweenSlices = format_number_as_ds(spacing)
    elif "SpacingBetweenSlices" in measures:
        del measures.SpacingBetweenSlices
    if single and _regular(ct, sorted(rank, key=rank.__getitem__)):
        seg.DimensionOrganizationType = "3D"


def _regular(ct: Sequence[Dataset], planes: Sequence[int]) -> bool:
    """Whether planes (in frame order) are at least two, regularly spaced along their normal (highdicom's test)."""
    from highdicom.spatial import get_volume_positions

    if len(planes) < 2:
        return False
    positions = [[float(v) for v in ct[k].ImagePositionPatient] for k in planes]
    orientation = [float(v) for v in ct[planes[0]].ImageOrientationPatient]
    spacing, _ = get_volume_positions(image_positions=positions, image_orientation=orientation, sort=False)
    return spacing is not None and spacing > 0.0
