"""The read log: volume, mask, combined and export reads are recorded apart from writes; leads filter them."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.blobstore import LocalBlobStore
from backend.imaging.phantom import Phantom
from backend.jobs import service as jobs
from backend.models import AuditEvent, ReadEvent
from tests.conftest import World
from tests.factories import small_phantom, upload_masks, upload_scan

pytestmark = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)


@cache
def _phantom() -> Phantom:
    return small_phantom(seed=31)


def _reads(client: TestClient, world: World, role: str = "lead", **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/projects/{world.project.id}/audit/reads", headers=world.headers[role], params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _scan_with_version(client: TestClient, world: World, case: str) -> tuple[dict[str, Any], dict[str, Any]]:
    phantom = _phantom()
    scan = upload_scan(client, world.headers["lead"], world.project.id, phantom, case)
    version = upload_masks(client, world.headers["lead"], scan["id"], {"liver": phantom.masks["liver"]}, phantom.affine)
    return scan, version


def _count(db: Session, model: type[Any]) -> int:
    return db.scalar(select(func.count()).select_from(model)) or 0


def test_volume_and_mask_reads_are_recorded_with_who_what_and_where(
    client: TestClient, world: World, db: Session
) -> None:
    scan, version = _scan_with_version(client, world, "case-read")
    writes = _count(db, AuditEvent)
    annotator = world.headers["annotator"]
    volume = client.get(f"/api/scans/{scan['id']}/volume", headers=annotator)
    assert volume.status_code == 200
    # A revalidation (304) is still a read: the browser shows the cached volume again.
    again = client.get(
        f"/api/scans/{scan['id']}/volume", headers={**annotator, "If-None-Match": volume.headers["etag"]}
    )
    assert again.status_code == 304
    assert client.get(f"/api/versions/{version['id']}/masks/liver", headers=annotator).status_code == 200
    assert client.get(f"/api/versions/{version['id']}/combined", headers=annotator).status_code == 200
    assert _count(db, AuditEvent) == writes, "reads must not land in the write log"

    page = _reads(client, world)
    assert page["total"] == 4
    combined, mask, cached, full = page["items"]  # newest first
    for event in page["items"]:
        assert event["user_id"] == world.users["annotator"].id
        assert event["scan_id"] == scan["id"] and event["project_id"] == world.project.id
        assert event["client"] == "testclient"
    assert (full["kind"], full["not_modified"], cached["kind"], cached["not_modified"]) == (
        "volume",
        False,
        "volume",
        True,
    )
    assert len(full["digest"]) == 64
    assert (mask["kind"], mask["object_id"], mask["detail"]) == ("mask", str(version["id"]), "liver")
    assert (combined["kind"], combined["object_id"]) == ("combined", str(version["id"]))


def test_refused_reads_are_not_recorded(client: TestClient, world: World, db: Session) -> None:
    scan, version = _scan_with_version(client, world, "case-refused")
    before = _count(db, ReadEvent)
    assert client.get(f"/api/scans/{scan['id']}/volume", headers=world.headers["outsider"]).status_code == 404
    assert client.get(f"/api/scans/{scan['id']}/volume").status_code == 401
    missing = client.get(f"/api/versions/{version['id']}/masks/pancreas", headers=world.headers["viewer"])
    assert missing.status_code == 404
    assert _count(db, ReadEvent) == before


@pytest.mark.blobs
def test_export_download_is_recorded(client: TestClient, world: World, db: Session, blobs: LocalBlobStore) -> None:
    job = jobs.create_job(db, project_id=world.project.id, kind="export", created_by=world.users["lead"].id)
    digest = blobs.put_bytes(b"a tar.gz archive")
    jobs.succeed(db, job, {"archive_digest": digest, "archive_name": "demo-export.tar.gz"})
    db.flush()
    response = client.get(f"/api/exports/{job.id}/download", headers=world.headers["viewer"])
    assert response.status_code == 200 and response.content == b"a tar.gz archive"
    (event,) = _reads(client, world, kind="export")["items"]
    assert event["user_id"] == world.users["viewer"].id
    assert (event["object_id"], event["digest"], event["scan_id"]) == (str(job.id), digest, None)
    assert event["detail"] == "demo-export.tar.gz"


def test_filters_and_paging(client: TestClient, world: World) -> None:
    first, version = _scan_with_version(client, world, "case-f1")
    second, _ = _scan_with_version(client, world, "case-f2")
    client.get(f"/api/scans/{first['id']}/volume", headers=world.headers["annotator"])
    client.get(f"/api/scans/{second['id']}/volume", headers=world.headers["reviewer"])
    client.get(f"/api/versions/{version['id']}/masks/liver", headers=world.headers["reviewer"])

    assert _reads(client, world, user_id=world.users["reviewer"].id)["total"] == 2
    assert _reads(client, world, scan_id=first["id"])["total"] == 2
    assert _reads(client, world, kind="mask")["total"] == 1
    both = _reads(client, world, kind="volume", user_id=world.users["annotator"].id, scan_id=first["id"])
    assert both["total"] == 1
    now = datetime.now(UTC)
    assert _reads(client, world, since=(now - timedelta(minutes=5)).isoformat())["total"] == 3
    assert _reads(client, world, until=(now - timedelta(minutes=5)).isoformat())["total"] == 0
    paged = _reads(client, world, page=2, page_size=2)
    assert paged["total"] == 3 and len(paged["items"]) == 1
    bad = client.get(
        f"/api/projects/{world.project.id}/audit/reads", headers=world.headers["lead"], params={"kind": "bogus"}
    )
    assert bad.status_code == 422


def test_only_leads_and_admins_read_the_log_and_nobody_edits_it(client: TestClient, world: World) -> None:
    url = f"/api/projects/{world.project.id}/audit/reads"
    expected = {"lead": 200, "platform_admin": 200, "annotator": 403, "reviewer": 403, "viewer": 403, "outsider": 404}
    for role, status in expected.items():
        assert client.get(url, headers=world.headers[role]).status_code == status, role
    scan, _ = _scan_with_version(client, world, "case-ro")
    client.get(f"/api/scans/{scan['id']}/volume", headers=world.headers["annotator"])
    event_id = _reads(client, world)["items"][0]["id"]
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        assert client.request(method, url, headers=world.headers["platform_admin"]).status_code == 405, method
        item = client.request(method, f"{url}/{event_id}", headers=world.headers["platform_admin"])
        assert item.status_code in (404, 405), method
    assert _reads(client, world)["total"] == 1
