"""The review workflow's state machine: transitions, who may do each, review levels, approved scans read-only."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.blobstore import LocalBlobStore
from backend.core.config import Settings
from backend.labels import service as labels
from backend.models import AuditEvent, QAFinding, Scan, ScanTask, TaskTransition
from backend.registry import service as registry
from backend.workflow import service as workflow
from tests.conftest import World
from tests.integration.workflow_support import (
    act,
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


def ok_list(response: Any) -> list[dict[str, Any]]:
    """The JSON list of a 200 response."""
    assert response.status_code == 200, response.text
    return list(response.json())


def _transitions(db: Session, scan_id: int) -> list[tuple[str, str, str]]:
    rows = db.scalars(select(TaskTransition).where(TaskTransition.scan_id == scan_id).order_by(TaskTransition.id))
    return [(r.action, r.from_state, r.to_state) for r in rows]


def test_a_new_scan_gets_a_new_task_with_actions_per_role(client: TestClient, world: World) -> None:
    scan_id = new_scan(client, world, "fresh")
    annotator = task(client, world.headers["annotator"], scan_id)
    assert annotator["state"] == "new"
    assert annotator["review_levels"] == ["review"]
    assert annotator["lease"] is None and annotator["assignee"] is None
    assert {"start", "edit", "lease", "comment"} <= set(annotator["allowed_actions"])
    assert "reopen" not in annotator["allowed_actions"] and "assign" not in annotator["allowed_actions"]
    assert task(client, world.headers["viewer"], scan_id)["allowed_actions"] == []
    lead = task(client, world.headers["lead"], scan_id)["allowed_actions"]
    assert "assign" in lead and "adjudicate" in lead
    assert client.get(f"/api/scans/{scan_id}/task", headers=world.headers["outsider"]).status_code == 404


def test_full_single_level_cycle_writes_transitions_and_audit(client: TestClient, world: World, db: Session) -> None:
    scan_id = scan_with_version(client, world, "cycle")
    annotator, reviewer = world.headers["annotator"], world.headers["reviewer"]
    started = ok(act(client, annotator, scan_id, "start"))
    assert started["state"] == "annotating"
    assert started["lease"]["user_id"] == world.users["annotator"].id
    assert started["assignee"]["id"] == world.users["annotator"].id
    assert "submit" in started["allowed_actions"]
    version = ok(save(client, annotator, scan_id, started["head_version_id"]), 201)
    submitted = ok(act(client, annotator, scan_id, "submit", message="done"))
    assert submitted["state"] == "submitted"
    assert submitted["submitted_version_id"] == version["id"]
    assert submitted["submitted_by"] == world.users["annotator"].id
    assert submitted["lease"] is None
    in_review = ok(act(client, reviewer, scan_id, "start_review"))
    assert (in_review["state"], in_review["review_level"], in_review["review_level_name"]) == (
        "in_review",
        1,
        "review",
    )
    assert in_review["lease"]["user_id"] == world.users["reviewer"].id
    assert {"approve", "request_changes"} <= set(in_review["allowed_actions"])
    review = ok(
        client.post(
            f"/api/scans/{scan_id}/reviews",
            headers=reviewer,
            json={"version_id": version["id"], "decision": "approve", "message": "looks right"},
        ),
        201,
    )
    assert review["task"]["state"] == "approved"
    assert review["task"]["approved_version_id"] == version["id"]
    assert review["review_level_name"] == "review"
    assert _transitions(db, scan_id) == [
        ("start", "new", "annotating"),
        ("submit", "annotating", "submitted"),
        ("start_review", "submitted", "in_review"),
        ("approve", "in_review", "approved"),
    ]
    actions = list(
        db.scalars(
            select(AuditEvent.action)
            .where(AuditEvent.scan_id == scan_id, AuditEvent.action.like("task.%"))
            .order_by(AuditEvent.id)
        )
    )
    assert actions == ["task.start", "task.submit", "task.start_review", "task.approve"]
    history = ok_list(client.get(f"/api/scans/{scan_id}/transitions", headers=world.headers["viewer"]))
    assert [(h["action"], h["actor"]["username"], h["version_id"]) for h in history] == [
        ("start", "Annotator", None),
        ("submit", "Annotator", version["id"]),
        ("start_review", "Reviewer", version["id"]),
        ("approve", "Reviewer", version["id"]),
    ]


def test_first_human_save_implies_start(client: TestClient, world: World, db: Session) -> None:
    scan_id = scan_with_version(client, world, "implied")
    ok(save(client, world.headers["annotator"], scan_id, head(client, world, scan_id)), 201)
    state = task(client, world.headers["annotator"], scan_id)
    assert state["state"] == "annotating"
    assert state["assignee"]["id"] == world.users["annotator"].id
    assert _transitions(db, scan_id) == [("start", "new", "annotating")]


# (role, starting state, task fields, action, expected status, expected error code)
MATRIX: list[tuple[str, str, dict[str, Any], str, int, str | None]] = [
    ("viewer", "new", {}, "start", 403, "permission_denied"),
    ("annotator", "new", {}, "start", 200, None),
    ("reviewer", "pre_annotated", {}, "start", 200, None),
    ("lead", "changes_requested", {}, "start", 200, None),
    ("annotator", "approved", {}, "start", 409, "invalid_transition"),
    ("annotator", "new", {"assignee": "reviewer"}, "start", 403, "permission_denied"),
    ("lead", "new", {"assignee": "reviewer"}, "start", 200, None),
    ("annotator", "annotating", {"assignee": "annotator"}, "submit", 200, None),
    ("reviewer", "annotating", {"assignee": "annotator"}, "submit", 403, "permission_denied"),
    ("lead", "annotating", {"assignee": "annotator"}, "submit", 200, None),
    ("annotator", "submitted", {}, "submit", 409, "invalid_transition"),
    ("annotator", "submitted", {"submitted_by": "lead"}, "start_review", 403, "permission_denied"),
    ("reviewer", "submitted", {"submitted_by": "annotator"}, "start_review", 200, None),
    ("reviewer", "submitted", {"submitted_by": "reviewer"}, "start_review", 403, "permission_denied"),
    ("lead", "submitted", {"submitted_by": "lead"}, "start_review", 200, None),
    ("reviewer", "annotating", {}, "start_review", 409, "invalid_transition"),
    ("annotator", "in_review", {"submitted_by": "lead"}, "approve", 403, "permission_denied"),
    ("reviewer", "new", {}, "approve", 409, "invalid_transition"),
    ("reviewer", "in_review", {"submitted_by": "annotator", "level": 1}, "approve", 200, None),
    ("reviewer", "in_review", {"submitted_by": "annotator", "level": 1}, "request_changes", 200, None),
    ("annotator", "approved", {}, "reopen", 403, "permission_denied"),
    ("reviewer", "approved", {}, "reopen", 403, "permission_denied"),
    ("lead", "approved", {}, "reopen", 200, None),
    ("platform_admin", "approved", {}, "reopen", 200, None),
    ("lead", "annotating", {}, "reopen", 409, "invalid_transition"),
    ("reviewer", "annotating", {}, "adjudicate", 403, "permission_denied"),
    ("lead", "annotating", {}, "adjudicate", 200, None),
    ("lead", "adjudication", {}, "adjudicate", 409, "invalid_transition"),
    ("reviewer", "adjudication", {}, "resolve", 403, "permission_denied"),
    ("lead", "adjudication", {}, "resolve", 200, None),
    ("lead", "new", {}, "pre_annotate", 403, "permission_denied"),
]

TARGET = {
    "start": "annotating",
    "submit": "submitted",
    "start_review": "in_review",
    "approve": "approved",
    "request_changes": "changes_requested",
    "reopen": "annotating",
    "adjudicate": "adjudication",
    "resolve": "in_review",
}


@pytest.mark.parametrize(("role", "state", "fields", "action", "status", "code"), MATRIX)
def test_role_matrix(
    client: TestClient,
    world: World,
    db: Session,
    role: str,
    state: str,
    fields: dict[str, Any],
    action: str,
    status: int,
    code: str | None,
) -> None:
    scan_id = scan_with_version(client, world, f"m-{role}-{state}-{action}")
    values: dict[str, Any] = {"state": state, "review_level": fields.get("level", 0)}
    if "assignee" in fields:
        values["assignee_user_id"] = world.users[fields["assignee"]].id
    if "submitted_by" in fields:
        values["submitted_by_user_id"] = world.users[fields["submitted_by"]].id
    set_task(db, scan_id, **values)
    before = task(client, world.headers[role], scan_id)["allowed_actions"]
    response = act(client, world.headers[role], scan_id, action, message="please fix the liver tip")
    assert response.status_code == status, response.text
    if code is not None:
        assert response.json()["error"] == code
        assert action not in before
        assert db.get(ScanTask, scan_id).state == state  # type: ignore[union-attr]
    else:
        assert action in before
        assert response.json()["state"] == TARGET[action]


def test_outsider_and_unknown_action(client: TestClient, world: World) -> None:
    scan_id = scan_with_version(client, world, "odd")
    assert act(client, world.headers["outsider"], scan_id, "start").status_code == 404
    response = act(client, world.headers["lead"], scan_id, "fly")
    assert response.status_code == 422
    assert "unknown action" in response.json()["detail"]


def test_submit_needs_a_head_version(client: TestClient, world: World) -> None:
    scan_id = new_scan(client, world, "empty")
    ok(act(client, world.headers["annotator"], scan_id, "start"))
    response = act(client, world.headers["annotator"], scan_id, "submit")
    assert response.status_code == 422
    assert "no label version" in response.json()["detail"]


def test_request_changes_needs_a_message_then_goes_back_to_the_annotator(client: TestClient, world: World) -> None:
    scan_id = scan_with_version(client, world, "changes")
    version = submit_flow(client, world, scan_id)
    reviewer = world.headers["reviewer"]
    ok(act(client, reviewer, scan_id, "start_review"))
    empty = client.post(
        f"/api/scans/{scan_id}/reviews",
        headers=reviewer,
        json={"version_id": version, "decision": "request_changes", "message": "  "},
    )
    assert empty.status_code == 422
    review = ok(
        client.post(
            f"/api/scans/{scan_id}/reviews",
            headers=reviewer,
            json={"version_id": version, "decision": "request_changes", "message": "the tail is missing"},
        ),
        201,
    )
    assert review["task"]["state"] == "changes_requested"
    annotator_view = task(client, world.headers["annotator"], scan_id)
    assert annotator_view["assignee"]["id"] == world.users["annotator"].id
    assert "start" in annotator_view["allowed_actions"]
    assert ok(act(client, world.headers["annotator"], scan_id, "start"))["state"] == "annotating"


def test_two_level_review_needs_two_different_reviewers(
    client: TestClient, world: World, db: Session, settings: Settings
) -> None:
    response = client.patch(
        f"/api/projects/{world.project.id}/settings",
        headers=world.headers["lead"],
        json={"workflow": {"review_levels": ["junior", "senior"], "lease_minutes": 30}},
    )
    assert response.status_code == 200, response.text
    assert response.json()["settings"]["workflow"]["review_levels"] == ["junior", "senior"]
    _, senior = extra_member(db, world, settings, "senior", "reviewer")
    scan_id = scan_with_version(client, world, "two-level")
    version = submit_flow(client, world, scan_id)
    junior = world.headers["reviewer"]
    started = ok(act(client, junior, scan_id, "start_review"))
    assert started["review_levels"] == ["junior", "senior"]
    assert started["review_level_name"] == "junior"
    first = ok(
        client.post(
            f"/api/scans/{scan_id}/reviews", headers=junior, json={"version_id": version, "decision": "approve"}
        ),
        201,
    )
    assert first["review_level_name"] == "junior"
    assert (first["task"]["state"], first["task"]["review_level"], first["task"]["review_level_name"]) == (
        "in_review",
        2,
        "senior",
    )
    assert "approve" not in first["task"]["allowed_actions"]
    again = client.post(
        f"/api/scans/{scan_id}/reviews", headers=junior, json={"version_id": version, "decision": "approve"}
    )
    assert again.status_code == 403
    assert "earlier review level" in again.json()["detail"]
    assert "approve" in task(client, senior, scan_id)["allowed_actions"]
    final = ok(
        client.post(
            f"/api/scans/{scan_id}/reviews", headers=senior, json={"version_id": version, "decision": "approve"}
        ),
        201,
    )
    assert final["task"]["state"] == "approved"
    assert final["review_level"] == 2
    reviews = client.get(f"/api/scans/{scan_id}/reviews", headers=junior).json()
    assert [(r["review_level_name"], r["decision"]) for r in reviews] == [("junior", "approve"), ("senior", "approve")]


@pytest.mark.parametrize(
    "body",
    [
        {"workflow": {"review_levels": []}},
        {"workflow": {"review_levels": ["a", "a"]}},
        {"workflow": {"review_levels": "senior"}},
        {"workflow": {"lease_minutes": 0}},
        {"workflow": {"lease_minutes": True}},
        {"workflow": {"speed": 3}},
        {"workflow": {"qa": 3}},
        {"workflow": []},
    ],
)
def test_bad_workflow_settings_are_refused(client: TestClient, world: World, body: dict[str, Any]) -> None:
    response = client.patch(f"/api/projects/{world.project.id}/settings", headers=world.headers["lead"], json=body)
    assert response.status_code == 422, response.text
    assert "workflow" in response.json()["detail"]


def test_workflow_settings_only_for_leads(client: TestClient, world: World) -> None:
    response = client.patch(
        f"/api/projects/{world.project.id}/settings",
        headers=world.headers["reviewer"],
        json={"workflow": {"lease_minutes": 5}},
    )
    assert response.status_code == 403


def test_approved_scan_is_read_only_until_a_lead_reopens(client: TestClient, world: World) -> None:
    scan_id = scan_with_version(client, world, "frozen")
    version = submit_flow(client, world, scan_id)
    reviewer = world.headers["reviewer"]
    ok(act(client, reviewer, scan_id, "start_review"))
    ok(act(client, reviewer, scan_id, "approve", version_id=version))
    annotator = world.headers["annotator"]
    refused = save(client, annotator, scan_id, version)
    assert refused.status_code == 409
    assert refused.json()["error"] == "scan_approved"
    assert "reopen" in refused.json()["detail"]
    assert save(client, world.headers["lead"], scan_id, version).json()["error"] == "scan_approved"
    lease = client.post(f"/api/scans/{scan_id}/lease", headers=annotator)
    assert lease.json()["error"] == "scan_approved"
    assert "edit" not in task(client, annotator, scan_id)["allowed_actions"]
    assert act(client, annotator, scan_id, "reopen").status_code == 403
    reopened = ok(act(client, world.headers["lead"], scan_id, "reopen", message="tail missed"))
    assert reopened["state"] == "annotating"
    assert reopened["approved_version_id"] == version
    ok(save(client, annotator, scan_id, version), 201)


def test_reviewer_may_save_before_approving_but_must_approve_the_head(client: TestClient, world: World) -> None:
    scan_id = scan_with_version(client, world, "fixup")
    submitted = submit_flow(client, world, scan_id)
    reviewer = world.headers["reviewer"]
    ok(act(client, reviewer, scan_id, "start_review"))
    # While the reviewer holds the lease the annotator cannot save.
    blocked = save(client, world.headers["annotator"], scan_id, submitted)
    assert blocked.json()["error"] == "lease_held"
    fixed = ok(save(client, reviewer, scan_id, submitted), 201)
    assert task(client, reviewer, scan_id)["state"] == "in_review"
    stale = client.post(
        f"/api/scans/{scan_id}/reviews", headers=reviewer, json={"version_id": submitted, "decision": "approve"}
    )
    assert stale.status_code == 409
    assert stale.json()["error"] == "not_head"
    assert stale.json()["details"]["head_version_id"] == fixed["id"]
    approved = ok(
        client.post(
            f"/api/scans/{scan_id}/reviews", headers=reviewer, json={"version_id": fixed["id"], "decision": "approve"}
        ),
        201,
    )
    assert approved["version_id"] == fixed["id"]
    assert approved["task"]["approved_version_id"] == fixed["id"]
    assert approved["task"]["submitted_version_id"] == submitted


def test_model_version_pre_annotates_and_never_overwrites_an_approved_scan(
    client: TestClient, world: World, db: Session, blobs: LocalBlobStore
) -> None:
    model = registry.ensure_classical_model(db, blobs, world.project.id)
    assert model is not None
    promoted = registry.promoted_version(db, model)
    assert promoted is not None
    model_version_id = promoted.id
    scan_id = new_scan(client, world, "model")
    scan = db.get(Scan, scan_id)
    assert scan is not None
    author = labels.Author(user_id=None, model_version_id=model_version_id)
    liver = phantom().masks["liver"]
    version = labels.create_version(db, blobs, scan, author=author, kind="model", masks={"liver": liver})
    assert db.get(ScanTask, scan_id).state == "pre_annotated"  # type: ignore[union-attr]
    assert _transitions(db, scan_id) == [("pre_annotate", "new", "pre_annotated")]
    # A lease held by a person does not stop a model version ...
    set_task(db, scan_id, state="annotating")
    ok(client.post(f"/api/scans/{scan_id}/lease", headers=world.headers["annotator"]))
    second = labels.create_version(
        db, blobs, scan, author=author, kind="model", masks={"liver": liver}, base_version_id=version.id
    )
    assert second.parent_id == version.id
    # ... but approval does, even for a branch.
    set_task(db, scan_id, state="approved", approved_version_id=second.id)
    for branch in (False, True):
        with pytest.raises(workflow.ScanApproved, match="approved"):
            labels.create_version(
                db,
                blobs,
                scan,
                author=author,
                kind="model",
                masks={"liver": liver},
                base_version_id=second.id,
                branch=branch,
            )


def test_submit_runs_the_qa_rules_on_the_submitted_version(client: TestClient, world: World, db: Session) -> None:
    # The project expects a spleen (by default it expects only what it has labelled: here the liver).
    expected = {"workflow": {"qa": {"expected_structures": ["liver", "spleen"]}}}
    ok(client.patch(f"/api/projects/{world.project.id}/settings", headers=world.headers["lead"], json=expected))
    scan_id = scan_with_version(client, world, "qa")
    annotator = world.headers["annotator"]
    version = ok(save(client, annotator, scan_id, head(client, world, scan_id)), 201)["id"]
    assert db.scalars(select(QAFinding).where(QAFinding.version_id == version)).all() == []
    ok(act(client, annotator, scan_id, "submit"))
    findings = db.scalars(select(QAFinding).where(QAFinding.scan_id == scan_id)).all()
    submitted = [f for f in findings if f.version_id == version]
    assert submitted, "the liver-only version should raise at least one QA finding"
    open_count = sum(1 for f in findings if f.status == "open")
    assert open_count == sum(1 for f in submitted if f.status == "open")
    assert task(client, world.headers["reviewer"], scan_id)["open_findings"] == open_count > 0


def test_workflow_settings_sections_are_validated_by_quality_and_merged(client: TestClient, world: World) -> None:
    url = f"/api/projects/{world.project.id}/settings"
    lead = world.headers["lead"]
    bad = client.patch(url, headers=lead, json={"workflow": {"multi_reader": {"agreement_threshold": 3}}})
    assert bad.status_code == 422
    assert "multi_reader.agreement_threshold" in bad.json()["detail"]
    ok(client.patch(url, headers=lead, json={"workflow": {"review_levels": ["junior", "senior"]}}))
    merged = ok(client.patch(url, headers=lead, json={"workflow": {"multi_reader": {"agreement_threshold": 0.7}}}))
    assert merged["settings"]["workflow"] == {
        "review_levels": ["junior", "senior"],
        "multi_reader": {"agreement_threshold": 0.7},
    }
