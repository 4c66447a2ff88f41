"""The frames of a BINARY DICOM SEG built segment by segment, never as a dense (slices, rows, columns, segments) array.

highdicom's constructor wants one array holding every segment on every plane (a 28-structure 512x512x256 version:
about 1.9 GB, and highdicom scans it several times: tens of seconds). `dicom_seg.segmentation` instead packs each
segment's frames with a `FrameWriter` (one mask, or only the box holding its voxels, at a time), lets highdicom
build a one-plane SEG (all the metadata: segments, shared functional groups, dimension index, references) and then
`FrameWriter.write_into` gives it the real frames exactly as highdicom lays them out:

* one frame per (segment, slice) that holds voxels of that segment (empty frames omitted), segments in order and,
  within a segment, planes in highdicom's order (ascending distance along its normal vector);
* DimensionIndexValues = (segment number, 1-based index of the plane among all planes that hold any frame);
* per-frame PlanePosition = the source slice's ImagePositionPatient, DerivationImage = the source slice (spatial
  locations preserved), SegmentIdentification = the segment number;
* PixelData = the frames' bits packed LSB first as one continuous stream (PS3.5 8.1.1), padded to an even length;
* SegmentsOverlap = YES or NO from the masks; SpacingBetweenSlices from the slab of slices, as highdicom gives it;
  a single segment is identified in the shared functional groups (DimensionOrganizationType 3D when regular).

Speed. A frame's bits are packed with numpy (whole batches of frames per call) and the overlap test runs on the
packed bytes. The Per-Frame Functional Groups Sequence (thousands of items of five nested sequences) is not built
as pydicom datasets: its pieces are encoded once per slice and once per segment with pydicom's own writer, and the
sequence is stored as the concatenation of those encodings (a raw element, parsed by pydicom on first access, and
written verbatim: the SEG's original encoding is set to the explicit VR little endian its bytes use).
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import correct_ambiguous_vr, write_data_element
from pydicom.tag import Tag
from pydicom.valuerep import format_number_as_ds

from backend.core.errors import InvalidInput

Shape3 = tuple[int, int, int]
_BATCH = 64  # frames packed per numpy call: bounds the unpacked frames in memory (64 x rows x columns bytes)
_PER_FRAME = Tag(0x52009230)  # PerFrameFunctionalGroupsSequence
_ITEM = struct.pack("<HHI", 0xFFFE, 0xE000, 0xFFFFFFFF)  # item of undefined length
_ITEM_END = struct.pack("<HHI", 0xFFFE, 0xE00D, 0)  # item delimitation item


@dataclass(frozen=True)
class MaskBox:
    """A mask of a grid `shape` given by the box that holds its voxels: voxel (i, j, k) is
    box[i - i0, j - j0, k - k0] inside the box at `origin` (i0, j0, k0), False outside."""

    shape: Shape3
    origin: Shape3
    box: np.ndarray

    @classmethod
    def whole(cls, mask: np.ndarray) -> MaskBox:
        """A whole mask data[i, j, k] as a box at the origin."""
        shape = tuple(int(n) for n in mask.shape)
        if len(shape) != 3:
            raise InvalidInput(f"a mask must be 3D, got shape {list(shape)}")
        return cls((shape[0], shape[1], shape[2]), (0, 0, 0), mask)


MaskSource = np.ndarray | MaskBox | Callable[[], np.ndarray | MaskBox]


def load_mask(source: MaskSource) -> MaskBox:
    """A segment's mask as a box (a callable source is called now: masks can be read one at a time)."""
    value = source() if callable(source) else source
    return value if isinstance(value, MaskBox) else MaskBox.whole(np.asarray(value))


def _encoded(element: DataElement, encodings: str | list[str]) -> bytes:
    """One data element as pydicom writes it in explicit VR little endian."""
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_data_element(fp, element, encodings)
    return fp.getvalue()


def _normal_distances(ct: Sequence[Dataset]) -> np.ndarray:
    """Each slice's distance along highdicom's normal vector of the series' orientation (its frame order)."""
    from highdicom.spatial import VOLUME_INDEX_CONVENTION, get_normal_vector

    orientation = [float(v) for v in ct[0].ImageOrientationPatient]
    normal = get_normal_vector(orientation, index_convention=VOLUME_INDEX_CONVENTION)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in ct])
    return np.asarray(positions @ normal, dtype=np.float64)


