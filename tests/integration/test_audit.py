"""The audit log: every write appends one event in its own transaction; leads filter and page through it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from typing import Any

import numpy as np
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import Phantom
from backend.models import AuditEvent, Membership
from tests.conftest import World
from tests.factories import post_patch, small_phantom, upload_masks, upload_scan

pytestmark = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2 parameters: hashes still verify for real, but building a world takes milliseconds."""
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@cache
def _phantom() -> Phantom:
    return small_phantom(seed=21)


def _audit(client: TestClient, world: World, **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/projects/{world.project.id}/audit", headers=world.headers["lead"], params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _event_count(db: Session) -> int:
    return db.scalar(select(func.count()).select_from(AuditEvent)) or 0


def _structure_ids(client: TestClient, world: World) -> dict[str, int]:
    schema = client.get(f"/api/projects/{world.project.id}/schema", headers=world.headers["viewer"]).json()
    return {s["name"]: s["id"] for s in schema["structures"]}


def _head(client: TestClient, world: World, scan_id: int) -> int:
    return int(client.get(f"/api/scans/{scan_id}", headers=world.headers["viewer"]).json()["head_version_id"])


def _patch(client: TestClient, world: World, role: str, scan_id: int, structure: str = "liver") -> dict[str, Any]:
    box = np.ones((2, 3, 2), dtype=bool)
    response = post_patch(
        client, world.headers[role], scan_id, _head(client, world, scan_id), [(structure, (8, 8, 8), box)]
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _at(event: dict[str, Any]) -> datetime:
    moment = datetime.fromisoformat(event["at"])
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# --------------------------------------------------------------------------- every write leaves one event


def test_scan_import_is_audited(client: TestClient, world: World, db: Session) -> None:
    before = _event_count(db)
    scan = upload_scan(client, world.headers["lead"], world.project.id, _phantom(), "case-audit")
    assert _event_count(db) == before + 1
    (event,) = _audit(client, world, action="scan.import")["items"]
    assert event["actor_user_id"] == world.users["lead"].id
    assert event["project_id"] == world.project.id
    assert event["scan_id"] == scan["id"]
    assert event["entity_type"] == "scan"
    assert event["entity_id"] == str(scan["id"])
    assert event["details"]["case_id"] == "case-audit"
    assert event["details"]["format"] == "nifti"
    assert event["details"]["shape"] == [64, 64, 32]


def test_version_create_is_audited_with_parent_and_changed_structures(
    client: TestClient, world: World, db: Session
) -> None:
    phantom = _phantom()
    ids = _structure_ids(client, world)
    scan = upload_scan(client, world.headers["lead"], world.project.id, phantom, "case-v")
    masks = {name: phantom.masks[name] for name in ("liver", "spleen")}
    first = upload_masks(client, world.headers["lead"], scan["id"], masks, phantom.affine)
    before = _event_count(db)
    child = _patch(client, world, "annotator", scan["id"], "spleen")
    # The save, and the workflow transition it implies (the first human edit starts annotating).
    assert _event_count(db) == before + 2
    assert [e["action"] for e in _audit(client, world, scan_id=scan["id"])["items"][:2]] == [
        "label_version.create",
        "task.start",
    ]
    newest, oldest = _audit(client, world, action="label_version.create")["items"]
    assert newest["actor_user_id"] == world.users["annotator"].id
    assert newest["project_id"] == world.project.id
    assert newest["scan_id"] == scan["id"]
    assert newest["entity_type"] == "label_version"
    assert newest["entity_id"] == str(child["id"])
    assert newest["details"]["parent_id"] == first["id"]
    assert newest["details"]["kind"] == "human"
    assert newest["details"]["branch"] is False
    assert newest["details"]["changed"] == [ids["spleen"]]
    assert newest["details"]["new_bytes"] == child["new_bytes"]
    # The first version has no parent, so every structure of the schema counts as changed.
    assert oldest["actor_user_id"] == world.users["lead"].id
    assert oldest["entity_id"] == str(first["id"])
    assert oldest["details"]["parent_id"] is None
    assert oldest["details"]["kind"] == "import"
    assert sorted(oldest["details"]["changed"]) == sorted(ids.values())


def test_membership_changes_are_audited(client: TestClient, world: World, db: Session) -> None:
    url = f"/api/projects/{world.project.id}/members"
    outsider = world.users["outsider"]
    lead = world.headers["lead"]
    assert client.put(url, headers=lead, json={"user_id": outsider.id, "role": "annotator"}).status_code == 200
    assert client.put(url, headers=lead, json={"user_id": outsider.id, "role": "reviewer"}).status_code == 200
    assert client.delete(f"{url}/{outsider.id}", headers=lead).status_code == 204
    membership_id = db.scalar(
        select(AuditEvent.entity_id).where(AuditEvent.action == "membership.set").order_by(AuditEvent.id.desc())
    )
    removed, changed, added = _audit(client, world, actor_user_id=world.users["lead"].id)["items"]
    assert [removed["action"], changed["action"], added["action"]] == [
        "membership.remove",
        "membership.set",
        "membership.set",
    ]
    for event in (removed, changed, added):
        assert event["actor_user_id"] == world.users["lead"].id
        assert event["project_id"] == world.project.id
        assert event["scan_id"] is None
        assert event["entity_type"] == "membership"
        assert event["entity_id"] == membership_id
        assert event["details"]["user_id"] == outsider.id
    assert added["details"]["role"] == "annotator"
    assert added["details"]["previous_role"] is None
    assert changed["details"] == {"user_id": outsider.id, "role": "reviewer", "previous_role": "annotator"}
    assert removed["details"]["previous_role"] == "reviewer"
    gone = db.scalar(
        select(Membership).where(Membership.project_id == world.project.id, Membership.user_id == outsider.id)
    )
    assert gone is None


def test_user_and_token_creation_are_audited(client: TestClient, world: World, db: Session) -> None:
    admin = world.headers["platform_admin"]
    made = client.post("/api/users", headers=admin, json={"email": "worker@example.org", "is_service": True})
    assert made.status_code == 201, made.text
    user_id = made.json()["id"]
    event = db.scalar(
        select(AuditEvent).where(AuditEvent.action == "user.create", AuditEvent.entity_id == str(user_id))
    )
    assert event is not None
    assert event.actor_user_id == world.users["platform_admin"].id
    assert event.project_id is None
    assert event.entity_type == "user"
    assert event.details == {"email": "worker@example.org", "is_admin": False, "is_service": True}
    token = client.post("/api/auth/tokens", headers=admin, json={"name": "gpu", "user_id": user_id})
    assert token.status_code == 201
    token_event = db.scalar(select(AuditEvent).where(AuditEvent.action == "token.create"))
    assert token_event is not None
    assert token_event.actor_user_id == world.users["platform_admin"].id
    assert token_event.entity_id == str(token.json()["id"])
    assert token_event.details == {"owner_user_id": user_id, "name": "gpu"}
    # The audit log never holds the secret itself.
    assert token.json()["token"] not in str(token_event.details)


def test_project_creation_is_audited(client: TestClient, world: World) -> None:
    admin = world.headers["platform_admin"]
    created = client.post("/api/projects", headers=admin, json={"slug": "audited", "name": "Audited"})
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    page = client.get(f"/api/projects/{project_id}/audit", headers=admin).json()
    # The project, then the weightless classical model registered and promoted with it.
    actions = [e["action"] for e in reversed(page["items"])]
    assert actions == ["project.create", "model.create", "model_version.create", "model_version.promote"]
    event = page["items"][-1]
    assert event["action"] == "project.create"
    assert event["actor_user_id"] == world.users["platform_admin"].id
    assert event["project_id"] == project_id
    assert event["entity_type"] == "project"
    assert event["entity_id"] == str(project_id)
    assert event["details"] == {"slug": "audited", "structures": 28}
    # Events of one project never show in another's log.
    assert all(e["project_id"] == world.project.id for e in _audit(client, world)["items"])


# --------------------------------------------------------------------------- failed writes leave nothing


def test_failed_writes_leave_no_audit_event(client: TestClient, world: World, db: Session) -> None:
    phantom = _phantom()
    scan = upload_scan(client, world.headers["lead"], world.project.id, phantom, "case-f")
    base = upload_masks(client, world.headers["lead"], scan["id"], {"liver": phantom.masks["liver"]}, phantom.affine)
    _patch(client, world, "annotator", scan["id"])
    before = _event_count(db)
    box = np.ones((2, 2, 2), dtype=bool)
    stale = post_patch(client, world.headers["reviewer"], scan["id"], base["id"], [("liver", (1, 1, 1), box)])
    assert stale.status_code == 409
    unknown = post_patch(
        client, world.headers["reviewer"], scan["id"], _head(client, world, scan["id"]), [("x", (1, 1, 1), box)]
    )
    assert unknown.status_code == 422
    denied = post_patch(
        client, world.headers["viewer"], scan["id"], _head(client, world, scan["id"]), [("liver", (1, 1, 1), box)]
    )
    assert denied.status_code == 403
    duplicate = client.post(
        f"/api/projects/{world.project.id}/scans",
        headers=world.headers["lead"],
        files={"file": ("case-f.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data={"case_id": "case-f"},
    )
    assert duplicate.status_code == 409
    member = client.put(
        f"/api/projects/{world.project.id}/members",
        headers=world.headers["lead"],
        json={"user_id": world.users["outsider"].id, "role": "admin"},
    )
    assert member.status_code == 403
    assert _event_count(db) == before
    # A retried save with the same idempotency key returns the same version and is not audited twice.
    head = _head(client, world, scan["id"])
    first = post_patch(
        client, world.headers["reviewer"], scan["id"], head, [("liver", (1, 1, 1), box)], idempotency_key="k1"
    )
    again = post_patch(
        client, world.headers["reviewer"], scan["id"], head, [("liver", (1, 1, 1), box)], idempotency_key="k1"
    )
    assert first.status_code == again.status_code == 201
    assert first.json()["id"] == again.json()["id"]
    assert _event_count(db) == before + 1


# --------------------------------------------------------------------------- reading the log


@pytest.fixture
def history(client: TestClient, world: World) -> dict[str, Any]:
    """Two scans, a ground-truth import and two edits by different people, in a known order."""
    phantom = _phantom()
    lead = world.headers["lead"]
    scan_a = upload_scan(client, lead, world.project.id, phantom, "case-a")
    scan_b = upload_scan(client, lead, world.project.id, phantom, "case-b")
    truth = upload_masks(client, lead, scan_a["id"], {"liver": phantom.masks["liver"]}, phantom.affine)
    edit = _patch(client, world, "annotator", scan_a["id"])
    review = _patch(client, world, "reviewer", scan_a["id"], "spleen")
    return {"a": scan_a, "b": scan_b, "truth": truth, "edit": edit, "review": review}


def test_log_is_newest_first_and_filters_by_actor_scan_and_action(
    client: TestClient, world: World, history: dict[str, Any]
) -> None:
    everything = _audit(client, world)
    # The world's own setup wrote project.create and four membership.set events before ours; the ground-truth
    # import ran the QA rules, and the first human edit started the scan's task.
    assert everything["total"] == 5 + 7
    assert len(everything["items"]) == 12
    ids = [e["id"] for e in everything["items"]]
    assert ids == sorted(ids, reverse=True)
    times = [_at(e) for e in everything["items"]]
    assert times == sorted(times, reverse=True)
    assert [e["action"] for e in everything["items"][:7]] == [
        "label_version.create",
        "label_version.create",
        "task.start",
        "qa.run",
        "label_version.create",
        "scan.import",
        "scan.import",
    ]
    assert everything["items"][-1]["action"] == "project.create"

    by_annotator = _audit(client, world, actor_user_id=world.users["annotator"].id, action="label_version.create")
    assert by_annotator["total"] == 1
    assert [e["entity_id"] for e in by_annotator["items"]] == [str(history["edit"]["id"])]
    assert _audit(client, world, actor_user_id=world.users["annotator"].id)["total"] == 2

    on_a = _audit(client, world, scan_id=history["a"]["id"], action="label_version.create")
    assert on_a["total"] == 3
    assert [e["entity_id"] for e in on_a["items"]] == [
        str(history["review"]["id"]),
        str(history["edit"]["id"]),
        str(history["truth"]["id"]),
    ]
    assert _audit(client, world, scan_id=history["a"]["id"])["total"] == 6
    on_b = _audit(client, world, scan_id=history["b"]["id"])
    assert [(e["action"], e["entity_id"]) for e in on_b["items"]] == [("scan.import", str(history["b"]["id"]))]

    imports = _audit(client, world, action="scan.import")
    assert [e["scan_id"] for e in imports["items"]] == [history["b"]["id"], history["a"]["id"]]

    combined = _audit(client, world, action="label_version.create", actor_user_id=world.users["lead"].id)
    assert [e["entity_id"] for e in combined["items"]] == [str(history["truth"]["id"])]
    assert _audit(client, world, action="no.such.action") == {"items": [], "total": 0, "page": 1, "page_size": 100}


def test_log_paginates_without_gaps_or_overlaps(client: TestClient, world: World, history: dict[str, Any]) -> None:
    everything = [e["id"] for e in _audit(client, world)["items"]]
    pages = []
    for page in (1, 2, 3, 4):
        body = _audit(client, world, page=page, page_size=3)
        assert body["total"] == len(everything)
        assert body["page"] == page
        assert body["page_size"] == 3
        pages.append([e["id"] for e in body["items"]])
    assert [len(p) for p in pages] == [3, 3, 3, 3]
    assert [event_id for page in pages for event_id in page] == everything
    assert _audit(client, world, page=5, page_size=3)["items"] == []
    bad = client.get(f"/api/projects/{world.project.id}/audit", headers=world.headers["lead"], params={"page": 0})
    assert bad.status_code == 422


def test_log_filters_by_time_window(client: TestClient, world: World, history: dict[str, Any]) -> None:
    on_a = _audit(client, world, scan_id=history["a"]["id"])["items"]
    by_entity = {(e["action"], e["entity_id"]): e for e in on_a}
    review = by_entity[("label_version.create", str(history["review"]["id"]))]
    edit = by_entity[("label_version.create", str(history["edit"]["id"]))]
    truth = by_entity[("label_version.create", str(history["truth"]["id"]))]

    def between(since: datetime | None = None, until: datetime | None = None) -> list[int]:
        """The unfiltered log's events in [since, until), newest first: what the server's filter must return."""
        return [e["id"] for e in on_a if (since is None or _at(e) >= since) and (until is None or _at(e) < until)]

    # since is inclusive, until exclusive.
    since_edit = _audit(client, world, scan_id=history["a"]["id"], since=_at(edit).isoformat())
    assert [e["id"] for e in since_edit["items"]] == between(since=_at(edit))
    assert since_edit["items"][-1]["id"] == edit["id"] and since_edit["items"][0]["id"] == review["id"]
    until_edit = _audit(client, world, scan_id=history["a"]["id"], until=_at(edit).isoformat())
    assert [e["id"] for e in until_edit["items"]] == between(until=_at(edit))
    assert edit["id"] not in [e["id"] for e in until_edit["items"]]
    assert truth["id"] in [e["id"] for e in until_edit["items"]]
    window = _audit(
        client, world, scan_id=history["a"]["id"], since=_at(truth).isoformat(), until=_at(review).isoformat()
    )
    assert [e["id"] for e in window["items"]] == between(_at(truth), _at(review))
    assert window["items"][-1]["id"] == truth["id"] and review["id"] not in [e["id"] for e in window["items"]]
    # The same instant written in another time zone selects the same events.
    elsewhere = timezone(timedelta(hours=5, minutes=30))
    since_local = _audit(client, world, scan_id=history["a"]["id"], since=_at(edit).astimezone(elsewhere).isoformat())
    assert [e["id"] for e in since_local["items"]] == between(since=_at(edit))
    until_local = _audit(client, world, scan_id=history["a"]["id"], until=_at(edit).astimezone(elsewhere).isoformat())
    assert [e["id"] for e in until_local["items"]] == between(until=_at(edit))
    # A time without an offset is read as UTC.
    naive = _at(edit).astimezone(UTC).replace(tzinfo=None).isoformat()
    assert [e["id"] for e in _audit(client, world, scan_id=history["a"]["id"], since=naive)["items"]] == between(
        since=_at(edit)
    )
    future = datetime.now(UTC) + timedelta(hours=1)
    assert _audit(client, world, since=future.isoformat())["total"] == 0
    assert _audit(client, world, until=future.isoformat())["total"] == _audit(client, world)["total"] == 12


def test_only_leads_and_admins_read_the_log(client: TestClient, world: World, db: Session) -> None:
    url = f"/api/projects/{world.project.id}/audit"
    statuses = {role: client.get(url, headers=headers).status_code for role, headers in world.headers.items()}
    assert statuses == {
        "platform_admin": 200,
        "lead": 200,
        "annotator": 403,
        "reviewer": 403,
        "viewer": 403,
        "outsider": 404,
    }
    # Reading the log is not itself a write: it appends nothing.
    before = _event_count(db)
    _audit(client, world)
    assert _event_count(db) == before
