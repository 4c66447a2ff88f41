"""The workflow's domain errors (each a 409 with its own code)."""

from __future__ import annotations

from backend.core.errors import Conflict


class ScanApproved(Conflict):
    """The scan is approved: its labels are read-only until a lead reopens it."""

    code = "scan_approved"


class LeaseHeld(Conflict):
    """Someone else holds the live edit lease of the scan."""

    code = "lease_held"


class InvalidTransition(Conflict):
    """The action does not apply to the task's current state."""

    code = "invalid_transition"


class NotHead(Conflict):
    """The named version is not the scan's head version."""

    code = "not_head"