class FrameWriter:
    """Packs the frames of a SEG's segments one segment at a time, then writes them into highdicom's SEG."""

    def __init__(self, ct: Sequence[Dataset], shape: Shape3) -> None:
        self.ct = ct
        self.shape = shape
        self._distance = _normal_distances(ct)
        self._frame_bytes = -(-shape[0] * shape[1] // 8)
        self._aligned = shape[0] * shape[1] % 8 == 0  # frames end on byte boundaries: each frame packs alone
        self._chunks: list[bytes] = []
        self._carry = np.zeros(0, dtype=bool)  # bits of an unaligned stream not yet making a whole byte
        self._frames: list[tuple[int, int]] = []  # (segment number, slice k), in frame order
        self._union: np.ndarray | None = None  # per slice, the packed union of the segments so far
        self.overlap = False
        self.segments = 0

    @property
    def planes(self) -> np.ndarray:
        """The slices k holding any frame, ascending."""
        return np.unique(np.array([k for _, k in self._frames], dtype=np.int64))

    def add(self, mask: MaskBox) -> None:
        """Pack the next segment's frames (segment numbers follow the order of the calls)."""
        self.segments += 1
        if mask.shape != self.shape:
            raise InvalidInput(f"a mask has shape {list(mask.shape)}, the series' grid is {list(self.shape)}")
        i0, j0, k0 = mask.origin
        # (slices, rows, columns) of the box: rows are j, columns i. A view; contiguous for a Fortran-ordered box.
        planes = np.asarray(mask.box, dtype=bool).transpose(2, 1, 0)
        occupied = np.flatnonzero(planes.any(axis=(1, 2)))
        if occupied.size == 0:
            return
        # highdicom's order: by distance along the normal, ties by slice index.
        occupied = occupied[np.argsort(self._distance[occupied + k0], kind="stable")]
        rows, columns = slice(j0, j0 + planes.shape[1]), slice(i0, i0 + planes.shape[2])
        for start in range(0, occupied.size, _BATCH):
            chosen = occupied[start : start + _BATCH]
            frames = np.zeros((chosen.size, self.shape[1], self.shape[0]), dtype=bool)
            frames[:, rows, columns] = planes[chosen]
            self._pack(frames, chosen + k0)
        self._frames.extend((self.segments, int(k)) for k in occupied + k0)

    def _pack(self, frames: np.ndarray, slices: np.ndarray) -> None:
        packed = np.packbits(frames.reshape(frames.shape[0], -1), axis=1, bitorder="little")
        if not self.overlap:
            if self._union is None:
                self._union = np.zeros((self.shape[2], self._frame_bytes), dtype=np.uint8)
            seen = self._union[slices]
            if bool(np.any(seen & packed)):
                self.overlap, self._union = True, None
            else:
                self._union[slices] = seen | packed
        if self._aligned:
            self._chunks.append(packed.tobytes())
            return
        # Frames that do not end on a byte boundary run on into the next frame's byte (one continuous stream).
        bits = np.concatenate([self._carry, frames.ravel()])
        whole = bits.size - bits.size % 8
        self._chunks.append(np.packbits(bits[:whole], bitorder="little").tobytes())
        self._carry = bits[whole:].copy()

    def write_into(self, seg: Dataset) -> None:
        """Give a one-plane SEG built by highdicom the packed frames (at least one frame must have been packed)."""
        if not self._frames:
            raise InvalidInput("no segment holds any voxel: the SEG has no frame")
        if self._carry.size:
            self._chunks.append(np.packbits(self._carry, bitorder="little").tobytes())
            self._carry = np.zeros(0, dtype=bool)
        planes = self.planes
        order = np.argsort(self._distance[planes], kind="stable")
        rank = {int(planes[index]): position for position, index in enumerate(order, start=1)}
        single = self.segments == 1
        raw = self._per_frame_items(seg, rank, identify=not single)
        # The elements whose VR depends on others (Pixel Data: OB or OW) resolved now, as pydicom's writer would,
        # since the SEG is then written as it stands (no re-encoding of the raw items: explicit VR little endian).
        correct_ambiguous_vr(seg, True)
        seg[_PER_FRAME] = RawDataElement(_PER_FRAME, "SQ", 0xFFFFFFFF, raw, 0, False, True)
        seg.set_original_encoding(False, True, _encodings(seg))
        seg.NumberOfFrames = len(self._frames)
        data = b"".join(self._chunks)
        self._chunks = []
        seg["PixelData"].value = data + b"\x00" if len(data) % 2 else data  # keeps highdicom's element (OB)
        seg.SegmentsOverlap = "YES" if self.overlap else "NO"
        measures = seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
        spacing = _spacing(self.ct, int(planes[0]), int(planes[-1]))
        if spacing is not None:
            measures.SpacingBetweenSlices = format_number_as_ds(spacing)
        elif "SpacingBetweenSlices" in measures:
            del measures.SpacingBetweenSlices
        if single and _regular(self.ct, sorted(rank, key=rank.__getitem__)):
            seg.DimensionOrganizationType = "3D"

    def _per_frame_items(self, seg: Dataset, rank: dict[int, int], *, identify: bool) -> bytes:
        """The encoded items of the Per-Frame Functional Groups Sequence, shaped as highdicom's (whose first item,
        on the one-plane SEG, gives the derivation and purpose codes).

        Each nested sequence is encoded once by pydicom around one slice's (or segment's, or frame's) values; the
        other slices' items are that encoding with the values' own elements swapped (sequences and items have
        undefined lengths, so nothing around them changes)."""
        encodings = _encodings(seg)
        template = seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0]
        first = self.ct[next(iter(rank))]

        def reference(source: Dataset) -> bytes:  # ReferencedSOPClassUID, ReferencedSOPInstanceUID
            return _encoded(DataElement(0x00081150, "UI", source.SOPClassUID), encodings) + _encoded(
                DataElement(0x00081155, "UI", source.SOPInstanceUID), encodings
            )

        def position(source: Dataset) -> bytes:  # ImagePositionPatient
            return _encoded(DataElement(0x00200032, "DS", source.ImagePositionPatient), encodings)

        derivation = _around(_encoded(_derivation(template, first), encodings), reference(first))
        plane = _around(_encoded(_position(first), encodings), position(first))
        derivations = {k: derivation[0] + reference(self.ct[k]) + derivation[1] for k in rank}
        positions = {k: plane[0] + position(self.ct[k]) + plane[1] for k in rank}
        identities = {
            n: _encoded(_identification(n), encodings) if identify else b"" for n in range(1, self.segments + 1)
        }
        marker = struct.pack("<2I", 0x01020304, 0x05060708)
        head, tail = _around(_encoded(_content(0x01020304, 0x05060708), encodings), marker)
        parts: list[bytes] = []
        for number, k in self._frames:
            # Elements of an item in ascending tag order: (0008,9124) (0020,9111) (0020,9113) (0062,000A).
            content = head + struct.pack("<2I", number, rank[k]) + tail
            parts += (_ITEM, derivations[k], content, positions[k], identities[number], _ITEM_END)
        return b"".join(parts)


