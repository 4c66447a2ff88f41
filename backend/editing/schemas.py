"""Request and response bodies of the editor operations (`POST /api/scans/{scan_id}/operations`).

The request is a multipart form: a field `meta` holding an `OperationRequest` as JSON, and one binary part per
non-empty input box, named as that input's `part`. Voxel coordinates are storage indices (i, j, k) of the scan's
volume, the order of its NIfTI file; box bytes are in that order with i fastest, exactly as a patch save sends them.
"""

from __future__ import annotations

import math
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, RootModel, StrictInt, field_validator, model_validator

# The encodings of a box (those of the patch save, `backend.imaging.chunks.BOX_ENCODINGS`): one bit ("bits") or one
# byte ("u8", 0 or 1) per voxel, i fastest, optionally gzip-compressed; bits are packed least significant first.
BoxEncoding = Literal["bits+gzip", "u8+gzip", "bits", "u8"]
StorageAxis = Literal[0, 1, 2]
Connectivity = Literal[6, 18, 26]

MAX_INPUTS = 8
MAX_KEY_SLICES = 4096
MAX_POLYGON_POINTS = 10_000
MAX_MARGIN_MM = 50.0
MAX_SMOOTH_MM = 20.0
MAX_COORDINATE = 1_000_000.0

Index = Annotated[StrictInt, Field(ge=0, le=1 << 20)]
Triple = Annotated[list[Index], Field(min_length=3, max_length=3)]
StructureName = Annotated[str, Field(min_length=1, max_length=200)]


class _Strict(BaseModel):
    """Unknown fields are refused (a misspelt parameter is a 422, not silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class OperationInput(_Strict):
    """One structure's current mask as the client holds it (unsaved edits included), as one box: usually the
    structure's non-zero bounding box; voxels outside the box count as 0. `size` [0, 0, 0] (no part) is an empty
    structure. The box's bytes are the multipart part named `part`, encoded as a patch-save box."""

    structure: StructureName
    origin: Triple = Field(description="first voxel of the box, storage indices (i, j, k)")
    size: Triple = Field(description="box extent in voxels along (i, j, k); [0, 0, 0] for an empty structure")
    encoding: BoxEncoding = "bits+gzip"
    part: Annotated[str, Field(min_length=1, max_length=100)] | None = Field(
        default=None, description="name of the multipart part holding the box bytes (required unless empty)"
    )

    @model_validator(mode="after")
    def _part_unless_empty(self) -> OperationInput:
        empty = all(s == 0 for s in self.size)
        if not empty and any(s == 0 for s in self.size):
            raise ValueError("a box is either empty (size [0, 0, 0]) or at least one voxel along every axis")
        if not empty and self.part is None:
            raise ValueError("a non-empty input box needs `part`, the name of the multipart part holding its bytes")
        return self


class InterpolateParams(_Strict):
    """Morphological (shape-based) interpolation between the slices the user edited, along one storage axis."""

    axis: StorageAxis = Field(description="storage axis the key slices are slices of (2: k, axial for RAS scans)")
    key_slices: Annotated[list[Index], Field(min_length=2, max_length=MAX_KEY_SLICES)] = Field(
        description="indices along `axis` of the slices the user drew; the gaps between consecutive ones are filled"
    )
    mode: Literal["add", "replace"] = Field(
        default="add",
        description="add: only adds voxels inside the gap slices (never removes one, never touches a key slice); "
        "replace: the gap slices become the interpolation",
    )


class MarginParams(_Strict):
    """Grow (positive) or shrink (negative) by a distance in mm, exact Euclidean on the scan's spacing."""

    mm: float = Field(ge=-MAX_MARGIN_MM, le=MAX_MARGIN_MM, description="margin in mm; > 0 grows, < 0 shrinks")


class IslandsParams(_Strict):
    """Connected-component clean-up."""

    mode: Literal["keep_largest", "remove_smaller_ml", "keep_clicked"]
    min_ml: float | None = Field(
        default=None, gt=0, le=1e6, description="remove_smaller_ml: islands below this volume (mL) are removed"
    )
    voxel: Triple | None = Field(default=None, description="keep_clicked: a voxel (i, j, k) of the island to keep")
    connectivity: Connectivity = Field(default=26, description="voxel neighbourhood: 6 (faces), 18 or 26")

    @model_validator(mode="after")
    def _mode_arguments(self) -> IslandsParams:
        if self.mode == "remove_smaller_ml" and self.min_ml is None:
            raise ValueError("mode remove_smaller_ml needs min_ml")
        if self.mode == "keep_clicked" and self.voxel is None:
            raise ValueError("mode keep_clicked needs voxel [i, j, k]")
        return self


class SmoothParams(_Strict):
    """Smoothing with an ellipsoidal structuring element of radius `mm` on the scan's spacing."""

    method: Literal["median", "opening", "closing"] = Field(
        description="median: majority vote in the ellipsoid; opening removes protrusions thinner than the "
        "ellipsoid; closing fills gaps and dents narrower than it"
    )
    mm: float = Field(gt=0, le=MAX_SMOOTH_MM, description="radius of the structuring element in mm")


class FillHolesParams(_Strict):
    """Fill cavities (background not connected to the outside)."""

    per_slice_axis: StorageAxis | None = Field(
        default=None, description="null: fill 3D cavities; 0, 1 or 2: fill holes slice by slice along that axis"
    )


