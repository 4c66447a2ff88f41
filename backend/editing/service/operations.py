"""One editor operation: check and decode the client's input boxes, pick the work region, run the operation on
it and describe the change of the target (new voxels on the changed box, voxels added and removed)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
from sqlalchemy.orm import Session

from backend.core import decode_limits
from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput, PayloadTooLarge
from backend.editing.schemas import (
    AnyOperation,
    FillHolesRequest,
    InterpolateRequest,
    IslandsRequest,
    LogicalRequest,
    MarginRequest,
    OperationInput,
    ScissorsRequest,
    SmoothRequest,
    StatisticsRequest,
)
from backend.editing.service import interpolation, islands, logical, morphology, scissors, statistics
from backend.editing.service.boxes import Box, Change, Region, around, change, crop, is_empty, tight, voxel_pad
from backend.imaging import chunks
from backend.models import Scan
from backend.projects import service as projects

Shape3 = tuple[int, int, int]
Spacing = tuple[float, float, float]


@dataclass(frozen=True)
class Outcome:
    """What an operation answers: the target's change (None for statistics), a summary line, statistics rows."""

    structure: str
    change: Change | None
    summary: str
    stats: list[tuple[str, statistics.Measures]] | None = None


@dataclass(frozen=True)
class Work:
    """What an operation runs on: the scan's geometry, the decoded inputs by structure name (each a box trimmed to
    its non-zero voxels), the size limit."""

    shape: Shape3
    spacing: Spacing
    voxel_volume_mm3: float
    boxes: dict[str, Box]
    max_voxels: int

    def box(self, name: str) -> Box:
        """The input box of a structure the operation needs; 422 naming it when it was not sent."""
        if name not in self.boxes:
            raise InvalidInput(
                f"this operation reads structure {name!r}: send its current mask in `inputs`", structure=name
            )
        return self.boxes[name]

    def checked(self, region: Region) -> Region:
        """Refuse (413) a work region larger than the box limit (its result could not be saved as a patch)."""
        if region.voxels > self.max_voxels:
            raise PayloadTooLarge(
                f"the operation would work on a box of {list(region.size)} = {region.voxels:,} voxels; the limit "
                f"is {self.max_voxels:,}",
                size=list(region.size),
                limit_voxels=self.max_voxels,
            )
        return region


def _volume(shape: Shape3) -> Region:
    return Region((0, 0, 0), shape)


def _decode(item: OperationInput, parts: Mapping[str, bytes], shape: Shape3, max_voxels: int) -> Box:
    """One input box, checked against the volume and the box limit, decoded and trimmed to its non-zero box."""
    size = (item.size[0], item.size[1], item.size[2])
    if size == (0, 0, 0):
        return Box.empty()
    origin = (item.origin[0], item.origin[1], item.origin[2])
    chunks.check_box(shape, origin, size)
    voxels = size[0] * size[1] * size[2]
    if voxels > max_voxels:
        raise PayloadTooLarge(f"input box of {list(size)} voxels exceeds the limit of {max_voxels:,}")
    assert item.part is not None  # the schema requires a part for a non-empty box
    data = parts.get(item.part)
    if data is None:
        raise InvalidInput(f"input part {item.part!r} (structure {item.structure!r}) is missing from the upload")
    return tight(Box(origin, chunks.decode_box(data, size, item.encoding)))


def _decode_inputs(
    inputs: list[OperationInput], name_of: Callable[[str], str], parts: Mapping[str, bytes], shape: Shape3, limit: int
) -> dict[str, Box]:
    """The decoded inputs by schema name (aliases resolved, unknown names and duplicates refused)."""
    declared = sum(i.size[0] * i.size[1] * i.size[2] for i in inputs)
    if declared > 2 * limit:
        raise PayloadTooLarge(f"the input boxes hold {declared:,} voxels together; the limit is {2 * limit:,}")
    names = [name_of(item.structure) for item in inputs]
    boxes: dict[str, Box] = {}
    for name, item in zip(names, inputs, strict=True):
        if name in boxes:
            raise InvalidInput(f"structure {name!r} is sent twice in `inputs`")
        boxes[name] = _decode(item, parts, shape, limit)
    return boxes


def _result(target: str, work: Work, region: Region, new: np.ndarray, what: str) -> Outcome:
    """The outcome of replacing the target's voxels on `region` by `new`."""
    done = change(crop(work.box(target), region), new, region)
    return Outcome(target, done, f"{what}: +{done.added:,} / -{done.removed:,} voxels")


def _unchanged(target: str, summary: str) -> Outcome:
    return Outcome(target, Change((0, 0, 0), np.zeros((0, 0, 0), dtype=bool), 0, 0), summary)


