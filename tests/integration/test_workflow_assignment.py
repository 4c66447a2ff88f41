"""Assignment, edit leases (heartbeat, expiry, force release) and next-task claiming, including the claim race."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from backend.auth import service as auth
from backend.core import migrate
from backend.core.blobstore import LocalBlobStore
from backend.core.config import Settings
from backend.core.db import make_engine
from backend.core.errors import NotFound
from backend.imaging.nifti import to_nifti_gz
from backend.models import AuditEvent, Project, ReaderSet, ReaderSetMember, Scan, ScanTask, User
from backend.projects import service as projects
from backend.registry import service as registry
from backend.scans import service as scans
from backend.workflow import service as workflow
from tests.conftest import PASSWORD, World, create_pg_database, drop_pg_database
from tests.integration.workflow_support import (
    act,
    expire_lease,
    extra_member,
    head,
    new_scan,
    ok,
    phantom,
    save,
    scan_with_version,
    set_task,
    submit_flow,
    task,
)


def _assign(client: TestClient, headers: dict[str, str], project_id: int, **body: Any) -> Any:
    return client.post(f"/api/projects/{project_id}/assignments", headers=headers, json=body)


def test_only_leads_assign_and_assignees_must_be_able_to_do_the_work(
    client: TestClient, world: World, db: Session
) -> None:
    pid = world.project.id
    scan_ids = [new_scan(client, world, f"as-{i}") for i in range(3)]
    annotator = world.users["annotator"].id
    refused = _assign(client, world.headers["annotator"], pid, scan_ids=scan_ids, user_id=annotator)
    assert refused.status_code == 403
    assert (
        _assign(client, world.headers["lead"], pid, scan_ids=scan_ids, user_id=world.users["viewer"].id)
        .json()["detail"]
        .startswith(f"user {world.users['viewer'].id} has role 'viewer'")
    )
    outsider = _assign(client, world.headers["lead"], pid, scan_ids=scan_ids, user_id=world.users["outsider"].id)
    assert outsider.status_code == 422
    annot_reviewer = _assign(client, world.headers["lead"], pid, scan_ids=scan_ids, user_id=annotator, role="reviewer")
    assert annot_reviewer.status_code == 422
    missing = _assign(client, world.headers["lead"], pid, scan_ids=[*scan_ids, 999999], user_id=annotator)
    assert missing.status_code == 422
    liver = next(s.id for s in projects.structures_of(db, pid) if s.name == "liver")
    done = _assign(client, world.headers["lead"], pid, scan_ids=scan_ids[:2], user_id=annotator, structure_ids=[liver])
    assert done.json() == {"updated": 2}
    mine = client.get(f"/api/projects/{pid}/worklist?assignee=me", headers=world.headers["annotator"]).json()
    assert sorted(i["scan_id"] for i in mine["items"]) == scan_ids[:2]
    assert all(
        i["assigned_structure_ids"] == [liver] and i["assignee"]["username"] == "Annotator" for i in mine["items"]
    )
    ok(_assign(client, world.headers["lead"], pid, scan_ids=[scan_ids[0]], user_id=None))
    assert task(client, world.headers["lead"], scan_ids[0])["assignee"] is None
    events = db.scalars(select(AuditEvent).where(AuditEvent.action == "task.assign")).all()
    assert [e.details["count"] for e in events] == [2, 1]


def test_assignment_steers_who_may_start(client: TestClient, world: World) -> None:
    scan_id = scan_with_version(client, world, "steer")
    ok(
        _assign(
            client, world.headers["lead"], world.project.id, scan_ids=[scan_id], user_id=world.users["annotator"].id
        )
    )
    assert act(client, world.headers["reviewer"], scan_id, "start").status_code == 403
    assert ok(act(client, world.headers["annotator"], scan_id, "start"))["state"] == "annotating"


def test_reassignment_takes_the_lease_away(client: TestClient, world: World, db: Session, settings: Settings) -> None:
    scan_id = scan_with_version(client, world, "reassign")
    ok(act(client, world.headers["annotator"], scan_id, "start"))
    other, other_headers = extra_member(db, world, settings, "second", "annotator")
    ok(_assign(client, world.headers["lead"], world.project.id, scan_ids=[scan_id], user_id=other.id))
    moved = task(client, other_headers, scan_id)
    assert moved["assignee"]["id"] == other.id
    assert moved["lease"] is None
    assert "submit" in moved["allowed_actions"]


def test_lease_acquire_heartbeat_conflict_expiry_and_release(client: TestClient, world: World, db: Session) -> None:
    scan_id = scan_with_version(client, world, "lease")
    annotator, reviewer = world.headers["annotator"], world.headers["reviewer"]
    taken = ok(client.post(f"/api/scans/{scan_id}/lease", headers=annotator))
    expires = datetime.fromisoformat(taken["lease"]["expires_at"])
    assert timedelta(minutes=19) < expires - datetime.now(UTC) <= timedelta(minutes=20)
    assert taken["lease"]["username"] == "Annotator"
    # Heartbeat: pretend the lease is about to run out, renew it, and see the expiry move forward.
    set_task(db, scan_id, lease_expires_at=datetime.now(UTC) + timedelta(seconds=30))
    renewed = ok(client.post(f"/api/scans/{scan_id}/lease", headers=annotator))
    assert datetime.fromisoformat(renewed["lease"]["expires_at"]) - datetime.now(UTC) > timedelta(minutes=19)
    held = client.post(f"/api/scans/{scan_id}/lease", headers=reviewer)
    assert held.status_code == 409
    body = held.json()
    assert body["error"] == "lease_held"
    assert body["details"]["holder"] == "Annotator"
    assert body["details"]["holder_user_id"] == world.users["annotator"].id
    assert body["details"]["expires_at"] == datetime.fromisoformat(renewed["lease"]["expires_at"]).isoformat()
    assert "Annotator" in body["detail"]
    refused_save = save(client, reviewer, scan_id, head(client, world, scan_id))
    assert refused_save.json()["error"] == "lease_held"
    assert "edit" not in task(client, reviewer, scan_id)["allowed_actions"]
    # A non-holder who is not a lead may not release it.
    assert client.delete(f"/api/scans/{scan_id}/lease", headers=reviewer).status_code == 403
    # Without heartbeats the lease expires and someone else can take it.
    expire_lease(db, scan_id)
    assert task(client, reviewer, scan_id)["lease"] is None
    ok(save(client, reviewer, scan_id, head(client, world, scan_id)), 201)
    took = ok(client.post(f"/api/scans/{scan_id}/lease", headers=reviewer))
    assert took["lease"]["user_id"] == world.users["reviewer"].id
    assert client.post(f"/api/scans/{scan_id}/lease", headers=annotator).json()["error"] == "lease_held"
    # A lead force-releases; the event says it was forced.
    released = ok(client.delete(f"/api/scans/{scan_id}/lease", headers=world.headers["lead"]))
    assert released["lease"] is None
    assert db.get(ScanTask, scan_id).lease_user_id is None  # type: ignore[union-attr]
    event = db.scalars(select(AuditEvent).where(AuditEvent.action == "task.lease_release")).one()
    assert event.details == {"holder_user_id": world.users["reviewer"].id, "forced": True}
    ok(client.post(f"/api/scans/{scan_id}/lease", headers=annotator))
    ok(client.delete(f"/api/scans/{scan_id}/lease", headers=annotator))
    assert task(client, annotator, scan_id)["lease"] is None


def test_viewer_cannot_lease_and_lease_minutes_setting_applies(client: TestClient, world: World) -> None:
    scan_id = new_scan(client, world, "short")
    assert client.post(f"/api/scans/{scan_id}/lease", headers=world.headers["viewer"]).status_code == 403
    ok(
        client.patch(
            f"/api/projects/{world.project.id}/settings",
            headers=world.headers["lead"],
            json={"workflow": {"lease_minutes": 5}},
        )
    )
    lease = ok(client.post(f"/api/scans/{scan_id}/lease", headers=world.headers["annotator"]))["lease"]
    remaining = datetime.fromisoformat(lease["expires_at"]) - datetime.now(UTC)
    assert timedelta(minutes=4) < remaining <= timedelta(minutes=5)


def test_reader_set_members_save_branches_without_the_lease(client: TestClient, world: World, db: Session) -> None:
    scan_id = scan_with_version(client, world, "readers")
    base = head(client, world, scan_id)
    ok(client.post(f"/api/scans/{scan_id}/lease", headers=world.headers["lead"]))
    annotator = world.headers["annotator"]
    assert save(client, annotator, scan_id, base, branch=True).json()["error"] == "lease_held"
    reader_set = ReaderSet(project_id=world.project.id, scan_id=scan_id, base_version_id=base, status="open")
    db.add(reader_set)
    db.flush()
    db.add(ReaderSetMember(reader_set_id=reader_set.id, user_id=world.users["annotator"].id))
    db.flush()
    branch = ok(save(client, annotator, scan_id, base, branch=True), 201)
    assert branch["is_branch"] is True
    # Only branches: moving the head still needs the lease.
    assert save(client, annotator, scan_id, base).json()["error"] == "lease_held"
    reader_set.status = "complete"
    db.flush()
    assert save(client, annotator, scan_id, base, branch=True).json()["error"] == "lease_held"


def _prioritise(db: Session, priorities: dict[int, float]) -> None:
    for scan_id, priority in priorities.items():
        workflow.update_priority(db, scan_id, priority)


def _next(client: TestClient, headers: dict[str, str], project_id: int, kind: str = "annotate") -> Any:
    return client.post(f"/api/projects/{project_id}/next-task", headers=headers, json={"kind": kind})


def test_next_task_by_priority_then_import_order_skipping_leases_and_others_assignments(
    client: TestClient, world: World, db: Session, settings: Settings
) -> None:
    pid = world.project.id
    ids = {name: new_scan(client, world, name) for name in ("c-low", "b-high", "a-high", "d-mid", "e-theirs")}
    _prioritise(db, {ids["c-low"]: 0.5, ids["b-high"]: 3.0, ids["a-high"]: 3.0, ids["d-mid"]: 2.0})
    _prioritise(db, {ids["e-theirs"]: 9.0})
    other, other_headers = extra_member(db, world, settings, "other", "annotator")
    ok(_assign(client, world.headers["lead"], pid, scan_ids=[ids["e-theirs"]], user_id=other.id))
    annotator = world.headers["annotator"]
    first = ok(_next(client, annotator, pid))
    assert first["case_id"] == "b-high"  # ties go in import order
    assert first["lease"]["user_id"] == world.users["annotator"].id
    assert first["state"] == "new"
    # Asking again keeps the caller's own lease: the same scan is still theirs and highest.
    assert ok(_next(client, annotator, pid))["case_id"] == "b-high"
    reviewer = world.headers["reviewer"]
    assert ok(_next(client, reviewer, pid))["case_id"] == "a-high"
    assert ok(_next(client, world.headers["lead"], pid))["case_id"] == "d-mid"
    assert ok(_next(client, other_headers, pid))["case_id"] == "e-theirs"
    _, third = extra_member(db, world, settings, "third", "annotator")
    assert ok(_next(client, third, pid))["case_id"] == "c-low"
    _, fourth = extra_member(db, world, settings, "fourth", "annotator")
    nothing = _next(client, fourth, pid)
    assert nothing.status_code == 204
    # An expired lease frees its scan again.
    expire_lease(db, ids["b-high"])
    assert ok(_next(client, fourth, pid))["case_id"] == "b-high"
    assert _next(client, world.headers["viewer"], pid).status_code == 403
    claims = db.scalars(select(AuditEvent).where(AuditEvent.action == "task.claim")).all()
    assert len(claims) == 7


def test_next_review_task_skips_own_submissions(client: TestClient, world: World, db: Session) -> None:
    pid = world.project.id
    mine = scan_with_version(client, world, "r-mine")
    theirs = scan_with_version(client, world, "r-theirs")
    submit_flow(client, world, theirs)
    ok(act(client, world.headers["reviewer"], mine, "start"))
    ok(save(client, world.headers["reviewer"], mine, head(client, world, mine)), 201)
    ok(act(client, world.headers["reviewer"], mine, "submit"))
    _prioritise(db, {mine: 5.0, theirs: 1.0})
    claimed = ok(_next(client, world.headers["reviewer"], pid, "review"))
    assert claimed["scan_id"] == theirs
    assert "start_review" in claimed["allowed_actions"]
    assert _next(client, world.headers["annotator"], pid, "review").status_code == 403
    assert ok(_next(client, world.headers["lead"], pid, "review"))["scan_id"] == mine
    bad = client.post(f"/api/projects/{pid}/next-task", headers=world.headers["lead"], json={"kind": "paint"})
    assert bad.status_code == 422


# --- the claim race, on committed transactions ------------------------------------------------------------------


@dataclass
class RaceWorld:
    """A committed project with scans and annotators in its own database."""

    factory: sessionmaker[Session]
    project_id: int
    scan_ids: list[int]
    user_ids: list[int]


@pytest.fixture
def race(tmp_path: Path) -> Iterator[RaceWorld]:
    name = f"maskloop_claims_{os.getpid()}"
    url = create_pg_database(name)
    migrate.upgrade(url)
    engine: Engine = make_engine(url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    blobs = LocalBlobStore(tmp_path / "blobs")
    data = to_nifti_gz(phantom().volume, phantom().affine)
    with factory() as db:
        admin = auth.create_user(db, "lead@example.org", PASSWORD, is_admin=True)
        project = projects.create_project(db, "claims", "Claims", admin)
        scan_ids = []
        for i in range(3):
            scan = scans.import_nifti(db, blobs, project, admin, data, f"case-{i}.nii.gz")
            workflow.update_priority(db, scan.id, float(i))
            scan_ids.append(scan.id)
        user_ids = []
        for i in range(6):
            user = auth.create_user(db, f"reader{i}@example.org", PASSWORD)
            projects.set_membership(db, project.id, user, "annotator", admin)
            user_ids.append(user.id)
        db.commit()
        ids = (project.id, scan_ids, user_ids)
    try:
        yield RaceWorld(factory, *ids)
    finally:
        engine.dispose()
        drop_pg_database(name)


def test_concurrent_next_task_calls_never_claim_the_same_scan(race: RaceWorld) -> None:
    barrier = threading.Barrier(len(race.user_ids))
    outcomes: list[int | Exception | None] = [None] * len(race.user_ids)

    def run(index: int) -> None:
        try:
            with race.factory() as db:
                project = db.get(Project, race.project_id)
                user = db.get(User, race.user_ids[index])
                assert project is not None and user is not None
                barrier.wait()
                claimed = workflow.next_task(db, project, user, "annotator", "annotate")
                db.commit()
                outcomes[index] = claimed.scan_id if claimed is not None else None
        except Exception as exc:
            outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(race.user_ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not [o for o in outcomes if isinstance(o, Exception)], outcomes
    claimed = [o for o in outcomes if isinstance(o, int)]
    assert sorted(claimed) == sorted(race.scan_ids)  # every scan claimed exactly once
    assert outcomes.count(None) == len(race.user_ids) - len(race.scan_ids)
    with race.factory() as db:
        holders = {
            t.scan_id: t.lease_user_id for t in db.scalars(select(ScanTask).where(ScanTask.scan_id.in_(race.scan_ids)))
        }
    for index, outcome in enumerate(outcomes):
        if isinstance(outcome, int):
            assert holders[outcome] == race.user_ids[index]


def test_claim_waits_for_an_uncommitted_claim_and_then_skips_it(race: RaceWorld) -> None:
    """A claims the top scan but has not committed; B's conditional UPDATE waits, then moves on to the next scan."""
    first = race.factory()
    project = first.get(Project, race.project_id)
    user_a = first.get(User, race.user_ids[0])
    assert project is not None and user_a is not None
    top = workflow.next_task(first, project, user_a, "annotator", "annotate")
    assert top is not None and top.scan_id == race.scan_ids[-1]
    result: dict[str, int | None] = {}

    def other() -> None:
        with race.factory() as db:
            project_b = db.get(Project, race.project_id)
            user_b = db.get(User, race.user_ids[1])
            assert project_b is not None and user_b is not None
            claimed = workflow.next_task(db, project_b, user_b, "annotator", "annotate")
            db.commit()
            result["scan"] = claimed.scan_id if claimed else None

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(timeout=0.5)
    assert thread.is_alive(), "B should wait on A's row lock"
    first.commit()
    first.close()
    thread.join(timeout=30)
    assert result["scan"] == race.scan_ids[-2]


