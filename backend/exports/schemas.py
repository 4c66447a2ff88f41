"""Request and response bodies of the export endpoints."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from backend.core.ids import Id
from backend.jobs.schemas import ScanFilterIn


class ExportRequest(BaseModel):
    """Export one label version per scan in a dataset layout, with a dataset card (README.md, cases.csv) and
    SHA256SUMS.

    format: 'pants' | 'nnunet' | 'msd' | 'dicom-seg'. version: 'approved' (default: the last approved version of
    each scan; scans never approved are skipped and listed in the card) | 'head' | 'model:<name>'.
    structures: a subset of the schema (default: all). Scans: `scan_ids`, or a metadata `filter`, or (neither)
    every scan of the project. nnunet_labels: 'paint-order' (default: one integer per structure, painted in the
    documented order) or 'regions' (lossless region-based labels). dataset_id/dataset_name name the nnU-Net
    folder DatasetXXX_Name. test_split: where test-split scans go. ignore_label: nnU-Net's `ignore` label for
    cases with a missing structure. folder_name: the archive's top-level folder (not for nnU-Net).
    """

    format: str
    version: str = Field(
        default="approved",
        description="'approved' (last approved version per scan; unapproved scans skipped and listed), 'head', "
        "or 'model:<name>'",
    )
    structures: list[str] | None = Field(default=None, max_length=1000)
    scan_ids: list[Id] | None = Field(default=None, max_length=50_000)
    filter: ScanFilterIn | None = None
    nnunet_labels: str = "paint-order"
    dataset_id: int = Field(default=1, ge=1, le=999)
    dataset_name: str | None = Field(default=None, max_length=80)
    test_split: Literal["separate", "exclude", "merge"] = Field(
        default="separate",
        description="scans of the test split: 'separate' (only in nnU-Net imagesTs/labelsTs, MSD test with "
        "imagesTs/labelsTs, PanTS ImageTe/LabelTe), 'exclude' (left out, listed in the card) or 'merge' (with the "
        "training cases; the card says so)",
    )
    ignore_label: bool = Field(
        default=True,
        description="nnU-Net v2: declare 'ignore' (the highest label value) and, in a case where a structure is "
        "missing, set every voxel not labelled with another structure to it; false paints such voxels background "
        "(MSD always does; the card lists those cases)",
    )
    folder_name: str | None = Field(
        default=None,
        max_length=100,
        description="the dataset folder's name (the archive's top level); default '<project>-<format>', "
        "nnU-Net always 'DatasetXXX_Name'. The CLI's --out DIR writes the folder exactly at DIR.",
    )


class ExportJobOut(BaseModel):
    """The queued export job: follow it with GET /api/jobs/{job_id}, then GET download_url."""

    job_id: int
    status: str
    queue: str
    queue_position: int | None
    message: str
    params: dict[str, Any]
    download_url: str


class ExportOptionsOut(BaseModel):
    """The choices an export request takes, with their defaults (for a page that builds requests)."""

    formats: list[str]
    versions: list[str] = Field(description="'approved' (default), 'head', then 'model:<name>' per promoted model")
    default_version: str
    test_split_modes: list[str]
    default_test_split: str
    nnunet_label_modes: list[str]
    ignore_label_default: bool
    splits: dict[str, int] = Field(description="scans per scan split ('' = none), to show what goes where")
    approved_scans: int
    scans: int
