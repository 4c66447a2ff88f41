"""Request and response bodies of the scan endpoints."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict


class ScanOut(BaseModel):
    """A scan: geometry, metadata (normalised and raw), and its head label version."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    project_id: int
    case_id: str
    split: str | None
    source_format: str
    source_name: str
    source_dtype: str
    image_bytes: int
    shape: list[int]
    spacing: list[float]
    affine: list[list[float]]
    orientation: str
    slice_count: int
    header_spacing: list[float] | None
    slice_thickness: float | None
    site: str | None
    phase: str | None
    sex: str | None
    age: int | None
    manufacturer: str | None
    manufacturer_model: str | None
    tumor: bool | None
    lesion_instances: int | None
    raw_metadata: dict[str, Any]
    head_version_id: int | None
    created_at: datetime


class ScanPage(BaseModel):
    """One page of scans."""

    items: list[ScanOut]
    total: int
    page: int
    page_size: int


class ScanFacets(BaseModel):
    """Counts per metadata value, for filter menus."""

    facets: dict[str, dict[str, int]]
