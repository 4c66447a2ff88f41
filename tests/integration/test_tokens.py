"""Token lifetimes, login sessions (revocation, logout, the absolute refresh limit), the browser's cookie session
with its CSRF double submit, listing and revoking, and `no-store` on every auth answer."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, select, text
from sqlalchemy.orm import Session

from backend.core import migrate
from backend.core.blobstore import LocalBlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session
from backend.main import create_app
from backend.models import ApiToken, AuditEvent, AuthSession
from tests.conftest import PASSWORD, World, create_pg_database, drop_pg_database

BOTH_DATABASES = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)


@pytest.fixture
def app(db: Session, blobs: LocalBlobStore, settings: Settings) -> FastAPI:
    """The real app wired to the test transaction (for clients with their own cookie jars and schemes)."""
    application = create_app(settings)

    def _session() -> Iterator[Session]:
        yield db

    application.dependency_overrides[get_session] = _session
    application.dependency_overrides[get_blob_store] = lambda: blobs
    application.dependency_overrides[get_settings] = lambda: settings
    return application


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _login(client: TestClient, email: str = "annotator@example.org") -> dict[str, str]:
    response = client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    return dict(response.json(), set_cookie="\n".join(response.headers.get_list("set-cookie")))


def _me(client: TestClient, token: str) -> int:
    return client.get("/api/auth/me", headers=_bearer(token)).status_code


def _days_left(expires_at: str) -> float:
    return (datetime.fromisoformat(expires_at) - datetime.now(UTC)) / timedelta(days=1)


# --------------------------------------------------------------------------- API token lifetimes


@BOTH_DATABASES
def test_api_tokens_have_a_maximum_lifetime_which_is_also_the_default(client: TestClient, world: World) -> None:
    mine = world.headers["annotator"]
    default = client.post("/api/auth/tokens", headers=mine, json={"name": "laptop"})
    assert default.status_code == 201, default.text
    assert 29.9 < _days_left(default.json()["expires_at"]) <= 30
    too_long = client.post("/api/auth/tokens", headers=mine, json={"name": "forever", "expires_in_days": 31})
    assert too_long.status_code == 422, too_long.text
    assert too_long.json()["details"]["max_days"] == 30
    assert client.post("/api/auth/tokens", headers=mine, json={"name": "m", "expires_in_days": 30}).status_code == 201
    # A service account's tokens may live a year.
    admin = world.headers["platform_admin"]
    worker = client.post("/api/users", headers=admin, json={"email": "gpu@example.org", "is_service": True}).json()
    service = client.post("/api/auth/tokens", headers=admin, json={"name": "gpu", "user_id": worker["id"]})
    assert 364.9 < _days_left(service.json()["expires_at"]) <= 365
    over = client.post(
        "/api/auth/tokens", headers=admin, json={"name": "g", "user_id": worker["id"], "expires_in_days": 366}
    )
    assert over.status_code == 422


def test_token_lifetimes_follow_the_settings(client: TestClient, world: World, settings: Settings) -> None:
    settings.personal_token_max_days = 7
    response = client.post("/api/auth/tokens", headers=world.headers["viewer"], json={"name": "short"})
    assert 6.9 < _days_left(response.json()["expires_at"]) <= 7


@pytest.mark.sqlite
def test_cli_service_token_gets_the_service_maximum(tmp_path: Path) -> None:
    env = {**os.environ, "MASKLOOP_DATA_DIR": str(tmp_path)}
    env.pop("MASKLOOP_DATABASE_URL", None)
    cli = [sys.executable, "-c", "from backend.cli import app; app()"]
    subprocess.run([*cli, "migrate"], env=env, check=True, capture_output=True)
    made = subprocess.run(
        [*cli, "create-user", "gpu@example.org", "--service", "--token"], env=env, check=True, capture_output=True
    )
    assert b"API token" in made.stdout
    engine = create_engine(f"sqlite:///{tmp_path / 'maskloop.db'}")
    with engine.connect() as connection:
        expires = connection.execute(text("SELECT expires_at FROM api_tokens")).scalar_one()
    engine.dispose()
    assert 364.9 < _days_left(str(expires).replace(" ", "T") + "+00:00") <= 365


@pytest.mark.parametrize("kind", ["postgresql", "sqlite"])
def test_migration_gives_tokens_without_expiry_one(kind: str, tmp_path: Path) -> None:
    name = f"maskloop_tokens_{os.getpid()}"
    url = create_pg_database(name) if kind == "postgresql" else f"sqlite:///{tmp_path / 'old.db'}"
    try:
        migrate.upgrade(url, "0006")
        engine = create_engine(url)
        with engine.begin() as connection:
            for user_id, email, is_service in ((1, "p@example.org", False), (2, "s@example.org", True)):
                connection.execute(
                    text(
                        "INSERT INTO users (id, email, display_name, is_admin, is_service, is_active, created_at) "
                        "VALUES (:id, :email, '', false, :svc, true, CURRENT_TIMESTAMP)"
                    ),
                    {"id": user_id, "email": email, "svc": is_service},
                )
                connection.execute(
                    text(
                        "INSERT INTO api_tokens (user_id, name, token_sha256, created_at, expires_at, revoked) "
                        "VALUES (:id, 'old', :digest, CURRENT_TIMESTAMP, NULL, false)"
                    ),
                    {"id": user_id, "digest": f"{user_id:064d}"},
                )
        migrate.upgrade(url)
        with Session(engine) as session:
            expiry = {t.user_id: t.expires_at for t in session.scalars(select(ApiToken))}
        engine.dispose()
        now = datetime.now(UTC)
        assert timedelta(days=29, hours=23) < expiry[1] - now <= timedelta(days=30)
        assert timedelta(days=364, hours=23) < expiry[2] - now <= timedelta(days=365)
    finally:
        if kind == "postgresql":
            drop_pg_database(name)


# --------------------------------------------------------------------------- login sessions


@BOTH_DATABASES
def test_logout_and_session_revocation_kill_access_tokens_at_once(client: TestClient, world: World) -> None:
    first = _login(client)["access_token"]
    second = _login(client)["access_token"]
    assert _me(client, first) == 200 and _me(client, second) == 200
    sessions = client.get("/api/auth/sessions", headers=_bearer(first)).json()
    assert [s["current"] for s in sessions].count(True) == 1
    other = next(s for s in sessions if not s["current"])
    assert client.delete(f"/api/auth/sessions/{other['id']}", headers=_bearer(first)).status_code == 204
    assert _me(client, second) == 401
    assert client.post("/api/auth/refresh", headers=_bearer(second)).status_code == 401
    assert _me(client, first) == 200
    logout = client.post("/api/auth/logout", headers=_bearer(first))
    assert logout.status_code == 204, logout.text
    response = client.get("/api/auth/me", headers=_bearer(first))
    assert response.status_code == 401 and "signed out" in response.json()["detail"]
    # Someone else's session is not found, whatever its id.
    mine = _login(client)
    theirs = _login(client, "reviewer@example.org")
    their_sid = jwt.decode(theirs["access_token"], options={"verify_signature": False})["sid"]
    assert client.delete(f"/api/auth/sessions/{their_sid}", headers=_bearer(mine["access_token"])).status_code == 404
    assert _me(client, theirs["access_token"]) == 200


def test_refresh_never_passes_the_sessions_absolute_expiry(client: TestClient, world: World, db: Session) -> None:
    token = _login(client)["access_token"]
    sid = jwt.decode(token, options={"verify_signature": False})["sid"]
    session = db.get(AuthSession, sid)
    assert session is not None
    assert timedelta(days=6.9) < session.expires_at - datetime.now(UTC) <= timedelta(days=7)
    session.expires_at = datetime.now(UTC) + timedelta(minutes=2)
    db.flush()
    refreshed = client.post("/api/auth/refresh", headers=_bearer(token))
    assert refreshed.status_code == 200, refreshed.text
    new_token = refreshed.json()["access_token"]
    assert datetime.fromisoformat(refreshed.json()["expires_at"]) <= session.expires_at
    assert jwt.decode(new_token, options={"verify_signature": False})["exp"] <= session.expires_at.timestamp()
    session.expires_at = datetime.now(UTC) - timedelta(seconds=1)
    db.flush()
    for bearer in (token, new_token):
        assert client.post("/api/auth/refresh", headers=_bearer(bearer)).status_code == 401
        assert _me(client, bearer) == 401


def test_cookie_session_needs_the_csrf_header(app: FastAPI, world: World, settings: Settings) -> None:
    browser = TestClient(app, base_url="https://testserver")
    login = _login(browser)
    cookies = login["set_cookie"].lower()
    refresh_cookie = next(c for c in login["set_cookie"].split("\n") if c.startswith("maskloop_refresh="))
    csrf_cookie = next(c for c in login["set_cookie"].split("\n") if c.startswith("maskloop_csrf="))
    for attribute in ("httponly", "samesite=strict", "path=/api/auth", "secure", f"max-age={7 * 24 * 3600}"):
        assert attribute in refresh_cookie.lower(), refresh_cookie
    assert "httponly" not in csrf_cookie.lower() and "path=/;" in csrf_cookie.lower() + ";"
    assert "samesite=strict" in csrf_cookie.lower() and "secure" in cookies
    csrf = login["csrf_token"]
    assert csrf and browser.cookies.get("maskloop_csrf") == csrf
    for headers in ({}, {"X-CSRF-Token": "forged"}):
        refused = browser.post("/api/auth/session", headers=headers)
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"] == "csrf_failed"
    fresh = browser.post("/api/auth/session", headers={"X-CSRF-Token": csrf})
    assert fresh.status_code == 200, fresh.text
    assert fresh.json()["csrf_token"] == csrf
    assert _me(browser, fresh.json()["access_token"]) == 200
    # Without the cookie (another client, or a plain-http request that may not carry a Secure cookie): 401.
    stranger = TestClient(app, base_url="https://testserver")
    assert stranger.post("/api/auth/session", headers={"X-CSRF-Token": csrf}).status_code == 401
    # Logout with the cookie needs the header too; then the session and its tokens are gone and cookies cleared.
    assert browser.post("/api/auth/logout").status_code == 403
    out = browser.post("/api/auth/logout", headers={"X-CSRF-Token": csrf})
    assert out.status_code == 204, out.text
    cleared = "\n".join(out.headers.get_list("set-cookie")).lower()
    assert "maskloop_refresh=" in cleared and "maskloop_csrf=" in cleared and "max-age=0" in cleared
    assert _me(browser, fresh.json()["access_token"]) == 401
    assert _me(browser, login["access_token"]) == 401
    replay = TestClient(app, base_url="https://testserver", cookies={"maskloop_refresh": "x", "maskloop_csrf": csrf})
    assert replay.post("/api/auth/session", headers={"X-CSRF-Token": csrf}).status_code == 401


def test_plain_http_cookies_are_not_secure(client: TestClient, world: World) -> None:
    assert "secure" not in _login(client)["set_cookie"].lower()


# --------------------------------------------------------------------------- listing and revoking


def test_listing_never_shows_secrets_and_owners_revoke_their_tokens(client: TestClient, world: World) -> None:
    mine = world.headers["annotator"]
    created = client.post("/api/auth/tokens", headers=mine, json={"name": "laptop"}).json()
    login = _login(client)
    tokens = client.get("/api/auth/tokens", headers=mine)
    sessions = client.get("/api/auth/sessions", headers=mine)
    assert tokens.status_code == 200 and sessions.status_code == 200
    assert [t["name"] for t in tokens.json()] == ["laptop"]
    assert set(tokens.json()[0]) == {"id", "name", "user_id", "created_at", "expires_at", "revoked"}
    assert len(sessions.json()) == 2  # the fixture's session and the sign-in
    for secret in (created["token"], created["token"][4:], login["access_token"], login["csrf_token"]):
        assert secret not in tokens.text and secret not in sessions.text
    refresh_cookie = login["set_cookie"].split("maskloop_refresh=")[1].split(";")[0]
    assert refresh_cookie not in sessions.text
    # Others may neither list nor revoke them; the owner may.
    other = world.headers["reviewer"]
    assert client.get(f"/api/auth/tokens?user_id={created['user_id']}", headers=other).status_code == 403
    assert client.delete(f"/api/auth/tokens/{created['id']}", headers=other).status_code == 404
    assert _me(client, created["token"]) == 200
    assert client.delete(f"/api/auth/tokens/{created['id']}", headers=mine).status_code == 204
    assert _me(client, created["token"]) == 401
    assert client.get("/api/auth/tokens", headers=mine).json()[0]["revoked"] is True


@BOTH_DATABASES
def test_admin_revokes_all_of_a_users_tokens_and_sessions(client: TestClient, world: World, db: Session) -> None:
    user_id = world.users["reviewer"].id
    api_token = client.post("/api/auth/tokens", headers=world.headers["reviewer"], json={"name": "x"}).json()["token"]
    session_token = _login(client, "reviewer@example.org")["access_token"]
    denied = client.post(f"/api/users/{user_id}/revoke-tokens", headers=world.headers["lead"])
    assert denied.status_code == 403
    response = client.post(f"/api/users/{user_id}/revoke-tokens", headers=world.headers["platform_admin"])
    assert response.status_code == 200, response.text
    assert response.json() == {"api_tokens_revoked": 1, "sessions_revoked": 2}
    for token in (api_token, session_token):
        assert _me(client, token) == 401
    assert _me(client, world.headers["lead"]["Authorization"].split()[1]) == 200
    actions = set(db.scalars(select(AuditEvent.action)))
    assert {"auth.login", "token.create", "user.revoke_credentials"} <= actions


def test_audit_records_logout_and_revocations(client: TestClient, world: World, db: Session) -> None:
    mine = world.headers["viewer"]
    token = client.post("/api/auth/tokens", headers=mine, json={"name": "x"}).json()
    client.delete(f"/api/auth/tokens/{token['id']}", headers=mine)
    other = _login(client, "viewer@example.org")["access_token"]
    sid = jwt.decode(other, options={"verify_signature": False})["sid"]
    client.delete(f"/api/auth/sessions/{sid}", headers=mine)
    client.post("/api/auth/logout", headers=mine)
    actions = list(db.scalars(select(AuditEvent.action).where(AuditEvent.actor_user_id == world.users["viewer"].id)))
    for action in ("token.create", "token.revoke", "auth.login", "auth_session.revoke", "auth.logout"):
        assert action in actions, actions


# --------------------------------------------------------------------------- caching


def test_every_auth_answer_is_no_store(client: TestClient, world: World) -> None:
    headers = world.headers["lead"]
    answers = [
        client.post("/api/auth/login", json={"email": "lead@example.org", "password": PASSWORD}),
        client.post("/api/auth/login", json={"email": "lead@example.org", "password": "wrong"}),
        client.post("/api/auth/login", json={}),
        client.get("/api/auth/me", headers=headers),
        client.post("/api/auth/refresh", headers=headers),
        client.post("/api/auth/session"),  # the sign-in's cookie, without the CSRF header
        client.post("/api/auth/tokens", headers=headers, json={"name": "t"}),
        client.get("/api/auth/sessions", headers=headers),
    ]
    assert [a.status_code for a in answers] == [200, 401, 422, 200, 200, 403, 201, 200]
    for answer in answers:
        assert answer.headers["cache-control"] == "no-store", answer.request.url
        assert answer.headers["pragma"] == "no-cache"
