"""Reviews with located comments, comment threads, editing-time reports and the worklist (filters, sort, pages)."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event, select
from sqlalchemy.orm import Session

from backend.models import ActivityDaily, AuditEvent
from backend.workflow import service as workflow
from tests.conftest import World
from tests.integration.workflow_support import (
    act,
    head,
    new_scan,
    ok,
    save,
    scan_with_version,
    set_task,
    submit_flow,
    task,
)


def _review_ready(client: TestClient, world: World, case_id: str) -> tuple[int, int]:
    scan_id = scan_with_version(client, world, case_id)
    version = submit_flow(client, world, scan_id)
    ok(act(client, world.headers["reviewer"], scan_id, "start_review"))
    return scan_id, version


def test_request_changes_with_located_comments(client: TestClient, world: World, db: Session) -> None:
    scan_id, version = _review_ready(client, world, "comments")
    reviewer = world.headers["reviewer"]
    review = ok(
        client.post(
            f"/api/scans/{scan_id}/reviews",
            headers=reviewer,
            json={
                "version_id": version,
                "decision": "request_changes",
                "message": "two problems",
                "comments": [
                    {"structure": "liver", "slice_axis": 2, "slice_index": 12, "text": "leak into the kidney"},
                    {"structure": "spleen", "voxel": [10, 20, 30], "text": "missed tip"},
                    {"text": "general remark"},
                ],
            },
        ),
        201,
    )
    assert review["decision"] == "request_changes"
    assert review["reviewer"]["username"] == "Reviewer"
    assert review["review_level"] == 1
    located = review["comments"]
    assert [(c["structure"], c["slice_axis"], c["slice_index"], c["voxel"]) for c in located] == [
        ("liver", 2, 12, None),
        ("spleen", None, None, [10, 20, 30]),
        (None, None, None, None),
    ]
    assert all(c["review_id"] == review["id"] and c["version_id"] == version for c in located)
    assert all(c["author"]["id"] == world.users["reviewer"].id and c["resolved"] is False for c in located)
    reviews = client.get(f"/api/scans/{scan_id}/reviews", headers=world.headers["viewer"]).json()
    assert [r["id"] for r in reviews] == [review["id"]]
    assert len(reviews[0]["comments"]) == 3
    # The annotator answers with a comment of their own and resolves the reviewer's.
    annotator = world.headers["annotator"]
    reply = ok(
        client.post(
            f"/api/scans/{scan_id}/comments",
            headers=annotator,
            json={"text": "fixed", "structure": "liver", "slice_axis": 2, "slice_index": 12, "version_id": version},
        ),
        201,
    )
    assert reply["review_id"] is None
    resolved = ok(client.patch(f"/api/comments/{located[0]['id']}", headers=annotator, json={"resolved": True}))
    assert resolved["resolved"] is True
    everything = client.get(f"/api/scans/{scan_id}/comments", headers=annotator).json()
    assert [c["text"] for c in everything] == ["leak into the kidney", "missed tip", "general remark", "fixed"]
    assert [c["resolved"] for c in everything] == [True, False, False, False]
    viewer = world.headers["viewer"]
    assert client.post(f"/api/scans/{scan_id}/comments", headers=viewer, json={"text": "hi"}).status_code == 403
    assert client.patch(f"/api/comments/{reply['id']}", headers=viewer, json={"resolved": True}).status_code == 403
    outsider = world.headers["outsider"]
    assert client.patch(f"/api/comments/{reply['id']}", headers=outsider, json={"resolved": True}).status_code == 404
    actions = set(db.scalars(select(AuditEvent.action).where(AuditEvent.scan_id == scan_id)))
    assert {"task.request_changes", "comment.create", "comment.resolve"} <= actions


@pytest.mark.parametrize(
    ("comment", "message"),
    [
        ({"text": "x", "structure": "unicorn"}, "not in the project's label schema"),
        ({"text": "x", "slice_axis": 2}, "both slice_axis and slice_index"),
        ({"text": "x", "slice_axis": 2, "slice_index": 32}, "outside 0..31"),
        ({"text": "x", "voxel": [64, 0, 0]}, "outside the scan"),
        ({"text": "   "}, "needs text"),
        ({"text": "x", "version_id": 987654}, "is not a version of scan"),
    ],
)
def test_bad_comment_locations_are_refused(
    client: TestClient, world: World, comment: dict[str, Any], message: str
) -> None:
    scan_id = scan_with_version(client, world, "bad-comment")
    response = client.post(f"/api/scans/{scan_id}/comments", headers=world.headers["reviewer"], json=comment)
    assert response.status_code == 422, response.text
    assert message in response.json()["detail"]


def test_bad_review_bodies(client: TestClient, world: World) -> None:
    scan_id, version = _review_ready(client, world, "bad-review")
    reviewer = world.headers["reviewer"]
    url = f"/api/scans/{scan_id}/reviews"
    assert client.post(url, headers=reviewer, json={"version_id": version, "decision": "maybe"}).status_code == 422
    bad_comment = {"version_id": version, "decision": "approve", "comments": [{"text": "x", "voxel": [-1, 0, 0]}]}
    assert client.post(url, headers=reviewer, json=bad_comment).status_code == 422
    # A refused review leaves no trace: the task is still in review.
    assert task(client, reviewer, scan_id)["state"] == "in_review"
    assert client.get(url, headers=reviewer).json() == []
    annotator = client.post(
        url, headers=world.headers["annotator"], json={"version_id": version, "decision": "approve"}
    )
    assert annotator.status_code == 403


def test_activity_accumulates_on_the_task_and_per_day(client: TestClient, world: World, db: Session) -> None:
    scan_id = scan_with_version(client, world, "busy")
    annotator = world.headers["annotator"]
    url = f"/api/scans/{scan_id}/activity"
    assert ok(client.post(url, headers=annotator, json={"active_seconds": 30}))["active_seconds"] == 30
    assert ok(client.post(url, headers=annotator, json={"active_seconds": 12.5}))["active_seconds"] == 42.5
    ok(client.post(url, headers=world.headers["reviewer"], json={"active_seconds": 7}))
    for bad in (0, -3, 601, "soon"):
        assert client.post(url, headers=annotator, json={"active_seconds": bad}).status_code == 422
    assert client.post(url, headers=world.headers["viewer"], json={"active_seconds": 5}).status_code == 403
    assert task(client, annotator, scan_id)["active_seconds"] == 49.5
    ok(save(client, annotator, scan_id, head(client, world, scan_id)), 201)
    ok(save(client, annotator, scan_id, head(client, world, scan_id)), 201)
    rows = workflow.activity_of(db, scan_id, world.users["annotator"].id)
    assert [(r.day, r.active_seconds, r.saves) for r in rows] == [(datetime.now(UTC).date(), 42.5, 2)]
    reviewer_rows = db.scalars(
        select(ActivityDaily).where(
            ActivityDaily.user_id == world.users["reviewer"].id, ActivityDaily.scan_id == scan_id
        )
    ).all()
    assert [(r.active_seconds, r.saves) for r in reviewer_rows] == [(7.0, 0)]


# --- worklist ------------------------------------------------------------------------------------------------------


@pytest.fixture
def listed(client: TestClient, world: World, db: Session) -> dict[str, int]:
    """Six scans with metadata, states, assignees and priorities for the worklist tests."""
    specs = {
        "p-001": {"site": "Alpha", "ct phase": "venous", "tumor?": "1"},
        "p-002": {"site": "Alpha", "ct phase": "arterial", "tumor?": "0"},
        "p-003": {"site": "Beta", "ct phase": "venous", "tumor?": "1"},
        "q-004": {"site": "Beta", "ct phase": "venous", "tumor?": "0"},
        "q-005": {"site": "Gamma", "ct phase": "arterial", "tumor?": "1"},
        "q-006": {"site": "Gamma", "ct phase": "venous", "tumor?": "0"},
    }
    ids = {case: new_scan(client, world, case, meta) for case, meta in specs.items()}
    base = datetime.now(UTC)
    states = ["new", "annotating", "submitted", "in_review", "approved", "new"]
    priorities = [1.0, 5.0, 3.0, 5.0, 0.0, 2.0]
    for index, scan_id in enumerate(ids.values()):
        set_task(
            db,
            scan_id,
            state=states[index],
            priority=priorities[index],
            updated_at=base - timedelta(minutes=10 * index),
            review_level=1 if states[index] == "in_review" else 0,
        )
    set_task(db, ids["p-002"], assignee_user_id=world.users["annotator"].id)
    set_task(db, ids["q-004"], assignee_user_id=world.users["lead"].id)
    return ids


def _page(client: TestClient, world: World, who: str = "lead", **params: Any) -> dict[str, Any]:
    response = client.get(f"/api/projects/{world.project.id}/worklist", headers=world.headers[who], params=params)
    assert response.status_code == 200, response.text
    return dict(response.json())


def _cases(page: dict[str, Any]) -> list[str]:
    return [item["case_id"] for item in page["items"]]


def test_worklist_sorting(client: TestClient, world: World, listed: dict[str, int]) -> None:
    by_priority = _page(client, world)
    assert _cases(by_priority) == ["p-002", "q-004", "p-003", "q-006", "p-001", "q-005"]
    assert by_priority["total"] == 6
    assert _cases(_page(client, world, sort="case")) == sorted(listed)
    assert _cases(_page(client, world, sort="updated")) == list(listed)
    assert (
        client.get(f"/api/projects/{world.project.id}/worklist?sort=random", headers=world.headers["lead"]).status_code
        == 422
    )


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({"state": "new"}, ["q-006", "p-001"]),
        ({"state": "submitted,in_review"}, ["q-004", "p-003"]),
        ({"site": "Alpha"}, ["p-002", "p-001"]),
        ({"phase": "arterial"}, ["p-002", "q-005"]),
        ({"tumor": "true"}, ["p-003", "p-001", "q-005"]),
        ({"tumor": "false", "site": "Gamma"}, ["q-006"]),
        ({"assignee": "none"}, ["p-003", "q-006", "p-001", "q-005"]),
        ({"assignee": "me"}, ["q-004"]),
        ({"q": "q-00"}, ["q-004", "q-006", "q-005"]),
        ({"q": "p-00", "state": "new"}, ["p-001"]),
        ({"q": "%"}, []),
    ],
)
def test_worklist_filters(
    client: TestClient, world: World, listed: dict[str, int], params: dict[str, str], expected: list[str]
) -> None:
    page = _page(client, world, **params)
    assert _cases(page) == expected
    assert page["total"] == len(expected)


def test_worklist_assignee_by_id_pages_and_bad_filters(
    client: TestClient, world: World, listed: dict[str, int]
) -> None:
    by_id = _page(client, world, assignee=str(world.users["annotator"].id))
    assert _cases(by_id) == ["p-002"]
    assert by_id["items"][0]["assignee"] == {"id": world.users["annotator"].id, "username": "Annotator"}
    first = _page(client, world, sort="case", page=1, page_size=4)
    second = _page(client, world, sort="case", page=2, page_size=4)
    assert (_cases(first), _cases(second)) == (sorted(listed)[:4], sorted(listed)[4:])
    assert (first["total"], second["total"], second["page"], second["page_size"]) == (6, 6, 2, 4)
    assert _page(client, world, page=9)["items"] == []
    url = f"/api/projects/{world.project.id}/worklist"
    for bad in ({"state": "sleeping"}, {"assignee": "them"}, {"page": 0}, {"page_size": 501}):
        assert client.get(url, headers=world.headers["lead"], params=bad).status_code == 422
    assert client.get(url, headers=world.headers["outsider"]).status_code == 404


def test_worklist_allowed_actions_are_per_caller(client: TestClient, world: World, listed: dict[str, int]) -> None:
    annotator = {i["case_id"]: i["allowed_actions"] for i in _page(client, world, "annotator")["items"]}
    lead = {i["case_id"]: i["allowed_actions"] for i in _page(client, world, "lead")["items"]}
    viewer = {i["case_id"]: i["allowed_actions"] for i in _page(client, world, "viewer")["items"]}
    assert "submit" in annotator["p-002"]  # assigned to the annotator, annotating
    assert "start" in annotator["p-001"] and "start_review" not in annotator["p-003"]
    assert "start_review" in lead["p-003"] and "reopen" in lead["q-005"] and "reopen" not in annotator["q-005"]
    assert "approve" in lead["q-004"]
    assert all(actions == [] for actions in viewer.values())


def test_worklist_query_count_does_not_grow_with_the_page(
    client: TestClient, world: World, db: Session, listed: dict[str, int]
) -> None:
    for scan_id in listed.values():
        set_task(
            db,
            scan_id,
            lease_user_id=world.users["reviewer"].id,
            lease_expires_at=datetime.now(UTC) + timedelta(minutes=5),
        )
    with _counting(db) as small:
        page = _page(client, world, page_size=2)
    with _counting(db) as large:
        page = _page(client, world, page_size=6)
    assert len(page["items"]) == 6
    assert all(i["lease"]["username"] == "Reviewer" for i in page["items"])
    assert len(large) == len(small)
    assert len(large) <= 8, large


@contextmanager
def _counting(db: Session) -> Iterator[list[str]]:
    statements: list[str] = []
    engine = db.get_bind()

    def before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    target = engine.engine if hasattr(engine, "engine") else engine
    event.listen(target, "before_cursor_execute", before)
    try:
        yield statements
    finally:
        event.remove(target, "before_cursor_execute", before)


@pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)
@pytest.mark.parametrize("sort", ["priority", "updated", "case"])
def test_worklist_cursor_pages_walk_the_same_order_as_page_numbers(
    client: TestClient, world: World, listed: dict[str, int], sort: str
) -> None:
    whole = _cases(_page(client, world, sort=sort, page_size=50))
    walked: list[str] = []
    page = _page(client, world, sort=sort, page_size=4)
    while True:
        walked += _cases(page)
        if page["next_cursor"] is None:
            break
        page = _page(client, world, sort=sort, page_size=4, after=page["next_cursor"])
    assert walked == whole and len(whole) == 6
    filtered = _page(client, world, sort=sort, page_size=1, state="new")
    rest = _page(client, world, sort=sort, page_size=5, state="new", after=filtered["next_cursor"])
    assert _cases(filtered) + _cases(rest) == _cases(_page(client, world, sort=sort, state="new"))
    assert rest["next_cursor"] is None and rest["total"] == 2


def test_worklist_refuses_damaged_or_foreign_cursors(client: TestClient, world: World, listed: dict[str, int]) -> None:
    url = f"/api/projects/{world.project.id}/worklist"
    lead = world.headers["lead"]
    cursor = _page(client, world, sort="case", page_size=2)["next_cursor"]
    foreign = client.get(url, headers=lead, params={"sort": "priority", "after": cursor})
    assert foreign.status_code == 422 and "sort=case" in foreign.json()["detail"]
    forged = base64.urlsafe_b64encode(b'{"sort":"priority","key":["x",1]}').decode()
    for bad in ("not-a-cursor", "e30", forged, "A" * 501):
        response = client.get(url, headers=lead, params={"sort": "priority", "after": bad})
        assert response.status_code == 422, (bad, response.text)
