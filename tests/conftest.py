"""Shared fixtures: databases built by running the Alembic migrations, one rolled-back transaction per test."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import Engine
from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.core import migrate
from backend.core.blobstore import BlobStore, LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session, make_engine
from backend.main import create_app
from backend.models import Project, User
from backend.projects import service as projects
from tests.orthanc import OrthancServer
from tests.orthanc import available as orthanc_available
from tests.s3_server import S3Server

PG_ADMIN_URL = os.environ.get("MASKLOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")
PASSWORD = "correct-horse-battery"


def _pg_url(name: str) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
    return f"{base}/{name}"


def create_pg_database(name: str) -> str:
    """Create (or recreate) an empty PostgreSQL database and return its SQLAlchemy URL."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    return _pg_url(name)


def drop_pg_database(name: str) -> None:
    """Drop a PostgreSQL test database."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _worker_suffix() -> str:
    # Unique per process so parallel pytest runs (xdist workers, several developers) never share a database.
    return f"{os.environ.get('PYTEST_XDIST_WORKER', 'main')}_{os.getpid()}"


@pytest.fixture(autouse=True)
def cheap_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2 parameters in tests: hashes still verify for real, but building users takes milliseconds."""
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@pytest.fixture(scope="session")
def pg_engine() -> Iterator[Engine]:
    """A PostgreSQL database migrated to head for this test session."""
    name = f"maskloop_test_{_worker_suffix()}"
    url = create_pg_database(name)
    migrate.upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()
    drop_pg_database(name)


@pytest.fixture(scope="session")
def sqlite_engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    """An SQLite database file (the embedded default) migrated to head."""
    url = f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'maskloop.db'}"
    migrate.upgrade(url)
    engine = make_engine(url)
    yield engine
    engine.dispose()


@pytest.fixture(params=["postgresql"])
def database(request: pytest.FixtureRequest) -> str:
    """Which database a test runs on; modules parametrise it indirectly to add 'sqlite'."""
    return str(request.param)


@pytest.fixture
def db(database: str, request: pytest.FixtureRequest) -> Iterator[Session]:
    """A session inside a transaction that is rolled back after the test (commits become savepoints)."""
    engine: Engine = request.getfixturevalue("pg_engine" if database == "postgresql" else "sqlite_engine")
    connection = engine.connect()
    transaction = connection.begin()
    session = Session(bind=connection, join_transaction_mode="create_savepoint", expire_on_commit=False)
    try:
        yield session
    finally:
        session.close()
        transaction.rollback()
        connection.close()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A real S3 API server (moto_server, a subprocess on 127.0.0.1) for this test session."""
    server = S3Server(tmp_path_factory.mktemp("moto")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[OrthancServer]:
    """A real PACS (Debian's Orthanc with DICOMweb) for this test worker process, on a free 127.0.0.1 port."""
    missing = orthanc_available()
    if missing:
        pytest.fail(missing)
    server = OrthancServer(tmp_path_factory.mktemp("orthanc")).start()
    yield server
    server.stop()


@pytest.fixture
def blob_backend(request: pytest.FixtureRequest) -> str:
    """Which blob store a test runs on: 'local', and for tests marked `blobs` also 's3'."""
    return str(getattr(request, "param", "local"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Tests marked `blobs` that use the blob store run against the local folder and against S3 (moto)."""
    if metafunc.definition.get_closest_marker("blobs") and "blob_backend" in metafunc.fixturenames:
        metafunc.parametrize("blob_backend", ["local", "s3"], indirect=True)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The S3 run of a `blobs` test uses PostgreSQL only (the SQLite run adds nothing about blobs)."""
    keep: list[pytest.Item] = []
    dropped: list[pytest.Item] = []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        (dropped if params.get("blob_backend") == "s3" and params.get("database") == "sqlite" else keep).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def blobs(tmp_path: Path, blob_backend: str, request: pytest.FixtureRequest) -> BlobStore:
    """A fresh content-addressed blob store: a folder, or (blob_backend 's3') a fresh prefix in the S3 bucket."""
    if blob_backend == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        return server.store(cache_dir=tmp_path / "s3-cache", cache_max_bytes=256 << 20)
    return LocalBlobStore(tmp_path / "blobs")


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings for an app under test (small upload limit so the 413 path is testable)."""
    return Settings(
        data_dir=tmp_path / "data", max_upload_mb=64, secret_key="test-secret-0123456789abcdef0123456789abcdef"
    )


@pytest.fixture
def client(db: Session, blobs: BlobStore, settings: Settings) -> Iterator[TestClient]:
    """The real app, wired to the test transaction and blob folder."""
    app = create_app(settings)

    def _session() -> Iterator[Session]:
        yield db

    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_blob_store] = lambda: blobs
    app.dependency_overrides[get_settings] = lambda: settings
    with TestClient(app) as test_client:
        yield test_client


@dataclass
class World:
    """A project with one user per role plus an outsider and a platform admin, with bearer headers."""

    project: Project
    users: dict[str, User]
    headers: dict[str, dict[str, str]]


@pytest.fixture
def world(db: Session, settings: Settings) -> World:
    """The PanTS-schema project 'demo' with admin, lead, annotator, reviewer, viewer and outsider."""
    admin = auth.create_user(db, "admin@example.org", PASSWORD, "Admin", is_admin=True)
    project = projects.create_project(db, "demo", "Demo", admin)
    users = {"platform_admin": admin}
    for role in ("lead", "annotator", "reviewer", "viewer"):
        user = auth.create_user(db, f"{role}@example.org", PASSWORD, role.title())
        projects.set_membership(db, project.id, user, role, admin)
        users[role] = user
    users["outsider"] = auth.create_user(db, "outsider@example.org", PASSWORD, "Outsider")
    db.flush()
    headers = {
        # Each with a login session (as a sign-in opens), so refresh, logout and revocation work on these tokens.
        name: {"Authorization": f"Bearer {auth.issue_access_token(user, settings, db)[0]}"}
        for name, user in users.items()
    }
    return World(project=project, users=users, headers=headers)
