"""Backup and restore (database and blobs at one point, restored into an empty instance, every mask compared) and
erasure of a case (its rows and the blobs no other row uses; an audit record with ids and counts only)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.core import migrate
from backend.core.blobstore import BlobStore, LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session, make_engine
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.flows import erasure as erasure_flows
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.main import create_app
from backend.models import AuditEvent, Job, LabelVersion, Scan
from backend.projects import service as projects
from backend.storage import backup as backups
from backend.storage import erasure
from backend.storage import service as storage
from tests.conftest import PASSWORD, World, create_pg_database, drop_pg_database
from tests.factories import small_phantom, upload_masks, upload_scan


def _database_url(kind: str, tmp_path: Path, name: str) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path / f'{name}.db'}"
        return
    full = f"maskloop_{name}_{os.getpid()}"
    url = create_pg_database(full)
    try:
        yield url
    finally:
        drop_pg_database(full)


@pytest.fixture(params=["postgresql", "sqlite"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def source_url(kind: str, tmp_path: Path) -> Iterator[str]:
    yield from _database_url(kind, tmp_path, "backup_src")


@pytest.fixture
def target_url(kind: str, tmp_path: Path) -> Iterator[str]:
    yield from _database_url(kind, tmp_path, "backup_dst")


def _populate(url: str, blobs: BlobStore, tmp_path: Path) -> None:
    """Two scans with versions (one an edit of the other), committed through the real app."""
    migrate.upgrade(url)
    engine = make_engine(url)
    settings = Settings(data_dir=tmp_path / "data", secret_key="test-secret-0123456789abcdef0123456789abcdef")
    with Session(engine) as db:
        admin = auth.create_user(db, "admin@example.org", PASSWORD, "Admin", is_admin=True)
        project = projects.create_project(db, "demo", "Demo", admin)
        db.commit()
        token = auth.issue_access_token(admin, settings, db)[0]
        db.commit()
        project_id = project.id
    app = create_app(settings)

    def _session() -> Iterator[Session]:
        with Session(engine) as session:
            yield session

    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_blob_store] = lambda: blobs
    app.dependency_overrides[get_settings] = lambda: settings
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(app) as client:
        for seed, case in ((3, "case-a"), (4, "case-b")):
            phantom = small_phantom(seed=seed)
            scan = upload_scan(client, headers, project_id, phantom, case)
            first = upload_masks(client, headers, scan["id"], phantom.masks, phantom.affine)
            edited = {"liver": np.zeros_like(phantom.masks["liver"])}
            upload_masks(client, headers, scan["id"], edited, phantom.affine, base_version_id=first["id"])
    engine.dispose()


def _all_masks(url: str, blobs: BlobStore) -> dict[tuple[str, int, int], bytes]:
    engine = make_engine(url)
    out: dict[tuple[str, int, int], bytes] = {}
    with Session(engine) as db:
        for version in db.scalars(select(LabelVersion)):
            scan = db.get(Scan, version.scan_id)
            assert scan is not None
            for sid, entry in labels.entries_by_structure(version).items():
                out[(scan.case_id, version.id, sid)] = np.packbits(labels.read_mask(blobs, scan, entry)).tobytes()
    engine.dispose()
    return out


def test_backup_restores_into_an_empty_instance_with_every_mask(
    kind: str, source_url: str, target_url: str, tmp_path: Path
) -> None:
    source_blobs = LocalBlobStore(tmp_path / "blobs-src")
    _populate(source_url, source_blobs, tmp_path)
    orphan = source_blobs.put_bytes(b"no row names me")
    report = backups.backup(source_url, source_blobs, tmp_path / "backup")
    assert report.database == kind and report.counts["scans"] == 2 and report.counts["label_versions"] == 4
    stored = {p.name for p in (tmp_path / "backup" / "blobs").glob("*/*")}
    assert orphan not in stored and len(stored) == report.blobs
    assert json.loads((tmp_path / "backup" / backups.MANIFEST).read_text())["blobs"] == report.blobs

    target_blobs = LocalBlobStore(tmp_path / "blobs-dst")
    backups.restore(target_url, target_blobs, tmp_path / "backup")
    assert backups.counts_of(target_url) == report.counts
    before, after = _all_masks(source_url, source_blobs), _all_masks(target_url, target_blobs)
    assert len(before) > 50 and after == before
    engine = make_engine(target_url)
    with Session(engine) as db:
        assert storage.check_blobs(db, target_blobs).problems == []
    engine.dispose()
    # A second restore finds data there and refuses; a damaged dump is refused before anything is written.
    with pytest.raises(Conflict, match="not empty"):
        backups.restore(target_url, target_blobs, tmp_path / "backup")
    dump = tmp_path / "backup" / report.database_file
    dump.write_bytes(dump.read_bytes() + b"x")
    with pytest.raises(InvalidInput, match="checksum"):
        backups.restore(target_url, LocalBlobStore(tmp_path / "blobs-3"), tmp_path / "backup")


@pytest.mark.parametrize("kind", ["sqlite"])
def test_a_backup_missing_a_blob_fails_and_is_not_marked_complete(kind: str, source_url: str, tmp_path: Path) -> None:
    blobs = LocalBlobStore(tmp_path / "blobs-src")
    _populate(source_url, blobs, tmp_path)
    engine = make_engine(source_url)
    with Session(engine) as db:
        image = db.scalars(select(Scan.image_digest)).first()
    engine.dispose()
    assert image is not None
    path = blobs.local_path(image)
    assert path is not None
    path.unlink()
    with pytest.raises(backups.BackupFailed, match=image):
        backups.backup(source_url, blobs, tmp_path / "backup")
    assert not (tmp_path / "backup" / backups.MANIFEST).exists()
    with pytest.raises(InvalidInput, match="interrupted"):
        backups.read_manifest(tmp_path / "backup")


@pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)
def test_erasure_removes_the_case_and_only_blobs_no_one_else_uses(
    client: TestClient, world: World, db: Session, blobs: LocalBlobStore
) -> None:
    lead = world.headers["lead"]
    phantom = small_phantom(seed=5)
    a = upload_scan(client, lead, world.project.id, phantom, "case-a")
    version_a = upload_masks(client, lead, a["id"], phantom.masks, phantom.affine)
    # case-b: the same image bytes and the same liver (shared blobs), under another case id.
    b = upload_scan(client, lead, world.project.id, phantom, "case-b")
    upload_masks(client, lead, b["id"], {"liver": phantom.masks["liver"]}, phantom.affine)
    scan_a = db.get(Scan, a["id"])
    assert scan_a is not None
    draft = labels.save_draft(db, blobs, scan_a, world.users["annotator"], version_a["id"], b'{"draft": "a"}')
    export = jobs.create_job(db, project_id=world.project.id, kind="export", created_by=world.users["lead"].id)
    archive = blobs.put_bytes(b"an archive that holds case-a")
    export.status, export.result = "succeeded", {"archive_digest": archive, "archive_name": "x.tar.gz"}
    db.flush()
    contents = erasure.collect(db, blobs, scan_a)
    # Shared with case-b: what both cases' rows name, but the archive (an export is erased with either case).
    shared = contents.digests & erasure.collect(db, blobs, db.get(Scan, b["id"])).digests - {archive}  # type: ignore[arg-type]
    assert scan_a.image_digest in shared and draft.payload_digest in contents.digests

    result = erasure_flows.erase_scan(db, blobs, scan_a, actor=world.users["platform_admin"], grace_s=0)
    assert result.contents.versions == 1 and result.contents.export_archives == 1
    assert result.blobs.removed == len(contents.digests - shared) and result.blobs.still_used == len(shared)
    stored = {info.digest for info in blobs.iter_blobs()}
    assert not (contents.digests - shared) & stored and shared <= stored
    assert client.get(f"/api/scans/{a['id']}", headers=lead).status_code == 404
    assert client.get(f"/api/exports/{export.id}/download", headers=lead).status_code == 404
    assert db.get(Job, export.id).result == erasure.ERASED  # type: ignore[union-attr]
    # case-b is whole: every blob its rows reference is there and intact.
    assert storage.check_blobs(db, blobs).problems == []
    event = db.scalars(select(AuditEvent).where(AuditEvent.action == "scan.erase")).one()
    assert event.entity_id == str(a["id"]) and "case-a" not in json.dumps(event.details)
    with pytest.raises(NotFound):
        labels.get_version(db, version_a["id"])
