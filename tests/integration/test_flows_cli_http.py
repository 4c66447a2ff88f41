"""One use case, two doors: the `maskloop` CLI and the HTTP API call the same flow, so they write the same rows.

The CLI runs in-process (typer's CliRunner) against the test transaction, blob folder and settings; the rows each
door wrote are compared column by column (ids, slugs and timestamps aside), not just the exit and status codes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from backend import cli
from backend.core import queue
from backend.core.blobstore import LocalBlobStore
from backend.core.config import Settings
from backend.models import (
    AuditEvent,
    Job,
    LabelSchema,
    Membership,
    Model,
    ModelVersion,
    Project,
    Structure,
    User,
)
from backend.registry import service as registry
from tests.conftest import PASSWORD, World
from tests.factories import small_phantom, upload_scan


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, db: Session, blobs: LocalBlobStore, settings: Settings) -> Iterator[Any]:
    """Invoke a `maskloop` command in this process, on the test transaction, blob folder and settings."""

    @contextmanager
    def scope() -> Iterator[Session]:
        yield db

    for module in (cli.accounts, cli.jobs):
        monkeypatch.setattr(module, "session_scope", scope)
        monkeypatch.setattr(module, "get_blob_store", lambda: blobs)
    monkeypatch.setattr(cli.accounts, "get_settings", lambda: settings)

    def invoke(*args: str) -> str:
        result = CliRunner().invoke(cli.app, list(args))
        assert result.exit_code == 0, result.output
        return result.output

    yield invoke


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """What the outbox publishes after each commit, recorded instead of needing a broker."""
    messages: list[tuple[str, int, str]] = []

    def send(name: str, job_id: int, q: str, attempt: int = 0) -> str:
        messages.append((name, job_id, q))
        return "t"

    monkeypatch.setattr(queue, "send", send)
    return messages


def _columns(row: Any, *skip: str) -> dict[str, Any]:
    """A row's columns, without the ones that differ by nature (ids, creation times, the names given)."""
    ignored = {"id", "created_at", "at", *skip}
    return {c.key: getattr(row, c.key) for c in row.__table__.columns if c.key not in ignored}


def _project_rows(db: Session, project: Project) -> dict[str, Any]:
    """Everything a project's creation and its membership changes wrote, with users named by their role here."""
    db.expire_all()
    schema = db.scalars(select(LabelSchema).where(LabelSchema.project_id == project.id)).one()
    structures = db.scalars(select(Structure).where(Structure.schema_id == schema.id).order_by(Structure.position))
    members = db.execute(
        select(User, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.project_id == project.id)
    ).all()
    models = db.scalars(select(Model).where(Model.project_id == project.id).order_by(Model.name)).all()
    events = db.scalars(select(AuditEvent).where(AuditEvent.project_id == project.id).order_by(AuditEvent.id))
    return {
        "project": _columns(project, "slug"),
        "schema": _columns(schema, "project_id"),
        "structures": [_columns(s, "schema_id") for s in structures],
        "members": sorted(
            (role, _columns(user, "email", "password_hash"), user.password_hash is not None) for user, role in members
        ),
        "models": [
            (
                _columns(model, "project_id"),
                [
                    _columns(v, "model_id")
                    for v in db.scalars(select(ModelVersion).where(ModelVersion.model_id == model.id))
                ],
            )
            for model in models
        ],
        "audit": [(e.action, e.entity_type) for e in events],
    }


