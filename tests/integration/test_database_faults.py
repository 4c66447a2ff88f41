"""Database faults: PostgreSQL connections killed under a live API answer 503 JSON, never a 500 or a reset.

The live test runs `uvicorn backend.main:app` on its own database while a thread keeps terminating the API's
connections (`pg_terminate_backend`) during a sequence of saves; each failed save is retried with its idempotency
key, and the database ends with exactly one version per intended save.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psycopg
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from backend.api import install
from backend.auth import service as auth
from backend.core import db as core_db
from backend.core import migrate
from backend.core.config import Settings
from backend.core.db import DatabaseUnavailable, TrackedSession, make_engine
from backend.imaging import chunks
from backend.imaging.nifti import to_nifti_gz
from backend.projects import service as projects
from tests.conftest import PASSWORD, PG_ADMIN_URL, create_pg_database, drop_pg_database
from tests.factories import small_phantom

ROOT = Path(__file__).resolve().parents[2]


def _terminate(pid: int) -> None:
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))


def _request_session(monkeypatch: pytest.MonkeyPatch, engine: Engine) -> Generator[Session, None, None]:
    """get_session, as a request uses it, on the test database."""
    factory = sessionmaker(bind=engine, class_=TrackedSession, expire_on_commit=False)
    monkeypatch.setattr(core_db, "get_session_factory", lambda: factory)
    return core_db.get_session()


def test_session_teardown_survives_a_connection_killed_after_the_answer(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    requests = _request_session(monkeypatch, pg_engine)
    session = next(requests)
    _terminate(int(session.execute(text("SELECT pg_backend_pid()")).scalar_one()))
    with pytest.raises(StopIteration):  # the teardown's rollback meets a dead connection and must not raise
        next(requests)
    # The dead connection was dropped: the next request's session works at once.
    session = next(_request_session(monkeypatch, pg_engine))
    assert session.execute(text("SELECT 1")).scalar_one() == 1
    session.close()


def test_connection_faults_in_a_request_say_whether_the_change_was_stored(
    pg_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Lost during COMMIT: the outcome is unknown and the client is told to retry with its idempotency key.
    requests = _request_session(monkeypatch, pg_engine)
    session = next(requests)
    _terminate(int(session.execute(text("SELECT pg_backend_pid()")).scalar_one()))
    with pytest.raises(OperationalError) as lost:
        session.commit()
    with pytest.raises(DatabaseUnavailable) as answer:
        requests.throw(lost.value)
    assert answer.value.details == {"stored": "unknown", "retry_after": 1}
    assert "idempotency key" in answer.value.message
    # Lost during a statement before any commit: nothing was stored.
    requests = _request_session(monkeypatch, pg_engine)
    session = next(requests)
    pid = int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
    _terminate(pid)
    with pytest.raises(OperationalError) as lost:
        session.execute(text("SELECT 1"))
    with pytest.raises(DatabaseUnavailable) as answer:
        requests.throw(lost.value)
    assert answer.value.details["stored"] == "no"
    # Any other error passes through untouched.
    requests = _request_session(monkeypatch, pg_engine)
    next(requests)
    with pytest.raises(KeyError):
        requests.throw(KeyError("not a database fault"))


def test_a_read_after_the_commit_retries_on_a_fresh_connection(pg_engine: Engine) -> None:
    session = TrackedSession(bind=pg_engine, expire_on_commit=False)
    calls = []

    def read() -> int:
        calls.append(1)
        pid = int(session.execute(text("SELECT pg_backend_pid()")).scalar_one())
        if len(calls) == 1:
            _terminate(pid)  # the connection dies between two statements of the read
        return int(session.execute(text("SELECT 41 + 1")).scalar_one())

    assert core_db.read_after_commit(session, read) == 42
    assert len(calls) == 2
    session.close()


def test_an_unreachable_database_answers_503_json_with_retry_after(tmp_path: Path) -> None:
    app = FastAPI()
    install(app, Settings(data_dir=tmp_path))
    refused = make_engine("postgresql+psycopg://postgres@127.0.0.1:1/nowhere")

    @app.get("/api/probe")
    def probe() -> dict[str, str]:
        with refused.connect() as conn:
            conn.execute(text("SELECT 1"))
        return {}

    response = TestClient(app, raise_server_exceptions=False).get("/api/probe")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == "unavailable"
    # An SQLite OperationalError that is a bug, not an outage, is no connection fault.
    with pytest.raises(OperationalError) as bug, make_engine(f"sqlite:///{tmp_path / 'x.db'}").connect() as conn:
        conn.execute(text("SELECT * FROM no_such_table"))
    assert not core_db.connection_fault(bug.value)


# --- the live API under connection kills ---

SAVES = 30
MIN_FAULTS = 5  # on a fast machine saves go on past SAVES until this many met a killed connection
MAX_SAVES = 150
MULTIPART_EVERY = 5  # every fifth save is a multipart mask upload (form field idempotency_key), the rest patch saves


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class LiveApi:
    """A uvicorn API process on its own database, with a lead's bearer header and one imported scan."""

    base: str
    database: str
    headers: dict[str, str]
    scan: dict[str, Any]
    affine: np.ndarray
    log: Path


