"""A real stack for the worker tests and the benches: a committed PostgreSQL database, a Redis broker, Celery worker
processes and the API (in-process ``TestClient``).

Shared by ``tests/integration`` (re-exported by ``tests.integration.worker_stack``) and the benches, so a bench never
imports the test suite. The users it creates log in with ``PASSWORD``.
"""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
import redis
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from backend.auth import service as auth
from backend.core import db as core_db
from backend.core import migrate, queue
from backend.core.blobstore import LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session, make_engine
from backend.main import create_app
from backend.models import Project
from backend.projects import service as projects

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "correct-horse-battery"  # the test suite's password (its conftest checks they are equal)
PG_ADMIN_URL = os.environ.get("MASKLOOP_TEST_PG", "postgresql://postgres@127.0.0.1:5432/postgres")


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
    """Drop a PostgreSQL database."""
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@dataclass
class Stack:
    """Everything a worker test needs, wired to one committed database and one Redis database."""

    env: dict[str, str]
    settings: Settings
    factory: sessionmaker[Session]
    blobs: LocalBlobStore
    client: TestClient
    project: Project
    headers: dict[str, dict[str, str]]
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    log_dir: Path = Path(".")

    def start_worker(
        self, name: str, pool: str = "prefork", extra_env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        """Start a Celery worker process for both queues in its own process group."""
        log = (self.log_dir / f"worker-{name}.log").open("wb")
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "celery",
                "-A",
                "worker.celery_app",
                "worker",
                "-Q",
                "gpu,cpu",
                "-c",
                "1",
                "-P",
                pool,
                "--hostname",
                f"{name}@%h",
                "--loglevel",
                "INFO",
                "--without-gossip",
                "--without-mingle",
            ],
            cwd=ROOT,
            env={**self.env, **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.workers.append(process)
        return process

    def kill_worker(self, process: subprocess.Popen[bytes], sig: int = signal.SIGKILL) -> None:
        """Kill a worker and every process it started."""
        with suppress(ProcessLookupError):
            os.killpg(process.pid, sig)
        process.wait(timeout=30)

    def job(self, job_id: int, role: str = "lead") -> dict[str, Any]:
        """The job as the API shows it."""
        response = self.client.get(f"/api/jobs/{job_id}", headers=self.headers[role])
        assert response.status_code == 200, response.text
        return dict(response.json())

    def wait_job(
        self, job_id: int, until: Callable[[dict[str, Any]], bool] | None = None, timeout: float = 120
    ) -> dict[str, Any]:
        """Poll a job until it is final (or the predicate holds); fail with the worker logs on timeout."""
        until = until or (lambda j: j["status"] in ("succeeded", "failed", "cancelled"))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            job = self.job(job_id)
            if until(job):
                return job
            time.sleep(0.2)
        logs = "\n".join(p.read_text()[-3000:] for p in self.log_dir.glob("worker-*.log"))
        raise AssertionError(f"job {job_id} did not get there in {timeout}s: {self.job(job_id)}\n{logs}")


ENV_KEYS = (
    "MASKLOOP_DATABASE_URL",
    "MASKLOOP_DATA_DIR",
    "MASKLOOP_BLOB_ROOT",
    "MASKLOOP_BROKER_URL",
    "MASKLOOP_SECRET_KEY",
    "MASKLOOP_JOB_STALE_AFTER_S",
    "MASKLOOP_BROKER_VISIBILITY_TIMEOUT_S",
    "MASKLOOP_TORCH_THREADS",
)


def _clear_caches() -> None:
    for cached in (get_settings, queue.client, get_blob_store, core_db.get_engine, core_db.get_session_factory):
        cached.cache_clear()


_STACK_NUMBERS = itertools.count()
_REDIS_CLAIM = "maskloop:test-stack"


def _claim_redis_db() -> int:
    """An emptied Redis database (1-15) that no other live stack uses: each stack claims one with a key that it
    deletes at teardown (and that expires, should a test process die). Two stacks sharing a broker database would
    take each other's tasks."""
    start = os.getpid() % 15
    for offset in range(15):
        number = 1 + (start + offset) % 15
        client = redis.Redis(host="127.0.0.1", port=6379, db=number)
        if client.set(_REDIS_CLAIM, os.getpid(), nx=True, ex=3600):
            client.flushdb()
            client.set(_REDIS_CLAIM, os.getpid(), ex=3600)
            return number
    raise RuntimeError("all 15 Redis test databases are claimed by live worker stacks")


@contextmanager
def build_stack(tmp: Path, *, embedded: bool = False) -> Iterator[Stack]:
    """Create the database, point this process and its workers at it, and tear everything down after."""
    # Unique per stack, not only per process: a module-scoped stack may still be alive when a test builds another.
    name = f"maskloop_workers_{os.getpid()}_{next(_STACK_NUMBERS)}"
    redis_db: int | None = None
    if embedded:
        url = f"sqlite:///{tmp / 'maskloop.db'}"
        broker = f"sqla+sqlite:///{tmp / 'broker.db'}"
    else:
        url = create_pg_database(name)
        redis_db = _claim_redis_db()
        broker = f"redis://127.0.0.1:6379/{redis_db}"
    migrate.upgrade(url)
    env = {
        **os.environ,
        "MASKLOOP_DATABASE_URL": url,
        "MASKLOOP_DATA_DIR": str(tmp / "data"),
        "MASKLOOP_BLOB_ROOT": str(tmp / "blobs"),
        "MASKLOOP_BROKER_URL": broker,
        "MASKLOOP_SECRET_KEY": "worker-tests-secret-0123456789abcdef0123456789",
        "MASKLOOP_JOB_STALE_AFTER_S": "4",
        "MASKLOOP_BROKER_VISIBILITY_TIMEOUT_S": "6",
        "MASKLOOP_TORCH_THREADS": "1",
        "PYTHONPATH": str(ROOT),
    }
    saved = {key: os.environ.get(key) for key in ENV_KEYS}
    os.environ.update({key: env[key] for key in ENV_KEYS})
    _clear_caches()
    settings = get_settings()
    # A weights upload waits for its check; the stack's worker may still be booting (its first claim takes long).
    settings.weights_check_wait_s = settings.weights_check_claim_wait_s = 180.0
    engine = make_engine(url)
    factory = sessionmaker(bind=engine, expire_on_commit=False)
    blobs = LocalBlobStore(tmp / "blobs")
    app = create_app(settings)

    def _session() -> Iterator[Session]:
        session = factory()
        try:
            yield session
        finally:
            session.rollback()
            session.close()

    app.dependency_overrides[get_session] = _session
    app.dependency_overrides[get_blob_store] = lambda: blobs
    app.dependency_overrides[get_settings] = lambda: settings
    with factory() as db:
        admin = auth.create_user(db, "admin@example.org", PASSWORD, "Admin", is_admin=True)
        project = projects.create_project(db, "workers", "Workers", admin)
        users = {"admin": admin}
        for role in ("lead", "annotator", "viewer"):
            user = auth.create_user(db, f"{role}@example.org", PASSWORD, role.title())
            projects.set_membership(db, project.id, user, role, admin)
            users[role] = user
        db.commit()
        headers = {
            role: {"Authorization": f"Bearer {auth.issue_access_token(user, settings)[0]}"}
            for role, user in users.items()
        }
    log_dir = tmp / "logs"
    log_dir.mkdir()
    stack = Stack(env, settings, factory, blobs, TestClient(app), project, headers, log_dir=log_dir)
    try:
        yield stack
    finally:
        for process in stack.workers:
            if process.poll() is None:
                stack.kill_worker(process, signal.SIGTERM if embedded else signal.SIGKILL)
        stack.client.close()
        engine.dispose()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _clear_caches()
        if not embedded:
            drop_pg_database(name)
        if redis_db is not None:
            redis.Redis(host="127.0.0.1", port=6379, db=redis_db).delete(_REDIS_CLAIM)