def test_create_project_and_member_write_the_same_rows_from_cli_and_http(
    client: TestClient, db: Session, world: World, run_cli: Any
) -> None:
    admin = world.users["platform_admin"]
    output = run_cli("create-project", "made-by-cli", "--name", "Made twice", "--owner", admin.email)
    assert "created project made-by-cli" in output
    output = run_cli(
        "create-user",
        "member.cli@example.org",
        "--password",
        PASSWORD,
        "--name",
        "Member",
        "--project",
        "made-by-cli",
        "--role",
        "reviewer",
    )
    assert "created user member.cli@example.org" in output

    headers = world.headers["platform_admin"]
    made = client.post("/api/projects", headers=headers, json={"slug": "made-by-http", "name": "Made twice"})
    assert made.status_code == 201, made.text
    user = client.post(
        "/api/users",
        headers=headers,
        json={"email": "member.http@example.org", "password": PASSWORD, "display_name": "Member"},
    )
    assert user.status_code == 201, user.text
    member = client.put(
        f"/api/projects/{made.json()['id']}/members",
        headers=headers,
        json={"email": "member.http@example.org", "role": "reviewer"},
    )
    assert member.status_code == 200, member.text

    by_slug = {p.slug: p for p in db.scalars(select(Project).where(Project.slug.in_(["made-by-cli", "made-by-http"])))}
    from_cli, from_http = _project_rows(db, by_slug["made-by-cli"]), _project_rows(db, by_slug["made-by-http"])
    assert from_cli == from_http
    # The comparison has teeth: the PanTS schema, the creator and the new member, the classical model.
    assert len(from_cli["structures"]) > 10
    assert [role for role, _, _ in from_cli["members"]] == ["admin", "reviewer"]
    assert [model["architecture"] for model, _ in from_cli["models"]] == ["classical"]
    assert ("project.create", "project") in from_cli["audit"]


def _job_rows(db: Session, jobs: list[Job]) -> list[dict[str, Any]]:
    """A batch of jobs and their audit events, by scan (job ids aside; `sent_at` only as set or not)."""
    db.expire_all()
    rows = []
    for job in sorted(jobs, key=lambda j: j.scan_id or 0):
        events = db.scalars(
            select(AuditEvent).where(AuditEvent.entity_type == "job", AuditEvent.entity_id == str(job.id))
        )
        rows.append(
            {
                **_columns(job, "sent_at"),
                "sent": job.sent_at is not None,
                "audit": [_columns(e, "entity_id") for e in events],
            }
        )
    return rows


def test_preannotation_launch_writes_the_same_jobs_from_cli_and_http(
    client: TestClient,
    db: Session,
    world: World,
    run_cli: Any,
    sent: list[tuple[str, int, str]],
    blobs: LocalBlobStore,
) -> None:
    lead = world.headers["lead"]
    cases = ["flow_c0", "flow_c1"]
    scan_ids = [
        upload_scan(client, lead, world.project.id, small_phantom(seed=i), c)["id"] for i, c in enumerate(cases)
    ]
    model = client.post(
        f"/api/projects/{world.project.id}/models",
        headers=lead,
        json={"name": "seg", "architecture": "unet", "structures": ["liver"]},
    ).json()
    # Weights the platform trusts (an upload would wait for a worker's check first; the worker tests do that).
    registered = registry.add_version(db, blobs, db.get(Model, model["id"]), weights=b"w")  # type: ignore[arg-type]
    version = {"id": registered.id}
    assert client.post(f"/api/model-versions/{version['id']}/promote", headers=lead).status_code == 200

    lead_email = world.users["lead"].email
    output = run_cli(
        "preannotate",
        "--project",
        "demo",
        "--model",
        "seg",
        *(arg for case in cases for arg in ("--case", case)),
        "--as",
        lead_email,
    )
    assert "queued 2 pre-annotation jobs" in output
    cli_jobs = list(db.scalars(select(Job).where(Job.kind == "preannotate").order_by(Job.id)))
    launched = client.post(
        f"/api/projects/{world.project.id}/preannotate", headers=lead, json={"model": "seg", "scan_ids": scan_ids}
    )
    assert launched.status_code == 201, launched.text
    http_ids = {j["id"] for j in launched.json()}
    http_jobs = [db.get(Job, i) for i in sorted(http_ids)]

    assert len(cli_jobs) == 2 and {j.id for j in cli_jobs}.isdisjoint(http_ids)
    from_cli, from_http = _job_rows(db, cli_jobs), _job_rows(db, [j for j in http_jobs if j is not None])
    assert from_cli == from_http
    assert [row["scan_id"] for row in from_cli] == sorted(scan_ids)
    assert all(row["sent"] and row["model_version_id"] == version["id"] for row in from_cli)
    # Both doors sent each job once, after its commit, to the same task and queue.
    by_job = {job_id: (name, q) for name, job_id, q in sent}
    assert len(sent) == 4
    assert sorted(by_job[j.id] for j in cli_jobs) == sorted(by_job[i] for i in http_ids)
