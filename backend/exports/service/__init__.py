"""Exports: choose one label version per scan and write PanTS, nnU-Net v2, MSD or DICOM SEG datasets.

`validate_request` checks a request and resolves its scans (bad input is refused before a job exists);
`plan_export` reads everything the writer needs from the database in one short session (versions chosen per
scan, structure manifests, metadata); `write_export` then writes the folder with no database at all (blobs only)
and a `manifest.json`; `archive_folder` packs it as .tar.gz for the blob store. The worker pipeline and the
`maskloop export` command both use these.

Version choice per scan: `approved` (the default: ScanTask.approved_version_id, the last approved version;
scans without one are skipped and listed in the manifest and the card), `head` (the scan's head version),
`model:<name>` (the label version of the newest prediction of that model's promoted version; scans it never
predicted are skipped).

Splits (`test_split`): "separate" (default: test-split scans only in the test folders), "exclude" or "merge".
Missing structures: nnU-Net declares an `ignore` label (`ignore_label`, on by default); every export carries a
dataset card (README.md, cases.csv) and SHA256SUMS.
"""

from backend.exports.service.archive import archive_folder, download_of, export_summary
from backend.exports.service.card import CASES_NAME, CHECKSUMS_NAME, README_NAME
from backend.exports.service.planning import CasePlan, ExportPlan, StructureInfo, plan_export
from backend.exports.service.selection import (
    DEFAULT_VERSION,
    FORMATS,
    MAX_SCANS,
    NNUNET_LABEL_MODES,
    TEST_SPLIT_MODES,
    VersionSpec,
    export_options,
    validate_request,
)
from backend.exports.service.writing import (
    MANIFEST_NAME,
    Progress,
    dataset_folder_name,
    maskloop_version,
    write_export,
)

__all__ = [
    "CASES_NAME",
    "CHECKSUMS_NAME",
    "DEFAULT_VERSION",
    "FORMATS",
    "MANIFEST_NAME",
    "MAX_SCANS",
    "NNUNET_LABEL_MODES",
    "README_NAME",
    "TEST_SPLIT_MODES",
    "CasePlan",
    "ExportPlan",
    "Progress",
    "StructureInfo",
    "VersionSpec",
    "archive_folder",
    "dataset_folder_name",
    "download_of",
    "export_options",
    "export_summary",
    "maskloop_version",
    "plan_export",
    "validate_request",
    "write_export",
]