def _interpolate(target: str, request: InterpolateRequest, work: Work) -> Outcome:
    params = request.params
    for key in params.key_slices:
        if key >= work.shape[params.axis]:
            raise InvalidInput(
                f"key slice {key} lies outside the volume (axis {params.axis} has {work.shape[params.axis]} slices)"
            )
    if len(set(params.key_slices)) < 2:
        raise InvalidInput("interpolation needs at least two different key slices")
    box = work.box(target)
    if is_empty(box):
        return _unchanged(target, "nothing to interpolate: the structure is empty")
    region = Region(box.origin, box.size)
    new, gaps = interpolation.interpolate(
        box.mask,
        params.axis,
        params.key_slices,
        work.spacing,
        offset=box.origin[params.axis],
        replace=params.mode == "replace",
    )
    what = f"interpolated {len(gaps.filled)} gap(s)"
    if gaps.skipped_empty:
        what += f", skipped {len(gaps.skipped_empty)} with an empty key slice"
    return _result(target, work, region, new, what)


def _margin(target: str, request: MarginRequest, work: Work) -> Outcome:
    mm = request.params.mm
    box = work.box(target)
    region = around([box], voxel_pad(mm, work.spacing), work.shape)
    if region is None or mm == 0:
        return _unchanged(target, "nothing to do: the structure is empty" if region is None else "a 0 mm margin")
    region = work.checked(region)
    new = morphology.margin(crop(box, region), work.spacing, mm)
    return _result(target, work, region, new, f"{'grew' if mm > 0 else 'shrank'} by {abs(mm):g} mm")


def _islands(target: str, request: IslandsRequest, work: Work) -> Outcome:
    params = request.params
    box = work.box(target)
    if params.voxel is not None and any(not 0 <= params.voxel[a] < work.shape[a] for a in range(3)):
        raise InvalidInput(f"voxel {params.voxel} lies outside the volume of shape {list(work.shape)}")
    if is_empty(box):
        if params.mode == "keep_clicked":
            raise InvalidInput("the clicked voxel is not part of the structure: the structure is empty")
        return _unchanged(target, "nothing to do: the structure is empty")
    region = Region(box.origin, box.size)
    mask, conn = box.mask, params.connectivity
    if params.mode == "keep_largest":
        new, count = islands.keep_largest(mask, conn)
        what = f"kept the largest of {count} island(s)"
    elif params.mode == "remove_smaller_ml":
        assert params.min_ml is not None
        min_voxels = islands.voxels_for_ml(params.min_ml, work.voxel_volume_mm3)
        new, count = islands.remove_smaller(mask, min_voxels, conn)
        what = f"removed {count} island(s) under {params.min_ml:g} mL ({min_voxels:,} voxels)"
    else:
        assert params.voxel is not None
        local = (params.voxel[0] - box.origin[0], params.voxel[1] - box.origin[1], params.voxel[2] - box.origin[2])
        new, count = islands.keep_clicked(mask, local, conn)
        what = f"kept the clicked island of {count}"
    return _result(target, work, region, new, what)


def _smooth(target: str, request: SmoothRequest, work: Work) -> Outcome:
    params = request.params
    box = work.box(target)
    region = around([box], voxel_pad(params.mm, work.spacing), work.shape)
    if region is None:
        return _unchanged(target, "nothing to smooth: the structure is empty")
    region = work.checked(region)
    operation: Callable[[np.ndarray, Spacing, float], np.ndarray] = {
        "median": morphology.median,
        "opening": morphology.opening,
        "closing": morphology.closing,
    }[params.method]
    new = operation(crop(box, region), work.spacing, params.mm)
    return _result(target, work, region, new, f"{params.method} {params.mm:g} mm")


def _fill_holes(target: str, request: FillHolesRequest, work: Work) -> Outcome:
    box = work.box(target)
    region = around([box], (1, 1, 1), work.shape)
    if region is None:
        return _unchanged(target, "nothing to fill: the structure is empty")
    axis = request.params.per_slice_axis
    new = morphology.fill_holes(crop(box, region), axis)
    what = "filled holes" + ("" if axis is None else f" per slice (axis {axis})")
    return _result(target, work, region, new, what)


