"""Exports: choose one label version per scan and write PanTS, nnU-Net v2, MSD or DICOM SEG datasets.

`validate_request` checks a request and resolves its scans (bad input is refused before a job exists);
`plan_export` reads everything the writer needs from the database in one short session (versions chosen per
scan, structure manifests, metadata); `write_export` then writes the folder with no database at all (blobs only)
and a `manifest.json`; `archive_folder` packs it as .tar.gz for the blob store. The worker pipeline and the
`maskloop export` command both use these.

Version choice per scan: `head` (the scan's head version), `approved` (ScanTask.approved_version_id; scans
without one are skipped and listed in the manifest), `model:<name>` (the label version of the newest prediction
of that model's promoted version; scans it never predicted are skipped).
"""

from backend.exports.service.archive import archive_folder, download_of, export_summary
from backend.exports.service.planning import CasePlan, ExportPlan, StructureInfo, plan_export
from backend.exports.service.selection import FORMATS, MAX_SCANS, NNUNET_LABEL_MODES, VersionSpec, validate_request
from backend.exports.service.writing import MANIFEST_NAME, Progress, maskloop_version, write_export

__all__ = [
    "FORMATS",
    "MANIFEST_NAME",
    "MAX_SCANS",
    "NNUNET_LABEL_MODES",
    "CasePlan",
    "ExportPlan",
    "Progress",
    "StructureInfo",
    "VersionSpec",
    "archive_folder",
    "download_of",
    "export_summary",
    "maskloop_version",
    "plan_export",
    "validate_request",
    "write_export",
]