@pytest.fixture
def live_api(tmp_path: Path) -> Iterator[LiveApi]:
    name = f"maskloop_dbfaults_{os.getpid()}"
    url = create_pg_database(name)
    migrate.upgrade(url)
    engine = make_engine(url)
    with Session(engine) as db:
        admin = auth.create_user(db, "admin@example.org", PASSWORD, "Admin", is_admin=True)
        project = projects.create_project(db, "faults", "Faults", admin)
        lead = auth.create_user(db, "lead@example.org", PASSWORD, "Lead")
        projects.set_membership(db, project.id, lead, "lead", admin)
        db.commit()
        project_id = project.id
    engine.dispose()
    env = {
        **os.environ,
        "MASKLOOP_DATABASE_URL": url,
        "MASKLOOP_DATA_DIR": str(tmp_path / "data"),
        "MASKLOOP_BLOB_ROOT": str(tmp_path / "blobs"),
        "MASKLOOP_BROKER_URL": f"redis://127.0.0.1:6379/{1 + os.getpid() % 15}",
        "MASKLOOP_SECRET_KEY": "database-faults-secret-0123456789abcdef0123456789",
        "PYTHONPATH": str(ROOT),
    }
    port = _free_port()
    log = tmp_path / "api.log"
    with log.open("wb") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/api/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                pytest.fail(f"the API did not come up:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)
        login = httpx.post(f"{base}/api/auth/login", json={"email": "lead@example.org", "password": PASSWORD})
        assert login.status_code == 200, login.text + log.read_text()[-3000:]
        headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
        phantom = small_phantom()
        imported = httpx.post(
            f"{base}/api/projects/{project_id}/scans",
            headers=headers,
            files={"file": ("case.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
            data={"case_id": "case"},
            timeout=30,
        )
        assert imported.status_code == 201, imported.text + log.read_text()[-3000:]
        yield LiveApi(base, name, headers, imported.json(), phantom.affine, log)
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=30)
        drop_pg_database(name)


KILL_ALL = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"


class Killer(threading.Thread):
    """Terminates every connection of the API's database every few tens of milliseconds until stopped."""

    def __init__(self, database: str) -> None:
        super().__init__(daemon=True)
        self.database = database
        self.stop = threading.Event()
        self.killed = 0

    def run(self) -> None:
        """Kill, sleep a random moment, repeat."""
        pace = random.Random(11)
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as admin:
            while not self.stop.is_set():
                rows = admin.execute(KILL_ALL, (self.database,)).fetchall()
                self.killed += sum(1 for (done,) in rows if done)
                self.stop.wait(pace.uniform(0.01, 0.2))


def _save(client: httpx.Client, api: LiveApi, i: int, base_id: int | None, key: str) -> httpx.Response:
    """One attempt of save i: a patch save of a small box, or (every fifth) a multipart upload of a whole mask."""
    shape = tuple(api.scan["shape"])
    box = np.zeros((8, 8, 4), dtype=bool)
    box[: 1 + i % 8, :, : 1 + i % 4] = True  # differs per save, so every version has content of its own
    origin = (8 * (i % 6), 8, 4)
    scan_id = api.scan["id"]
    if i % MULTIPART_EVERY == MULTIPART_EVERY - 1:
        mask = np.zeros(shape, dtype=np.uint8)
        mask[origin[0] : origin[0] + 8, 8:16, 4:8] = box
        data = {"kind": "human", "idempotency_key": key}
        if base_id is not None:
            data["base_version_id"] = str(base_id)
        nii = to_nifti_gz(mask, api.affine)
        files = [("files", ("liver.nii.gz", nii, "application/gzip"))]
        return client.post(f"/api/scans/{scan_id}/versions", headers=api.headers, data=data, files=files)
    meta = {
        "base_version_id": base_id,
        "message": f"save {i}",
        "idempotency_key": key,
        "patches": [
            {
                "structure": "liver",
                "origin": list(origin),
                "size": list(box.shape),
                "encoding": "bits+gzip",
                "part": "b0",
            }
        ],
    }
    files_ = {"b0": ("b0", chunks.encode_box(box), "application/octet-stream")}
    return client.post(
        f"/api/scans/{scan_id}/versions/patch", headers=api.headers, data={"meta": json.dumps(meta)}, files=files_
    )


@pytest.mark.slow
def test_saves_under_connection_kills_answer_503_and_retries_store_each_save_once(live_api: LiveApi) -> None:
    api = live_api
    statuses: Counter[int] = Counter()
    stored: Counter[str] = Counter()
    broken: list[str] = []
    saved_ids: list[int] = []
    killer = Killer(api.database)
    base_id: int | None = api.scan["head_version_id"]
    with httpx.Client(base_url=api.base, timeout=30) as client:
        killer.start()
        try:
            i = -1
            while len(saved_ids) < SAVES or (statuses[503] < MIN_FAULTS and len(saved_ids) < MAX_SAVES):
                i += 1
                key = f"fault-save-{i}-{uuid.uuid4().hex}"
                for _attempt in range(200):
                    try:
                        response = _save(client, api, i, base_id, key)
                    except httpx.TransportError as exc:  # a reset or an incomplete answer: the defect
                        broken.append(f"save {i}: {type(exc).__name__}: {exc}")
                        continue
                    statuses[response.status_code] += 1
                    if response.status_code == 201:
                        break
                    if response.status_code != 503:
                        broken.append(f"save {i}: {response.status_code} {response.text[:300]}")
                        break
                    assert response.headers["content-type"].startswith("application/json"), response.text
                    body = response.json()
                    assert body["error"] == "unavailable" and isinstance(body["detail"], str), body
                    assert int(response.headers["retry-after"]) >= 1
                    stored[body.get("details", {}).get("stored", "?")] += 1
                    time.sleep(0.02)  # the header asks for 1 s; the test retries sooner to stay fast
                else:
                    pytest.fail(f"save {i} never got through: {statuses}")
                if response.status_code != 201:
                    break
                version = response.json()
                assert version["id"] not in saved_ids, f"save {i} answered an earlier save's version"
                saved_ids.append(version["id"])
                base_id = version["id"]
        finally:
            killer.stop.set()
            killer.join(timeout=10)
    log = api.log.read_text()
    assert not broken, (broken, statuses, log[-4000:])
    assert "Exception in ASGI application" not in log, log[-4000:]
    assert statuses[503] >= MIN_FAULTS, f"too few saves met a killed connection: {statuses}, kills {killer.killed}"
    # Exactly one version per intended save, chained in order, whatever the retries saw.
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{api.database}") as conn:
        rows = conn.execute(
            "SELECT id, parent_id FROM label_versions WHERE scan_id = %s ORDER BY id", (api.scan["id"],)
        ).fetchall()
        head = conn.execute("SELECT head_version_id FROM scans WHERE id = %s", (api.scan["id"],)).fetchone()
    assert [row[0] for row in rows] == saved_ids, (rows, saved_ids, statuses, stored)
    assert [row[1] for row in rows] == [api.scan["head_version_id"], *saved_ids[:-1]]
    assert head == (saved_ids[-1],)
    # A retry sent while the first try still runs (a client timeout): every try answers the one stored version.
    key, racers = f"racing-{uuid.uuid4().hex}", 4
    barrier = threading.Barrier(racers)
    answers: list[httpx.Response] = []

    def race() -> None:
        with httpx.Client(base_url=api.base, timeout=30) as client:
            barrier.wait()
            answers.append(_save(client, api, len(saved_ids), saved_ids[-1], key))

    threads = [threading.Thread(target=race) for _ in range(racers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert [a.status_code for a in answers] == [201] * racers, [a.text[:300] for a in answers]
    assert len({a.json()["id"] for a in answers}) == 1
    with psycopg.connect(PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{api.database}") as conn:
        count = conn.execute("SELECT count(*) FROM label_versions WHERE scan_id = %s", (api.scan["id"],)).fetchone()
    assert count == (len(saved_ids) + 1,)
    print(f"saves={len(saved_ids)} answers={dict(statuses)} stored={dict(stored)} kills={killer.killed}")