def _logical(target: str, request: LogicalRequest, work: Work, source: str | None, within: str | None) -> Outcome:
    op = request.params.op
    mine = work.box(target)
    if op == "invert":
        if within is None:
            region = work.checked(_volume(work.shape))
            return _result(target, work, region, logical.invert(crop(mine, region)), "inverted in the volume")
        inside = work.box(within)
        found = around([inside], (0, 0, 0), work.shape)
        if found is None:
            return _unchanged(target, f"nothing to invert: {within} is empty")
        region = work.checked(found)
        new = logical.invert(crop(mine, region), crop(inside, region))
        return _result(target, work, region, new, f"inverted inside {within}")
    assert source is not None
    other = work.box(source)
    found = around([mine, other] if op in ("copy", "add") else [mine], (0, 0, 0), work.shape)
    if found is None:
        return _unchanged(target, f"nothing to {op}: the structures are empty")
    region = work.checked(found)
    new = logical.combine(op, crop(mine, region), crop(other, region))
    return _result(target, work, region, new, f"{op} {source}")


def _scissors(target: str, request: ScissorsRequest, work: Work) -> Outcome:
    params = request.params
    if params.slab is not None and params.slab[1] >= work.shape[params.axis]:
        raise InvalidInput(
            f"slab {params.slab} reaches outside the volume (axis {params.axis} has {work.shape[params.axis]} slices)"
        )
    box = work.box(target)
    if is_empty(box):
        return _unchanged(target, "nothing to cut: the structure is empty")
    region = Region(box.origin, box.size)
    slab = None if params.slab is None else (params.slab[0], params.slab[1])
    new = scissors.cut(box.mask, box.origin, params.polygon, params.axis, slab, params.keep == "inside")
    return _result(target, work, region, new, f"scissors (kept {params.keep})")


def _statistics(target: str, scan: Scan, blobs: BlobStore, work: Work, order: list[str]) -> Outcome:
    work.box(target)
    found = around([work.boxes[name] for name in order], (0, 0, 0), work.shape)
    values = None
    if found is not None:
        region = work.checked(found)
        with blobs.open(scan.image_digest) as raw:
            values = statistics.read_region(raw, f"{scan.case_id}.nii.gz", region)
    rows = []
    for name in order:
        mask = crop(work.boxes[name], found) if found is not None else np.zeros((0, 0, 0), bool)
        rows.append((name, statistics.measure(mask, values, work.voxel_volume_mm3)))
    summary = "; ".join(f"{name}: {m.volume_ml:.2f} mL" for name, m in rows)
    return Outcome(target, None, summary, rows)


def run(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    request: AnyOperation,
    parts: Mapping[str, bytes],
    *,
    max_voxels: int,
) -> Outcome:
    """Run one operation on the client's current masks and return the preview of the target's change."""
    shape: Shape3 = (scan.shape[0], scan.shape[1], scan.shape[2])
    spacing: Spacing = (float(scan.spacing[0]), float(scan.spacing[1]), float(scan.spacing[2]))
    structures = projects.structures_of(db, scan.project_id)

    def name_of(name: str) -> str:
        return projects.find_structure(structures, name).name

    # Every name is resolved (an unknown one refused) before any box is decoded.
    target = name_of(request.structure)
    source = within = None
    if isinstance(request, LogicalRequest):
        source = None if request.params.source is None else name_of(request.params.source)
        within = None if request.params.within is None else name_of(request.params.within)
        if target in (source, within):
            raise InvalidInput(f"the other structure of a logical operation must differ from the target {target!r}")
    # Decoding and the operation hold whole boxes in memory: one of the process's heavy-work slots.
    with decode_limits.heavy_decode(f"operation {request.operation}"):
        boxes = _decode_inputs(request.inputs, name_of, parts, shape, max_voxels)
        work = Work(shape, spacing, float(scan.voxel_volume_mm3), boxes, max_voxels)
        if isinstance(request, StatisticsRequest):
            return _statistics(target, scan, blobs, work, [name_of(i.structure) for i in request.inputs])
        return compute(target, request, work, source, within)


def compute(
    target: str, request: AnyOperation, work: Work, source: str | None = None, within: str | None = None
) -> Outcome:
    """Run an operation other than statistics on decoded boxes (names already resolved): each works on the
    structure's box plus what the operation can reach, never on the whole volume."""
    if isinstance(request, InterpolateRequest):
        return _interpolate(target, request, work)
    if isinstance(request, MarginRequest):
        return _margin(target, request, work)
    if isinstance(request, IslandsRequest):
        return _islands(target, request, work)
    if isinstance(request, SmoothRequest):
        return _smooth(target, request, work)
    if isinstance(request, FillHolesRequest):
        return _fill_holes(target, request, work)
    if isinstance(request, LogicalRequest):
        return _logical(target, request, work, source, within)
    if isinstance(request, ScissorsRequest):
        return _scissors(target, request, work)
    raise InvalidInput(f"operation {request.operation!r} needs the scan")