class LogicalParams(_Strict):
    """Target versus another structure: copy, add (union), subtract, intersect; or invert the target."""

    op: Literal["copy", "add", "subtract", "intersect", "invert"]
    source: StructureName | None = Field(default=None, description="the other structure (all but invert)")
    within: StructureName | None = Field(
        default=None, description="invert only: invert inside this structure instead of the whole volume"
    )

    @model_validator(mode="after")
    def _operands(self) -> LogicalParams:
        if self.op != "invert" and self.source is None:
            raise ValueError(f"logical {self.op} needs source, the other structure")
        if self.op == "invert" and self.source is not None:
            raise ValueError("logical invert takes no source (use within to invert inside a structure)")
        if self.op != "invert" and self.within is not None:
            raise ValueError("within applies to invert only")
        return self


Point = Annotated[list[float], Field(min_length=2, max_length=2)]


class ScissorsParams(_Strict):
    """Erase with a polygon drawn on a slice, extruded along the slice normal through the volume or a slab."""

    polygon: Annotated[list[Point], Field(min_length=3, max_length=MAX_POLYGON_POINTS)] = Field(
        description="vertices [x, y] in the slice's storage coordinates: for axis 2 (x, y) = (i, j), for axis 1 "
        "(i, k), for axis 0 (j, k); a voxel is inside when its centre is"
    )
    axis: StorageAxis = Field(description="storage axis normal to the slice the polygon was drawn on")
    slab: Annotated[list[Index], Field(min_length=2, max_length=2)] | None = Field(
        default=None, description="null: through the whole volume; [first, last] slice indices (inclusive) along axis"
    )
    keep: Literal["inside", "outside"] = Field(
        description="inside: erase what lies outside the polygon; outside: erase what lies inside it"
    )

    @field_validator("polygon")
    @classmethod
    def _finite(cls, polygon: list[list[float]]) -> list[list[float]]:
        for x, y in polygon:
            if not (math.isfinite(x) and math.isfinite(y)) or max(abs(x), abs(y)) > MAX_COORDINATE:
                raise ValueError(f"polygon coordinates must be finite and within ±{MAX_COORDINATE:g}")
        return polygon

    @field_validator("slab")
    @classmethod
    def _ordered(cls, slab: list[int] | None) -> list[int] | None:
        if slab is not None and slab[0] > slab[1]:
            raise ValueError("slab is [first, last] with first <= last")
        return slab


class StatisticsParams(_Strict):
    """No parameters: statistics of every input structure."""


class _Request(_Strict):
    """What every operation names: the target structure and the current masks it reads."""

    structure: StructureName = Field(description="the target structure: the one the result box is for")
    inputs: Annotated[list[OperationInput], Field(max_length=MAX_INPUTS)] = Field(
        description="current masks of the structures the operation reads (the target always; plus source or "
        "within for logical operations; statistics: every structure to measure)"
    )


class InterpolateRequest(_Request):
    """Interpolate the target between key slices."""

    operation: Literal["interpolate"]
    params: InterpolateParams


class MarginRequest(_Request):
    """Grow or shrink the target."""

    operation: Literal["margin"]
    params: MarginParams


class IslandsRequest(_Request):
    """Keep or remove connected components of the target."""

    operation: Literal["islands"]
    params: IslandsParams


class SmoothRequest(_Request):
    """Smooth the target."""

    operation: Literal["smooth"]
    params: SmoothParams


class FillHolesRequest(_Request):
    """Fill the target's holes."""

    operation: Literal["fill_holes"]
    params: FillHolesParams = Field(default_factory=FillHolesParams)


class LogicalRequest(_Request):
    """Combine the target with another structure."""

    operation: Literal["logical"]
    params: LogicalParams


class ScissorsRequest(_Request):
    """Cut the target with a polygon."""

    operation: Literal["scissors"]
    params: ScissorsParams


class StatisticsRequest(_Request):
    """Measure the input structures (voxels, mL, HU under the mask)."""

    operation: Literal["statistics"]
    params: StatisticsParams = Field(default_factory=StatisticsParams)


AnyOperation = Annotated[
    InterpolateRequest
    | MarginRequest
    | IslandsRequest
    | SmoothRequest
    | FillHolesRequest
    | LogicalRequest
    | ScissorsRequest
    | StatisticsRequest,
    Field(discriminator="operation"),
]


class OperationRequest(RootModel[AnyOperation]):
    """The `meta` field of `POST /api/scans/{scan_id}/operations` (JSON): {operation, structure, params, inputs}.
    `operation` selects the parameters' shape; unknown operations or parameters are a 422."""


class StructureStatistics(BaseModel):
    """One structure's size and the CT values under it (HU figures are null for an empty structure)."""

    structure: str
    voxels: int
    volume_ml: float
    hu_mean: float | None
    hu_sd: float | None = Field(description="population standard deviation")
    hu_min: float | None
    hu_max: float | None


class OperationStatistics(BaseModel):
    """The statistics operation's answer, one row per input structure in request order."""

    structures: list[StructureStatistics]


class OperationResult(BaseModel):
    """A preview, not a save: the target's new voxels in the smallest box holding every changed voxel. The client
    writes the box into its mask (an undoable edit) and later saves it as a patch. `size` [0, 0, 0] (data empty)
    when nothing changes; statistics answers `stats` and an empty box."""

    structure: str
    origin: list[int] = Field(description="first voxel of the box, storage indices (i, j, k)")
    size: list[int] = Field(description="box extent in voxels; [0, 0, 0]: nothing changed")
    encoding: Literal["bits+gzip"] = "bits+gzip"
    data: str = Field(description="base64 of the box voxels encoded as `encoding` (i fastest, as a patch box)")
    added: int = Field(description="voxels the result adds to the target")
    removed: int = Field(description="voxels the result removes from the target")
    summary: str = Field(description="one line for the user, e.g. 'grew by 3 mm: +12,345 voxels'")
    stats: OperationStatistics | None = None
