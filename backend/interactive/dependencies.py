"""Who may click: a caller who may write labels on the scan (outsiders get 404, readers 403)."""

from __future__ import annotations

from backend.scans.dependencies import ScanAccess, require_scan

CLICK_PERMISSION = "write_labels"


def require_click_access() -> ScanAccess:
    """The scan named in the path, for a caller who may write its labels (Depends)."""
    return require_scan(CLICK_PERMISSION)
