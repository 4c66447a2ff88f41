"""The review flows own one transaction per request: a submit and its QA, an approval and its retrain policy."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.errors import InvalidInput
from backend.models import AuditEvent, QAFinding, TaskTransition
from backend.quality import service as quality
from tests.conftest import World
from tests.integration.workflow_support import act, head, ok, save, scan_with_version


@contextmanager
def commits(db: Session) -> Iterator[list[int]]:
    """Count the request session's commits while the block runs (savepoint releases are no commits)."""
    seen: list[int] = []
    commit = db.commit

    def counted() -> None:
        seen.append(1)
        commit()

    db.commit = counted  # type: ignore[method-assign]
    try:
        yield seen
    finally:
        del db.commit


def test_a_qa_refusal_on_submit_undoes_only_the_qa_and_the_submit_stands(
    client: TestClient, world: World, db: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    scan_id = scan_with_version(client, world, "qa-refused")
    annotator = world.headers["annotator"]
    ok(act(client, annotator, scan_id, "start"))
    version = ok(save(client, annotator, scan_id, head(client, world, scan_id)), 201)["id"]

    def refusing_qa(db: Session, blobs: Any, scan: Any, version: Any, **_: Any) -> list[QAFinding]:
        # QA writes something, then refuses: the write must go back with it, the submit must not.
        audit.record(db, actor_user_id=None, action="qa.probe", entity_type="scan", entity_id=scan.id)
        db.flush()
        raise InvalidInput("QA cannot read this version")

    monkeypatch.setattr(quality, "run_qa", refusing_qa)
    with commits(db) as seen:
        submitted = ok(act(client, annotator, scan_id, "submit"))
    assert len(seen) == 1
    assert submitted["state"] == "submitted" and submitted["submitted_version_id"] == version
    assert db.scalars(select(QAFinding).where(QAFinding.version_id == version)).all() == []
    assert db.scalar(select(AuditEvent.id).where(AuditEvent.action == "qa.probe")) is None
    actions = db.scalars(select(TaskTransition.action).where(TaskTransition.scan_id == scan_id)).all()
    assert actions[-1] == "submit"


def test_submit_with_qa_and_approval_each_commit_once(client: TestClient, world: World, db: Session) -> None:
    scan_id = scan_with_version(client, world, "one-commit")
    annotator, reviewer = world.headers["annotator"], world.headers["reviewer"]
    # Every schema structure expected: QA then has findings to write ("missing") in the submit's commit.
    names = [s.name for s in world.project.label_schema.structures]
    expect_all = {"workflow": {"qa": {"expected_structures": names}}}
    ok(client.patch(f"/api/projects/{world.project.id}/settings", headers=world.headers["lead"], json=expect_all))
    ok(act(client, annotator, scan_id, "start"))
    version = ok(save(client, annotator, scan_id, head(client, world, scan_id)), 201)["id"]
    with commits(db) as seen:
        ok(act(client, annotator, scan_id, "submit"))
    assert len(seen) == 1
    assert db.scalars(select(QAFinding).where(QAFinding.version_id == version)).all(), "QA ran in that commit"
    ok(act(client, reviewer, scan_id, "start_review"))
    with commits(db) as seen:
        approved = ok(act(client, reviewer, scan_id, "approve", version_id=version))
    assert approved["state"] == "approved"
    assert len(seen) == 1