def test_store_attention_sets_the_task_priority_to_the_top_structure(
    db: Session, world: World, client: TestClient, blobs: LocalBlobStore
) -> None:
    scan_id = new_scan(client, world, "prio")
    scan = db.get(Scan, scan_id)
    assert scan is not None
    structures = {s.name: s for s in projects.structures_of(db, world.project.id)}
    shape = tuple(scan.shape)
    small, big = np.zeros(shape, dtype=bool), np.zeros(shape, dtype=bool)
    small[10:12, 10:12, 5:6] = True
    big[10:20, 10:20, 5:9] = True
    registry.store_attention(
        db,
        blobs,
        scan,
        [
            registry.AttentionInput(structures["liver"], small, 1, 1, 0),
            registry.AttentionInput(structures["spleen"], big, 1, 1, 0),
        ],
        job_id=None,
        model_version_ids=[],
    )
    expected = 400 / scan.slice_count
    assert task(client, world.headers["lead"], scan_id)["priority"] == pytest.approx(expected)
    with pytest.raises(NotFound):
        workflow.update_priority(db, 987654, 1.0)


def test_concurrent_lease_requests_on_one_scan_have_one_winner(race: RaceWorld) -> None:
    barrier = threading.Barrier(len(race.user_ids))
    outcomes: list[object] = [None] * len(race.user_ids)
    scan_id = race.scan_ids[0]

    def run(index: int) -> None:
        with race.factory() as db:
            scan = db.get(Scan, scan_id)
            user = db.get(User, race.user_ids[index])
            assert scan is not None and user is not None
            barrier.wait()
            try:
                outcomes[index] = workflow.acquire_lease(db, scan, user, "annotator").lease_user_id
                db.commit()
            except workflow.LeaseHeld as exc:
                db.rollback()
                outcomes[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(race.user_ids))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    winners = [o for o in outcomes if isinstance(o, int)]
    assert len(winners) == 1
    losers = [o for o in outcomes if isinstance(o, workflow.LeaseHeld)]
    assert len(losers) == len(race.user_ids) - 1
    assert all(e.details["holder_user_id"] == winners[0] for e in losers)
    with race.factory() as db:
        assert db.get(ScanTask, scan_id).lease_user_id == winners[0]  # type: ignore[union-attr]
