"""Request and response bodies of the label version endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, StrictBool, model_validator

from backend.core.ids import Id


class AuthorOut(BaseModel):
    """Who made a version."""

    user_id: int | None
    display_name: str | None
    model_version_id: int | None


class VersionStructureOut(BaseModel):
    """One structure's state in a version."""

    name: str
    label_value: int
    status: str
    voxel_count: int
    volume_ml: float
    changed: bool


class VersionOut(BaseModel):
    """A label version: lineage, author, kind, message, and per-structure counts (no mask opened)."""

    id: int
    scan_id: int
    parent_id: int | None
    kind: str
    author: AuthorOut
    message: str
    created_at: datetime
    is_head: bool
    is_branch: bool
    new_bytes: int
    structures: list[VersionStructureOut]
    input_version_ids: list[int] = Field(
        default_factory=list, description="a fusion's input versions, the readers' order (parent_id is the first)"
    )


# A box small enough to travel inside the meta JSON (base64) rather than as a multipart part of its own: a brush
# stroke's box is a few dozen bytes, less than the part's framing. Larger boxes go as parts (base64 adds a third).
MAX_INLINE_BOX_CHARS = 65_536


class PatchBox(BaseModel):
    """One box of new voxels for one structure; its bytes are in the multipart part named `part`, or (a small box)
    in `data` as base64 — exactly one of the two."""

    structure: str
    origin: list[int] = Field(min_length=3, max_length=3)
    size: list[int] = Field(min_length=3, max_length=3)
    encoding: str = "bits+gzip"
    part: str | None = Field(default=None, min_length=1, max_length=100)
    data: str | None = Field(
        default=None,
        max_length=MAX_INLINE_BOX_CHARS,
        description="the box bytes (encoded as `encoding`) as standard base64, instead of a multipart part",
    )

    @model_validator(mode="after")
    def _one_source(self) -> PatchBox:
        if (self.part is None) == (self.data is None):
            raise ValueError("a patch box names its multipart `part` or carries its bytes in `data` (base64), not both")
        return self


class PatchRequest(BaseModel):
    """A patch save: the base version and the changed boxes (voxels in NIfTI order, x fastest)."""

    # None only for the first version of a scan that has none yet (every unpainted structure is then missing).
    base_version_id: Id | None
    message: str = Field(default="", max_length=2000)
    branch: StrictBool = False
    idempotency_key: str | None = Field(default=None, max_length=200)
    patches: list[PatchBox] = Field(min_length=1, max_length=256)


class StructureDiffOut(BaseModel):
    """How one structure differs between two versions."""

    structure: str
    status_a: str
    status_b: str
    voxels_a: int
    voxels_b: int
    intersection: int
    added: int
    removed: int
    dice: float | None


class DiffOut(BaseModel):
    """Per-structure differences from version a to version b (Dice 1.0 when both empty, None when missing)."""

    version_a: int
    version_b: int
    structures: list[StructureDiffOut]


class DraftOut(BaseModel):
    """The caller's autosaved draft of a scan (the payload is the client's own JSON)."""

    scan_id: int
    base_version_id: int | None
    updated_at: datetime
    payload_bytes: int
    payload: dict[str, Any]
    base_is_head: bool
