"""Bodies of the interactive AI endpoints."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, StrictBool

# One click: voxel indices (i, j, k) of the scan in its storage order (the stored NIfTI's array order).
Click = Annotated[list[int], Field(min_length=3, max_length=3)]
# Bounds what is parsed at all; the configured limit (interactive_max_clicks, the model's) is checked after.
MAX_LISTED_CLICKS = 1000


class PreviousBoxIn(BaseModel):
    """The structure's current mask in a box: the patch-save box encodings (voxels in NIfTI order, x fastest)."""

    origin: list[int] = Field(min_length=3, max_length=3)
    size: list[int] = Field(min_length=3, max_length=3)
    encoding: str = Field(default="bits+gzip", description="u8+gzip, bits+gzip, u8 or bits")
    data: str = Field(description="the encoded box, base64")


class ClickIn(BaseModel):
    """A click request: every click of the session so far (newest last) and the structure's current mask."""

    structure: str = Field(min_length=1, max_length=100, description="structure name (or alias) of the schema")
    model: str | None = Field(
        default=None, max_length=100, description="interactive model name; default: the project's interactive model"
    )
    positive: list[Click] = Field(default_factory=list, max_length=MAX_LISTED_CLICKS)
    negative: list[Click] = Field(default_factory=list, max_length=MAX_LISTED_CLICKS)
    previous: PreviousBoxIn | None = Field(
        default=None, description="the structure's current mask (its bounding box); none: the structure is empty"
    )
    branch: StrictBool = Field(
        default=False, description="the edit will be saved as a branch (a blinded reader's), not on the head"
    )


class ClickOut(BaseModel):
    """The structure's new mask inside a box: replace the voxels of that box with it (a preview; nothing is saved)."""

    structure: str
    origin: list[int]
    size: list[int]
    encoding: str = Field(description="always bits+gzip: one bit per voxel, NIfTI order (x fastest), gzip")
    data: str = Field(description="the encoded box, base64")
    voxels: int = Field(description="set voxels in the box")
    model: str
    model_version_id: int
    timings: dict[str, float] = Field(description="milliseconds: total_ms (API), queue_ms, worker_ms, network_ms…")


class WarmIn(BaseModel):
    """Which model to warm (default: the project's interactive model)."""

    model: str | None = Field(default=None, max_length=100)


class WarmOut(BaseModel):
    """The model a worker is loading, with the scan's volume."""

    model: str
    model_version_id: int
    structures: list[str]
    max_clicks: int
