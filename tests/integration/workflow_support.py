"""Helpers for the review workflow tests: scans with a first version, saves, transitions, direct task edits."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.core.config import Settings
from backend.imaging.phantom import Phantom
from backend.models import ScanTask, User
from backend.projects import service as projects
from tests.conftest import PASSWORD, World
from tests.factories import post_patch, small_phantom, upload_masks, upload_scan


@lru_cache(maxsize=1)
def phantom() -> Phantom:
    """One small phantom shared by the workflow tests (its CT is uploaded once per scan)."""
    return small_phantom(seed=3, lesion=False)


def new_scan(client: TestClient, world: World, case_id: str, metadata: dict[str, Any] | None = None) -> int:
    """Import a scan as the lead; its task starts in state 'new'."""
    return int(upload_scan(client, world.headers["lead"], world.project.id, phantom(), case_id, metadata)["id"])


def scan_with_version(client: TestClient, world: World, case_id: str, metadata: dict[str, Any] | None = None) -> int:
    """A scan with an imported first version (the task stays 'new')."""
    scan_id = new_scan(client, world, case_id, metadata)
    liver = phantom().masks["liver"]
    upload_masks(client, world.headers["lead"], scan_id, {"liver": liver}, phantom().affine, kind="import")
    return scan_id


def head(client: TestClient, world: World, scan_id: int) -> int:
    """The scan's head version id."""
    return int(task(client, world.headers["lead"], scan_id)["head_version_id"])


def save(client: TestClient, headers: dict[str, str], scan_id: int, base: int | None, **extra: Any) -> Any:
    """A small brush stroke on the liver as a patch save; the raw response."""
    box = np.ones((2, 2, 1), dtype=bool)
    return post_patch(client, headers, scan_id, base, [("liver", (4, 4, 4), box)], "stroke", **extra)


def task(client: TestClient, headers: dict[str, str], scan_id: int) -> dict[str, Any]:
    """The scan's task as the caller sees it."""
    response = client.get(f"/api/scans/{scan_id}/task", headers=headers)
    assert response.status_code == 200, response.text
    return dict(response.json())


def act(client: TestClient, headers: dict[str, str], scan_id: int, action: str, **body: Any) -> Any:
    """POST a transition; the raw response."""
    return client.post(f"/api/scans/{scan_id}/transitions", headers=headers, json={"action": action, **body})


def ok(response: Any, status: int = 200) -> dict[str, Any]:
    """The JSON of a response that must have the given status."""
    assert response.status_code == status, response.text
    return dict(response.json()) if response.content else {}


def set_task(db: Session, scan_id: int, **fields: Any) -> ScanTask:
    """Edit a task row directly (to put it in a state, or to age its lease)."""
    row = db.get(ScanTask, scan_id)
    assert row is not None
    for key, value in fields.items():
        setattr(row, key, value)
    db.flush()
    return row


def expire_lease(db: Session, scan_id: int) -> None:
    """Make the task's lease a minute past its expiry, as if the holder stopped sending heartbeats."""
    set_task(db, scan_id, lease_expires_at=datetime.now(UTC) - timedelta(minutes=1))


def extra_member(db: Session, world: World, settings: Settings, name: str, role: str) -> tuple[User, dict[str, str]]:
    """One more project member with bearer headers."""
    user = auth.create_user(db, f"{name}@example.org", PASSWORD, name.title())
    projects.set_membership(db, world.project.id, user, role, world.users["platform_admin"])
    db.flush()
    return user, {"Authorization": f"Bearer {auth.issue_access_token(user, settings)[0]}"}


def submit_flow(client: TestClient, world: World, scan_id: int) -> int:
    """Annotator starts, saves and submits; returns the submitted version id."""
    annotator = world.headers["annotator"]
    ok(act(client, annotator, scan_id, "start"))
    version = ok(save(client, annotator, scan_id, head(client, world, scan_id)), 201)
    ok(act(client, annotator, scan_id, "submit"))
    return int(version["id"])