def _around(outer: bytes, inner: bytes) -> tuple[bytes, bytes]:
    """The bytes of an encoding before and after the encoding of its one varying part."""
    at = outer.index(inner)
    return outer[:at], outer[at + len(inner) :]


def _encodings(seg: Dataset) -> str | list[str]:
    from pydicom.charset import convert_encodings, default_encoding

    value = seg.get("SpecificCharacterSet")
    return convert_encodings(value) if value else default_encoding


def _sequence(tag: int, item: Dataset) -> DataElement:
    """A sequence of one item, both of undefined length (delimited): their encoding does not depend on the
    length of the values inside, which `_per_frame_items` swaps."""
    item.is_undefined_length_sequence_item = True
    element = DataElement(tag, "SQ", [item])
    element.is_undefined_length = True
    return element


def _derivation(template: Dataset, source: Dataset) -> DataElement:
    """DerivationImageSequence: the source slice, spatial locations preserved, highdicom's codes."""
    reference = Dataset()
    reference.add(DataElement(0x00081150, "UI", source.SOPClassUID))  # ReferencedSOPClassUID
    reference.add(DataElement(0x00081155, "UI", source.SOPInstanceUID))  # ReferencedSOPInstanceUID
    purpose = template.SourceImageSequence[0].PurposeOfReferenceCodeSequence
    reference.add(DataElement(0x0040A170, "SQ", purpose))  # PurposeOfReferenceCodeSequence
    reference.add(DataElement(0x0028135A, "CS", "YES"))  # SpatialLocationsPreserved
    derivation = Dataset()
    derivation.add(DataElement(0x00089215, "SQ", template.DerivationCodeSequence))  # DerivationCodeSequence
    derivation.add(_sequence(0x00082112, reference))  # SourceImageSequence
    return _sequence(0x00089124, derivation)


def _position(source: Dataset) -> DataElement:
    """PlanePositionSequence: the source slice's ImagePositionPatient."""
    position = Dataset()
    position.add(DataElement(0x00200032, "DS", source.ImagePositionPatient))
    return _sequence(0x00209113, position)


def _identification(number: int) -> DataElement:
    """SegmentIdentificationSequence: the frame's segment number."""
    identification = Dataset()
    identification.add(DataElement(0x0062000B, "US", number))  # ReferencedSegmentNumber
    return _sequence(0x0062000A, identification)


def _content(segment: int, plane: int) -> DataElement:
    """FrameContentSequence: the frame's DimensionIndexValues (segment number, plane index)."""
    content = Dataset()
    content.add(DataElement(0x00209157, "UL", [segment, plane]))
    return _sequence(0x00209111, content)


def _spacing(ct: Sequence[Dataset], first: int, last: int) -> float | None:
    """The regular spacing of slices first..last (None: one slice or irregular), as highdicom computes it."""
    from highdicom.spatial import get_volume_positions

    if last <= first:
        return None
    positions = [[float(v) for v in ct[k].ImagePositionPatient] for k in range(first, last + 1)]
    orientation = [float(v) for v in ct[first].ImageOrientationPatient]
    spacing, _ = get_volume_positions(image_positions=positions, image_orientation=orientation)
    return float(spacing) if spacing is not None and spacing > 0 else None


def _regular(ct: Sequence[Dataset], planes: Sequence[int]) -> bool:
    """Whether planes (in frame order) are at least two, regularly spaced along their normal (highdicom's test)."""
    from highdicom.spatial import get_volume_positions

    if len(planes) < 2:
        return False
    positions = [[float(v) for v in ct[k].ImagePositionPatient] for k in planes]
    orientation = [float(v) for v in ct[planes[0]].ImageOrientationPatient]
    spacing, _ = get_volume_positions(image_positions=positions, image_orientation=orientation, sort=False)
    return spacing is not None and spacing > 0.0
