"""The one access dependency: load a project object by its path id, then check the caller's role in its project."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from importlib import import_module

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend import api
from backend.auth.access import ObjectAccess, object_access
from backend.core.blobstore import LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_or_404, get_session
from backend.core.errors import NotFound, PermissionDenied
from backend.models import LabelSchema, User
from tests.conftest import World


@dataclass(frozen=True)
class SchemaAccess:
    """A label schema the caller may act on (the toy object of these tests)."""

    schema: LabelSchema
    user: User
    role: str


def _hidden_from_viewers(db: Session, schema: LabelSchema, user: User) -> bool:
    """A stand-in for reader blinding: the viewer may read the project, yet this object does not exist for them."""
    return user.email.startswith("viewer@")


schema_access: ObjectAccess[LabelSchema, SchemaAccess] = object_access(
    lambda db, ident: get_or_404(db, LabelSchema, ident, "label schema"),
    lambda schema: schema.project_id,
    "label schema",
    param="schema_id",
    grant=SchemaAccess,
    hidden=_hidden_from_viewers,
)


def _schema_id(db: Session, world: World) -> int:
    schema_id = db.scalar(select(LabelSchema.id).where(LabelSchema.project_id == world.project.id))
    assert schema_id is not None
    return schema_id


def test_the_loaded_object_is_passed_through_with_the_callers_role(db: Session, world: World) -> None:
    schema_id = _schema_id(db, world)
    access = schema_access.check(db, world.users["annotator"], schema_id, "write_labels")
    assert access.schema.id == schema_id
    assert access.user is world.users["annotator"]
    assert access.role == "annotator"
    # Platform administrators act as project admins everywhere, members or not.
    assert schema_access.check(db, world.users["platform_admin"], schema_id, "admin").role == "admin"


def test_outsiders_get_the_same_404_as_for_a_missing_object(db: Session, world: World) -> None:
    schema_id = _schema_id(db, world)
    with pytest.raises(NotFound) as outsider:
        schema_access.check(db, world.users["outsider"], schema_id, "read")
    assert outsider.value.message == f"label schema {schema_id} not found"
    with pytest.raises(NotFound) as missing:
        schema_access.check(db, world.users["lead"], 2**31 - 1, "read")
    assert missing.value.message == f"label schema {2**31 - 1} not found"


def test_members_without_the_permission_get_403(db: Session, world: World) -> None:
    with pytest.raises(PermissionDenied) as denied:
        schema_access.check(db, world.users["reviewer"], _schema_id(db, world), "run_jobs")
    assert denied.value.message == "role 'reviewer' may not run jobs in this project"


def test_a_hidden_object_is_a_404_even_for_a_member_allowed_to_read(db: Session, world: World) -> None:
    schema_id = _schema_id(db, world)
    with pytest.raises(NotFound, match=f"label schema {schema_id} not found"):
        schema_access.check(db, world.users["viewer"], schema_id, "read")


# --------------------------------------------------------------------------- through HTTP


@pytest.fixture
def toy_client(db: Session, blobs: LocalBlobStore, settings: Settings) -> Iterator[TestClient]:
    """The API's error handling and authentication plus two toy routes guarded by `schema_access`."""
    router = APIRouter()

    @router.get("/api/toy/schemas/{schema_id}")
    def read_schema(access: SchemaAccess = schema_access.require("read")) -> dict[str, object]:
        return {"id": access.schema.id, "role": access.role, "user": access.user.id}

    @router.get("/api/toy/schemas/{schema_id}/jobs")
    def run_jobs_on_schema(access: SchemaAccess = schema_access.require("run_jobs")) -> dict[str, object]:
        return {"id": access.schema.id, "role": access.role}

    app = FastAPI()
    api.install(app, settings)
    app.include_router(router)

    def _session() -> Iterator[Session]:
        yield db

    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_blob_store] = lambda: blobs
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app) as client:
        yield client


def test_http_statuses_and_bodies(toy_client: TestClient, db: Session, world: World) -> None:
    schema_id = _schema_id(db, world)
    url = f"/api/toy/schemas/{schema_id}"
    ok = toy_client.get(url, headers=world.headers["lead"])
    assert ok.status_code == 200, ok.text
    assert ok.json() == {"id": schema_id, "role": "lead", "user": world.users["lead"].id}

    for who in ("outsider", "viewer"):  # not a member; a member the object is hidden from
        gone = toy_client.get(url, headers=world.headers[who])
        assert gone.status_code == 404, gone.text
        assert gone.json()["detail"] == f"label schema {schema_id} not found"

    denied = toy_client.get(f"{url}/jobs", headers=world.headers["annotator"])
    assert denied.status_code == 403, denied.text
    assert toy_client.get(f"{url}/jobs", headers=world.headers["lead"]).status_code == 200

    assert toy_client.get(url).status_code == 401
    assert toy_client.get("/api/toy/schemas/0", headers=world.headers["lead"]).status_code == 422


def test_the_path_parameter_keeps_its_name_in_the_openapi_schema(toy_client: TestClient) -> None:
    operation = toy_client.app.openapi()["paths"]["/api/toy/schemas/{schema_id}"]["get"]  # type: ignore[attr-defined]
    assert [(p["name"], p["in"]) for p in operation["parameters"]] == [("schema_id", "path")]
    assert operation["parameters"][0]["schema"]["type"] == "integer"


# --------------------------------------------------------------------------- every domain's declaration

DECLARED = [
    ("backend.projects.dependencies", "project_access", "project_id", "project"),
    ("backend.scans.dependencies", "scan_access", "scan_id", "scan"),
    ("backend.labels.dependencies", "version_access", "version_id", "label version"),
    ("backend.jobs.dependencies", "job_access", "job_id", "job"),
    ("backend.registry.dependencies", "model_access", "model_id", "model"),
    ("backend.registry.dependencies", "model_version_access", "version_id", "model version"),
    ("backend.quality.dependencies", "reader_set_access", "reader_set_id", "reader set"),
    ("backend.quality.dependencies", "finding_access", "finding_id", "finding"),
    ("backend.workflow.dependencies", "comment_access", "comment_id", "comment"),
    ("backend.evaluation.dependencies", "evaluation_access", "evaluation_id", "evaluation"),
]


@pytest.mark.parametrize(("module", "name", "param", "what"), DECLARED, ids=[d[1] for d in DECLARED])
def test_every_domain_object_uses_the_one_access_rule(module: str, name: str, param: str, what: str) -> None:
    access = getattr(import_module(module), name)
    assert isinstance(access, ObjectAccess)
    assert (access.param, access.what) == (param, what)
