"""Bad input to the review, quality, dashboard, export and evaluation endpoints gets a 4xx with a message.

The TestClient re-raises server exceptions, so a 500 fails these tests loudly; each case also checks that the
answer is a client error with a readable `detail`.
"""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.conftest import World
from tests.factories import small_phantom, upload_masks, upload_scan

BIG = 2**62


@pytest.fixture
def scan_id(client: TestClient, world: World) -> int:
    phantom = small_phantom(seed=3)
    lead = world.headers["lead"]
    scan = upload_scan(client, lead, world.project.id, phantom, "case-bad")
    upload_masks(client, lead, scan["id"], {"liver": phantom.masks["liver"]}, phantom.affine)
    return int(scan["id"])


# (method, path template, json body or None, query params or None); {pid} and {sid} are filled in.
CASES: list[tuple[str, str, Any, dict[str, Any] | None]] = [
    ("GET", "/api/projects/{pid}/worklist", None, {"sort": "random"}),
    ("GET", "/api/projects/{pid}/worklist", None, {"state": "bogus"}),
    ("GET", "/api/projects/{pid}/worklist", None, {"page_size": 0}),
    ("GET", "/api/projects/{pid}/worklist", None, {"assignee": "somebody"}),
    ("GET", "/api/projects/{pid}/worklist", None, {"page": BIG}),
    ("POST", "/api/projects/{pid}/next-task", {"kind": "paint"}, None),
    ("POST", "/api/projects/{pid}/next-task", [], None),
    ("POST", "/api/scans/{sid}/transitions", {"action": "teleport"}, None),
    ("POST", "/api/scans/{sid}/transitions", {"action": "submit", "version_id": BIG}, None),
    ("POST", "/api/scans/{sid}/transitions", {"action": "approve"}, None),
    ("POST", "/api/projects/{pid}/assignments", {"scan_ids": [BIG], "user_id": None, "role": "annotator"}, None),
    ("POST", "/api/projects/{pid}/assignments", {"scan_ids": [], "user_id": 1, "role": "janitor"}, None),
    ("POST", "/api/scans/{sid}/reviews", {"version_id": BIG, "decision": "approve", "message": ""}, None),
    ("POST", "/api/scans/{sid}/reviews", {"version_id": 1, "decision": "maybe", "message": ""}, None),
    ("POST", "/api/scans/{sid}/comments", {"text": ""}, None),
    ("POST", "/api/scans/{sid}/comments", {"text": "x", "voxel": [10_000, 0, 0]}, None),
    ("POST", "/api/scans/{sid}/comments", {"text": "x", "slice_axis": 7, "slice_index": 1}, None),
    ("POST", "/api/scans/{sid}/comments", {"text": "x", "structure": "no_such_organ"}, None),
    ("POST", "/api/scans/{sid}/activity", {"active_seconds": -5}, None),
    ("POST", "/api/scans/{sid}/activity", {"active_seconds": 1e9}, None),
    ("PATCH", "/api/projects/{pid}/settings", {"workflow": {"review_levels": []}}, None),
    ("PATCH", "/api/projects/{pid}/settings", {"workflow": {"lease_minutes": -1}}, None),
    ("PATCH", "/api/projects/{pid}/settings", {"workflow": {"multi_reader": {"agreement_threshold": 7}}}, None),
    ("POST", "/api/projects/{pid}/reader-sets", {"scan_ids": [BIG], "n_readers": 2}, None),
    ("POST", "/api/projects/{pid}/reader-sets", {"sample_fraction": 3.0, "n_readers": 2}, None),
    ("POST", "/api/scans/{sid}/qa", {"version_id": BIG}, None),
    ("GET", "/api/projects/{pid}/findings", None, {"status": "sideways"}),
    ("GET", "/api/projects/{pid}/dashboard/throughput", None, {"days": -1}),
    ("GET", "/api/projects/{pid}/dashboard/agreement", None, {"bins": 0}),
    ("GET", "/api/projects/{pid}/dashboard/structures", None, {"basis": "tomorrow"}),
    ("POST", "/api/projects/{pid}/exports", {"format": "zip", "version": "head"}, None),
    ("POST", "/api/projects/{pid}/exports", {"format": "pants", "version": "model:nobody"}, None),
    ("POST", "/api/projects/{pid}/exports", {"format": "pants", "version": "head", "structures": ["x"]}, None),
    ("POST", "/api/projects/{pid}/evaluations", {"version_ids": [BIG], "split": "all"}, None),
    ("POST", "/api/projects/{pid}/evaluations", {"model_version_id": BIG, "split": "test"}, None),
    ("POST", "/api/projects/{pid}/evaluations", {"version_ids": [1], "nsd_tolerance_mm": -2, "split": "all"}, None),
    ("GET", "/api/projects/{pid}/leaderboard", None, {"structure": "no_such_organ"}),
    ("GET", f"/api/scans/{BIG}/task", None, None),
    ("GET", f"/api/reader-sets/{BIG}", None, None),
    ("PATCH", f"/api/comments/{BIG}", {"resolved": True}, None),
    ("GET", f"/api/evaluations/{BIG}", None, None),
    ("GET", f"/api/exports/{BIG}/download", None, None),
    ("GET", f"/api/versions/{BIG}", None, None),
]


@pytest.mark.parametrize(
    ("method", "path", "body", "params"), CASES, ids=[f"{c[0]} {c[1]} {c[2] or c[3]}" for c in CASES]
)
def test_bad_input_is_a_clear_client_error(
    client: TestClient,
    world: World,
    scan_id: int,
    method: str,
    path: str,
    body: Any,
    params: dict[str, Any] | None,
) -> None:
    url = path.format(pid=world.project.id, sid=scan_id)
    response = client.request(method, url, headers=world.headers["lead"], json=body, params=params)
    assert 400 <= response.status_code < 500, f"{response.status_code}: {response.text}"
    detail = response.json().get("detail")
    assert detail, response.text
