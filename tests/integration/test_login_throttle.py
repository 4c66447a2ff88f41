"""Sign-in throttling (per account and per client address, shared by API processes through the database), the
bound on concurrent argon2 hashes, and equal timing for unknown accounts."""

from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from argon2 import PasswordHasher
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.auth import throttle
from backend.core import migrate
from backend.core.blobstore import LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session, make_engine
from backend.main import create_app
from backend.models import AuthSession, LoginThrottle
from tests.conftest import PASSWORD, World, create_pg_database, drop_pg_database

BOTH_DATABASES = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)
SECRET = "test-secret-0123456789abcdef0123456789abcdef"


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Small limits so lockouts are quick to reach; a long first lockout so it holds during the test."""
    return Settings(
        data_dir=tmp_path / "data",
        secret_key=SECRET,
        login_max_failures_per_account=3,
        login_max_failures_per_address=6,
        login_lockout_base_s=60,
    )


@pytest.fixture
def app(db: Session, blobs: LocalBlobStore, settings: Settings) -> FastAPI:
    """The real app wired to the test transaction (clients with chosen addresses are made from it)."""
    application = create_app(settings)

    def _session() -> Iterator[Session]:
        yield db

    application.dependency_overrides[get_session] = _session
    application.dependency_overrides[get_blob_store] = lambda: blobs
    application.dependency_overrides[get_settings] = lambda: settings
    return application


def _from(app: FastAPI, address: str) -> TestClient:
    return TestClient(app, client=(address, 40000))


def _login(client: TestClient | httpx.Client, email: str, password: str) -> httpx.Response:
    return client.post("/api/auth/login", json={"email": email, "password": password})


def _assert_locked(response: httpx.Response) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["error"] == "too_many_requests"
    assert body["details"]["retry_after"] >= 1
    assert int(response.headers["retry-after"]) >= 1


@BOTH_DATABASES
def test_account_locks_after_n_failures_even_for_the_right_password(app: FastAPI, world: World) -> None:
    client = _from(app, "198.51.100.1")
    for _ in range(3):
        assert _login(client, "lead@example.org", "wrong-password").status_code == 401
    _assert_locked(_login(client, "lead@example.org", PASSWORD))
    # The lock is the account's: another address is refused too, and other accounts are not affected.
    _assert_locked(_login(_from(app, "198.51.100.2"), "Lead@Example.org", PASSWORD))
    assert _login(client, "reviewer@example.org", PASSWORD).status_code == 200
    # An unknown e-mail locks the same way, so a 429 tells nothing about whether an account exists.
    for _ in range(3):
        assert _login(_from(app, "198.51.100.3"), "ghost@example.org", "x").status_code == 401
    _assert_locked(_login(_from(app, "198.51.100.4"), "ghost@example.org", "x"))


@BOTH_DATABASES
def test_success_resets_the_account_count(app: FastAPI, world: World) -> None:
    client = _from(app, "198.51.100.10")
    for _ in range(2):
        for _ in range(2):
            assert _login(client, "annotator@example.org", "wrong-password").status_code == 401
        assert _login(client, "annotator@example.org", PASSWORD).status_code == 200


def test_address_locks_after_failures_across_accounts(app: FastAPI, world: World) -> None:
    attacker = _from(app, "203.0.113.9")
    for i in range(6):
        assert _login(attacker, f"guess{i}@example.org", "x").status_code == 401
    _assert_locked(_login(attacker, "viewer@example.org", PASSWORD))
    # Only that address: the same account signs in from elsewhere.
    assert _login(_from(app, "203.0.113.10"), "viewer@example.org", PASSWORD).status_code == 200


def test_lockout_grows_is_capped_and_ends(app: FastAPI, world: World, db: Session, settings: Settings) -> None:
    assert [throttle.lockout_seconds(n, 3, settings) for n in (2, 3, 4, 5)] == [0, 60, 120, 240]
    assert throttle.lockout_seconds(10_000, 3, settings) == settings.login_lockout_max_s
    client = _from(app, "198.51.100.20")
    for _ in range(3):
        _login(client, "outsider@example.org", "wrong-password")
    _assert_locked(_login(client, "outsider@example.org", PASSWORD))
    # Once the lockout has passed, the right password works again.
    db.execute(update(LoginThrottle).values(locked_until=datetime.now(UTC) - timedelta(seconds=1)))
    assert _login(client, "outsider@example.org", PASSWORD).status_code == 200


def test_prune_drops_stale_counts_and_long_ended_sessions(db: Session, settings: Settings, world: World) -> None:
    now = datetime.now(UTC)
    old = now - timedelta(seconds=settings.login_failure_window_s + 60)
    db.add_all(
        [
            LoginThrottle(key_sha256="a" * 64, kind="account", failures=9, last_failure_at=old),
            LoginThrottle(key_sha256="b" * 64, kind="account", failures=9, last_failure_at=now),
            LoginThrottle(
                key_sha256="c" * 64,
                kind="address",
                failures=9,
                last_failure_at=old,
                locked_until=now + timedelta(minutes=5),
            ),
        ]
    )
    auth.issue_access_token(world.users["lead"], settings, db)
    ended = db.scalars(select(AuthSession).where(AuthSession.user_id == world.users["lead"].id)).all()
    ended[0].expires_at = now - timedelta(days=31)
    db.flush()
    assert auth.prune_auth_state(db, settings) == (1, 1)
    assert set(db.scalars(select(LoginThrottle.key_sha256))) >= {"b" * 64, "c" * 64}


def test_concurrent_hashes_are_bounded(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    limited = settings.model_copy(update={"login_max_concurrent_hashes": 2, "login_hash_wait_s": 5.0})
    running, peak, lock = 0, 0, threading.Lock()
    real = auth._hasher

    class CountingHasher(PasswordHasher):
        def verify(self, hash: str | bytes, password: str | bytes) -> bool:
            nonlocal running, peak
            with lock:
                running += 1
                peak = max(peak, running)
            time.sleep(0.05)
            with lock:
                running -= 1
            return real.verify(hash, password)

    monkeypatch.setattr(auth, "_hasher", CountingHasher(time_cost=1, memory_cost=1024, parallelism=1))

    def attempt(_: int) -> bool:
        with throttle.hash_slot(limited):
            return auth.verify_password(None, "guess")

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert not any(pool.map(attempt, range(16)))
    assert peak == 2


def test_login_answers_503_when_no_hash_slot_frees(app: FastAPI, world: World, settings: Settings) -> None:
    settings.login_max_concurrent_hashes = 2
    settings.login_hash_wait_s = 0.1
    slots = throttle._semaphore(2)
    held = [slots.acquire(timeout=5) for _ in range(2)]
    try:
        assert all(held)
        response = _login(_from(app, "198.51.100.30"), "lead@example.org", PASSWORD)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "unavailable"
        assert int(response.headers["retry-after"]) >= 1
    finally:
        for _ in held:
            slots.release()
    assert _login(_from(app, "198.51.100.30"), "lead@example.org", PASSWORD).status_code == 200


def test_unknown_and_known_emails_take_the_same_time(
    app: FastAPI, db: Session, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Real argon2 parameters (the default PasswordHasher), as in production.
    monkeypatch.setattr(auth, "_hasher", PasswordHasher())
    auth.create_user(db, "known@example.org", PASSWORD, "Known")
    db.flush()
    settings.login_max_failures_per_account = 0  # the known account is tried many times; no lockout interferes
    known: list[float] = []
    unknown: list[float] = []
    for i in range(-1, 7):  # round -1 warms up (the dummy hash is made on first use)
        for email, times in (("known@example.org", known), (f"nobody{i}@example.org", unknown)):
            client = _from(app, f"192.0.2.{i + 2}")
            start = time.perf_counter()
            assert _login(client, email, "wrong-password").status_code == 401
            if i >= 0:
                times.append(time.perf_counter() - start)
    ratio = statistics.median(unknown) / statistics.median(known)
    # The defect was a 7x gap (20 vs 143 ms). Seven samples on a 2-core machine shared with the rest of the suite
    # drift by ±30 %, so the test guards a wide band; `make bench` measures the 0.8-1.25 goal on 50 samples each.
    assert 0.6 <= ratio <= 1.6, (ratio, known, unknown)


# --------------------------------------------------------------------------- two live API processes


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def two_api_processes(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """Two `uvicorn backend.main:app` processes on one PostgreSQL database, with a user lead@example.org."""
    name = f"maskloop_throttle_{os.getpid()}"
    url = create_pg_database(name)
    procs: list[subprocess.Popen[bytes]] = []
    try:
        migrate.upgrade(url)
        engine = make_engine(url)
        with Session(engine) as session:
            auth.create_user(session, "lead@example.org", PASSWORD, "Lead")  # cheap hash: verifies fast anywhere
            session.commit()
        engine.dispose()
        bases = []
        for label in ("a", "b"):
            port = _free_port()
            env = {
                **os.environ,
                "MASKLOOP_DATABASE_URL": url,
                "MASKLOOP_DATA_DIR": str(tmp_path / label),
                "MASKLOOP_SECRET_KEY": SECRET,
                "MASKLOOP_LOGIN_MAX_FAILURES_PER_ACCOUNT": "3",
                "MASKLOOP_LOGIN_LOCKOUT_BASE_S": "60",
            }
            command = [
                sys.executable,
                "-m",
                "uvicorn",
                "backend.main:app",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ]
            procs.append(subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE))
            bases.append(f"http://127.0.0.1:{port}")
        deadline = time.monotonic() + 60
        for proc, base in zip(procs, bases, strict=True):
            while True:
                try:
                    httpx.get(f"{base}/api/health", timeout=1)
                    break
                except httpx.TransportError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        pytest.fail(proc.stderr.read().decode() if proc.stderr else "uvicorn did not start")
                    time.sleep(0.1)
        yield bases[0], bases[1]
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=20)
        drop_pg_database(name)


def test_failures_on_one_api_process_lock_the_account_on_another(two_api_processes: tuple[str, str]) -> None:
    base_a, base_b = two_api_processes
    with httpx.Client(base_url=base_a, timeout=30) as a, httpx.Client(base_url=base_b, timeout=30) as b:
        assert _login(b, "lead@example.org", PASSWORD).status_code == 200
        for _ in range(3):
            assert _login(a, "lead@example.org", "wrong-password").status_code == 401
        _assert_locked(_login(b, "lead@example.org", PASSWORD))
        _assert_locked(_login(a, "lead@example.org", PASSWORD))
