"""Editor operations need what a patch save needs: the write_labels permission on the scan's project."""

from __future__ import annotations

from backend.scans.dependencies import ScanAccess, require_scan

WRITE_LABELS = "write_labels"


def require_editing() -> ScanAccess:
    """The scan {scan_id}, checked for the caller's write_labels permission (outsiders get 404)."""
    return require_scan(WRITE_LABELS)


__all__ = ["WRITE_LABELS", "ScanAccess", "require_editing"]
