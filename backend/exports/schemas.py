"""Request and response bodies of the export endpoints."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from backend.core.ids import Id
from backend.jobs.schemas import ScanFilterIn


class ExportRequest(BaseModel):
    """Export one label version per scan in a dataset layout.

    format: 'pants' | 'nnunet' | 'msd' | 'dicom-seg'. version: 'head' | 'approved' | 'model:<name>'.
    structures: a subset of the schema (default: all). Scans: `scan_ids`, or a metadata `filter`, or (neither)
    every scan of the project. nnunet_labels: 'paint-order' (default: one integer per structure, painted in the
    documented order) or 'regions' (lossless region-based labels). dataset_id/dataset_name name the nnU-Net
    folder DatasetXXX_Name.
    """

    format: str
    version: str = "head"
    structures: list[str] | None = Field(default=None, max_length=1000)
    scan_ids: list[Id] | None = Field(default=None, max_length=50_000)
    filter: ScanFilterIn | None = None
    nnunet_labels: str = "paint-order"
    dataset_id: int = Field(default=1, ge=1, le=999)
    dataset_name: str | None = Field(default=None, max_length=80)


class ExportJobOut(BaseModel):
    """The queued export job: follow it with GET /api/jobs/{job_id}, then GET download_url."""

    job_id: int
    status: str
    queue: str
    queue_position: int | None
    message: str
    params: dict[str, Any]
    download_url: str
