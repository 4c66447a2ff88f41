"""Authentication (passwords, session tokens, API tokens) and the project role rules, endpoint by endpoint."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any

import httpx
import jwt
import numpy as np
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.core.config import Settings
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import Phantom
from backend.models import ApiToken, AuditEvent, LabelVersion, Membership, Scan, User
from backend.projects import service as projects
from tests.conftest import PASSWORD, World
from tests.factories import post_patch, small_phantom, upload_masks, upload_scan

BOTH_DATABASES = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)


@pytest.fixture(autouse=True)
def fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """Cheap argon2 parameters: hashes still verify for real, but building a world takes milliseconds."""
    monkeypatch.setattr(auth, "_hasher", PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1))


@cache
def _phantom() -> Phantom:
    return small_phantom(seed=11)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _login(client: TestClient, email: str, password: str) -> httpx.Response:
    return client.post("/api/auth/login", json={"email": email, "password": password})


def _me(client: TestClient, token: str) -> httpx.Response:
    return client.get("/api/auth/me", headers=_bearer(token))


def _assert_401(response: httpx.Response, message_part: str) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["error"] == "unauthenticated"
    assert message_part in body["detail"]


# --------------------------------------------------------------------------- login and session tokens


@BOTH_DATABASES
def test_login_issues_a_token_that_works(client: TestClient, world: World) -> None:
    response = _login(client, "  Lead@Example.org ", PASSWORD)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "bearer"
    assert body["user"]["id"] == world.users["lead"].id
    assert "password_hash" not in body["user"]
    me = _me(client, body["access_token"])
    assert me.status_code == 200
    assert me.json()["email"] == "lead@example.org"
    assert me.json()["id"] == world.users["lead"].id


@BOTH_DATABASES
def test_wrong_password_and_unknown_email_get_the_same_401(client: TestClient, world: World) -> None:
    wrong_password = _login(client, "lead@example.org", PASSWORD + "x")
    unknown_email = _login(client, "nobody@example.org", PASSWORD)
    _assert_401(wrong_password, "wrong e-mail or password")
    _assert_401(unknown_email, "wrong e-mail or password")
    # Nothing tells an attacker whether the account exists.
    assert wrong_password.json() == unknown_email.json()


@BOTH_DATABASES
def test_disabled_user_cannot_log_in_nor_use_an_old_token(client: TestClient, world: World, db: Session) -> None:
    old_token = _login(client, "annotator@example.org", PASSWORD).json()["access_token"]
    world.users["annotator"].is_active = False
    db.flush()
    response = _login(client, "annotator@example.org", PASSWORD)
    _assert_401(response, "wrong e-mail or password")
    assert response.json() == _login(client, "nobody@example.org", PASSWORD).json()
    _assert_401(_me(client, old_token), "account disabled")


def test_missing_authorization_header_is_401_with_bearer_challenge(client: TestClient, world: World) -> None:
    for path in ("/api/auth/me", "/api/projects", f"/api/projects/{world.project.id}/scans"):
        response = client.get(path)
        _assert_401(response, "sign in first")


def test_garbage_or_foreign_tokens_are_401(client: TestClient, world: World, settings: Settings) -> None:
    _assert_401(_me(client, "not-a-jwt"), "invalid bearer token")
    user = world.users["lead"]
    exp = datetime.now(UTC) + timedelta(hours=1)
    forged = jwt.encode({"sub": str(user.id), "exp": exp, "typ": "access"}, "another-secret-" * 4, algorithm="HS256")
    _assert_401(_me(client, forged), "invalid bearer token")
    wrong_type = jwt.encode({"sub": str(user.id), "exp": exp, "typ": "refresh"}, settings.resolved_secret_key)
    _assert_401(_me(client, wrong_type), "invalid bearer token")
    _assert_401(_me(client, "mlk_" + "x" * 43), "unknown or revoked API token")


def test_expired_session_token_says_the_session_expired(client: TestClient, world: World, settings: Settings) -> None:
    user = world.users["lead"]
    past = datetime.now(UTC) - timedelta(minutes=5)
    expired = jwt.encode({"sub": str(user.id), "exp": past, "typ": "access"}, settings.resolved_secret_key)
    _assert_401(_me(client, expired), "session expired")
    # A token issued with a negative lifetime is just as dead.
    short_lived = settings.model_copy(update={"token_ttl_minutes": -1})
    token, expires_at = auth.issue_access_token(user, short_lived)
    assert expires_at < datetime.now(UTC)
    _assert_401(_me(client, token), "session expired")
    # And an expired session cannot be refreshed.
    _assert_401(client.post("/api/auth/refresh", headers=_bearer(expired)), "session expired")


def test_refresh_returns_a_new_working_token(client: TestClient, world: World, settings: Settings) -> None:
    before = datetime.now(UTC)
    response = client.post("/api/auth/refresh", headers=world.headers["reviewer"])
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["user"]["id"] == world.users["reviewer"].id
    expires_at = datetime.fromisoformat(body["expires_at"])
    ttl = timedelta(minutes=settings.token_ttl_minutes)
    assert before + ttl - timedelta(seconds=5) <= expires_at <= datetime.now(UTC) + ttl + timedelta(seconds=5)
    me = _me(client, body["access_token"])
    assert me.status_code == 200
    assert me.json()["id"] == world.users["reviewer"].id


# --------------------------------------------------------------------------- API tokens


@BOTH_DATABASES
def test_user_creates_an_api_token_for_themself(client: TestClient, world: World, db: Session) -> None:
    response = client.post("/api/auth/tokens", headers=world.headers["annotator"], json={"name": "laptop"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["user_id"] == world.users["annotator"].id
    assert body["name"] == "laptop"
    # Personal tokens expire: by default after the maximum lifetime (30 days).
    expires_at = datetime.fromisoformat(body["expires_at"])
    assert timedelta(days=29) < expires_at - datetime.now(UTC) <= timedelta(days=30)
    plaintext = body["token"]
    assert plaintext.startswith("mlk_")
    assert _me(client, plaintext).json()["id"] == world.users["annotator"].id
    # Stored only as its sha256: no column of the row holds the plaintext.
    row = db.get(ApiToken, body["id"])
    assert row is not None
    assert row.token_sha256 == hashlib.sha256(plaintext.encode()).hexdigest()
    columns = [getattr(row, c.key) for c in ApiToken.__table__.columns]
    assert not any(isinstance(value, str) and plaintext in value for value in columns)
    assert not any(isinstance(value, str) and plaintext[4:] in value for value in columns)


@BOTH_DATABASES
def test_admin_creates_a_service_account_and_its_token(client: TestClient, world: World) -> None:
    admin = world.headers["platform_admin"]
    created = client.post(
        "/api/users",
        headers=admin,
        json={"email": "Worker@Example.org", "display_name": "Model worker", "is_service": True},
    )
    assert created.status_code == 201, created.text
    account = created.json()
    assert account["is_service"] is True
    assert account["is_admin"] is False
    assert account["email"] == "worker@example.org"
    # A service account has no password, so it can never log in with one.
    _assert_401(_login(client, "worker@example.org", ""), "wrong e-mail or password")
    token = client.post(
        "/api/auth/tokens", headers=admin, json={"name": "gpu-1", "user_id": account["id"], "expires_in_days": 30}
    )
    assert token.status_code == 201, token.text
    assert token.json()["user_id"] == account["id"]
    expires_at = datetime.fromisoformat(token.json()["expires_at"])
    assert timedelta(days=29) < expires_at - datetime.now(UTC) <= timedelta(days=30)
    me = _me(client, token.json()["token"])
    assert me.status_code == 200
    assert me.json()["id"] == account["id"]
    assert me.json()["is_service"] is True


def test_non_admin_cannot_create_tokens_or_users_for_others(client: TestClient, world: World, db: Session) -> None:
    tokens_before = db.scalar(select(func.count()).select_from(ApiToken))
    for role in ("lead", "annotator", "viewer"):
        response = client.post(
            "/api/auth/tokens",
            headers=world.headers[role],
            json={"name": "steal", "user_id": world.users["platform_admin"].id},
        )
        assert response.status_code == 403, (role, response.text)
        assert response.json()["error"] == "permission_denied"
        user = client.post(
            "/api/users", headers=world.headers[role], json={"email": f"x-{role}@example.org", "password": PASSWORD}
        )
        assert user.status_code == 403, (role, user.text)
    assert db.scalar(select(func.count()).select_from(ApiToken)) == tokens_before
    assert db.scalar(select(User.id).where(User.email.like("x-%"))) is None
    assert client.get("/api/users", headers=world.headers["lead"]).status_code == 403
    listed = client.get("/api/users", headers=world.headers["platform_admin"])
    assert listed.status_code == 200
    assert {u["email"] for u in listed.json()} >= {"lead@example.org", "outsider@example.org"}


def test_admin_creates_a_user_who_can_log_in(client: TestClient, world: World) -> None:
    admin = world.headers["platform_admin"]
    short = client.post("/api/users", headers=admin, json={"email": "new@example.org", "password": "short"})
    assert short.status_code == 422
    assert "at least 8" in short.json()["detail"]
    made = client.post("/api/users", headers=admin, json={"email": "new@example.org", "password": PASSWORD})
    assert made.status_code == 201, made.text
    again = client.post("/api/users", headers=admin, json={"email": "NEW@example.org", "password": PASSWORD})
    assert again.status_code == 409
    login = _login(client, "new@example.org", PASSWORD)
    assert login.status_code == 200
    assert login.json()["user"]["id"] == made.json()["id"]


@BOTH_DATABASES
def test_revoked_or_expired_api_token_is_401(client: TestClient, world: World, db: Session) -> None:
    headers = world.headers["reviewer"]
    first = client.post("/api/auth/tokens", headers=headers, json={"name": "a"}).json()
    second = client.post("/api/auth/tokens", headers=headers, json={"name": "b", "expires_in_days": 1}).json()
    assert _me(client, first["token"]).status_code == 200
    assert _me(client, second["token"]).status_code == 200
    revoked = db.get(ApiToken, first["id"])
    expired = db.get(ApiToken, second["id"])
    assert revoked is not None and expired is not None
    revoked.revoked = True
    expired.expires_at = datetime.now(UTC) - timedelta(minutes=1)
    db.flush()
    _assert_401(_me(client, first["token"]), "unknown or revoked API token")
    _assert_401(_me(client, second["token"]), "API token expired")


# --------------------------------------------------------------------------- the role matrix

OK, CREATED, DENIED, HIDDEN = 200, 201, 403, 404
ROLES = ("platform_admin", "lead", "annotator", "reviewer", "viewer", "outsider")

# One row per action, one column per role. Outsiders never learn that the project exists (404); viewers read
# only; annotators and reviewers also write labels; leads and platform admins also import, manage members and
# read the audit log.
ROLE_RULES: dict[str, tuple[int, int, int, int, int, int]] = {
    #                 platform_admin  lead     annotator  reviewer  viewer  outsider
    "list_scans": (OK, OK, OK, OK, OK, HIDDEN),
    "read_scan": (OK, OK, OK, OK, OK, HIDDEN),
    "download_volume": (OK, OK, OK, OK, OK, HIDDEN),
    "list_versions": (OK, OK, OK, OK, OK, HIDDEN),
    "read_schema": (OK, OK, OK, OK, OK, HIDDEN),
    "import_scan": (CREATED, CREATED, DENIED, DENIED, DENIED, HIDDEN),
    "save_version": (CREATED, CREATED, CREATED, CREATED, DENIED, HIDDEN),
    "add_member": (OK, OK, DENIED, DENIED, DENIED, HIDDEN),
    "read_audit": (OK, OK, DENIED, DENIED, DENIED, HIDDEN),
}
WRITES = {"import_scan", "save_version", "add_member"}
ROLE_CASES = [
    pytest.param(role, action, expected, id=f"{role}-{action}-{expected}")
    for action, statuses in ROLE_RULES.items()
    for role, expected in zip(ROLES, statuses, strict=True)
]

Action = Callable[[TestClient, World, dict[str, str], dict[str, Any]], httpx.Response]


def _list_scans(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    return client.get(f"/api/projects/{world.project.id}/scans", headers=headers)


def _read_scan(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    return client.get(f"/api/scans/{scan['id']}", headers=headers)


def _volume(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    return client.get(f"/api/scans/{scan['id']}/volume", headers=headers)


def _versions(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    return client.get(f"/api/scans/{scan['id']}/versions", headers=headers)


def _schema(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    return client.get(f"/api/projects/{world.project.id}/schema", headers=headers)


def _import(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    phantom = _phantom()
    return client.post(
        f"/api/projects/{world.project.id}/scans",
        headers=headers,
        files={"file": ("case-new.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
        data={"case_id": "case-new"},
    )


def _save(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    # The head moves after every successful save: always patch the current head.
    head = client.get(f"/api/scans/{scan['id']}", headers=world.headers["lead"]).json()["head_version_id"]
    box = np.ones((3, 3, 2), dtype=bool)
    return post_patch(client, headers, scan["id"], head, [("spleen", (4, 4, 4), box)], "role check")


def _add_member(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    newcomer = world.users["newcomer"]
    return client.put(
        f"/api/projects/{world.project.id}/members", headers=headers, json={"user_id": newcomer.id, "role": "viewer"}
    )


def _audit(client: TestClient, world: World, headers: dict[str, str], scan: dict[str, Any]) -> httpx.Response:
    return client.get(f"/api/projects/{world.project.id}/audit", headers=headers)


ACTIONS: dict[str, Action] = {
    "list_scans": _list_scans,
    "read_scan": _read_scan,
    "download_volume": _volume,
    "list_versions": _versions,
    "read_schema": _schema,
    "import_scan": _import,
    "save_version": _save,
    "add_member": _add_member,
    "read_audit": _audit,
}


def test_role_table_covers_every_action() -> None:
    assert set(ROLE_RULES) == set(ACTIONS)
    assert len(ROLE_CASES) == len(ROLES) * len(ACTIONS)


@pytest.fixture
def scan(client: TestClient, world: World, db: Session) -> dict[str, Any]:
    """A scan of the world's project with a first label version, plus a user who is in no project yet."""
    world.users["newcomer"] = auth.create_user(db, "newcomer@example.org", PASSWORD, "Newcomer")
    db.flush()
    phantom = _phantom()
    lead = world.headers["lead"]
    created = upload_scan(client, lead, world.project.id, phantom, "case-roles")
    upload_masks(client, lead, created["id"], {"liver": phantom.masks["liver"]}, phantom.affine)
    return dict(client.get(f"/api/scans/{created['id']}", headers=lead).json())


def _state(db: Session, world: World) -> tuple[int, int, int, int]:
    """What a write may change: scans, versions, memberships and audit events of the project."""
    project_id = world.project.id
    return (
        db.scalar(select(func.count()).select_from(Scan).where(Scan.project_id == project_id)) or 0,
        db.scalar(select(func.count()).select_from(LabelVersion)) or 0,
        db.scalar(select(func.count()).select_from(Membership).where(Membership.project_id == project_id)) or 0,
        db.scalar(select(func.count()).select_from(AuditEvent).where(AuditEvent.project_id == project_id)) or 0,
    )


@pytest.mark.parametrize(("role", "action", "expected"), ROLE_CASES)
def test_role_matrix(
    client: TestClient, world: World, db: Session, scan: dict[str, Any], role: str, action: str, expected: int
) -> None:
    before = _state(db, world)
    response = ACTIONS[action](client, world, world.headers[role], scan)
    assert response.status_code == expected, response.text
    if expected == HIDDEN:
        assert response.json()["error"] == "not_found"
    elif expected == DENIED:
        assert response.json()["error"] == "permission_denied"
        assert f"role {role!r} may not" in response.json()["detail"]
    after = _state(db, world)
    if action in WRITES and expected < 400:
        assert after != before
    else:
        assert after == before  # reads and refused writes change nothing
    if expected >= 400:
        return
    body = response.json() if action != "download_volume" else None
    if action == "list_scans":
        assert [s["id"] for s in body["items"]] == [scan["id"]]
    elif action == "read_scan":
        assert body["case_id"] == "case-roles"
    elif action == "download_volume":
        assert response.headers["etag"].strip('"') == db.get(Scan, scan["id"]).image_digest  # type: ignore[union-attr]
        assert response.content[:2] == b"\x1f\x8b"
    elif action == "list_versions":
        assert [v["id"] for v in body] == [scan["head_version_id"]]
    elif action == "read_schema":
        assert len(body["structures"]) == 28
    elif action == "import_scan":
        assert body["case_id"] == "case-new"
    elif action == "save_version":
        assert body["parent_id"] == scan["head_version_id"]
        assert body["author"]["user_id"] == world.users[role].id
        assert db.get(Scan, scan["id"]).head_version_id == body["id"]  # type: ignore[union-attr]
    elif action == "add_member":
        assert body == {
            "user_id": world.users["newcomer"].id,
            "email": "newcomer@example.org",
            "display_name": "Newcomer",
            "role": "viewer",
        }
    elif action == "read_audit":
        assert body["total"] >= 1
        # The import's version and the QA run it triggers, newest first.
        assert [e["action"] for e in body["items"][:2]] == ["qa.run", "label_version.create"]


# --------------------------------------------------------------------------- projects and memberships


@BOTH_DATABASES
def test_only_a_platform_admin_creates_projects(client: TestClient, world: World) -> None:
    body = {"slug": "second", "name": "Second"}
    for role in ("lead", "annotator", "viewer", "outsider"):
        response = client.post("/api/projects", headers=world.headers[role], json=body)
        assert response.status_code == 403, (role, response.text)
    created = client.post("/api/projects", headers=world.headers["platform_admin"], json=body)
    assert created.status_code == 201, created.text
    assert created.json()["slug"] == "second"
    assert created.json()["role"] == "admin"
    slugs = [p["slug"] for p in client.get("/api/projects", headers=world.headers["platform_admin"]).json()]
    assert slugs == ["demo", "second"]
    # The lead of 'demo' does not see the new project.
    assert [p["slug"] for p in client.get("/api/projects", headers=world.headers["lead"]).json()] == ["demo"]
    duplicate = client.post("/api/projects", headers=world.headers["platform_admin"], json=body)
    assert duplicate.status_code == 409


def _members(client: TestClient, world: World) -> dict[int, str]:
    rows = client.get(f"/api/projects/{world.project.id}/members", headers=world.headers["lead"]).json()
    return {row["user_id"]: row["role"] for row in rows}


@BOTH_DATABASES
def test_lead_cannot_grant_the_admin_role(client: TestClient, world: World) -> None:
    url = f"/api/projects/{world.project.id}/members"
    outsider = world.users["outsider"]
    denied = client.put(url, headers=world.headers["lead"], json={"user_id": outsider.id, "role": "admin"})
    assert denied.status_code == 403
    assert outsider.id not in _members(client, world)
    # Promoting an existing member to admin is refused just the same.
    viewer_id = world.users["viewer"].id
    promote = client.put(url, headers=world.headers["lead"], json={"user_id": viewer_id, "role": "admin"})
    assert promote.status_code == 403
    assert _members(client, world)[viewer_id] == "viewer"
    # A lead may add members with lesser roles (by e-mail too), and an admin may grant admin.
    added = client.put(url, headers=world.headers["lead"], json={"email": "outsider@example.org", "role": "annotator"})
    assert added.status_code == 200, added.text
    assert _members(client, world)[outsider.id] == "annotator"
    granted = client.put(url, headers=world.headers["platform_admin"], json={"user_id": outsider.id, "role": "admin"})
    assert granted.status_code == 200
    assert _members(client, world)[outsider.id] == "admin"
    unknown_role = client.put(url, headers=world.headers["platform_admin"], json={"user_id": outsider.id, "role": "x"})
    assert unknown_role.status_code == 422


@BOTH_DATABASES
def test_lead_cannot_demote_or_remove_a_project_admin(client: TestClient, world: World, db: Session) -> None:
    url = f"/api/projects/{world.project.id}/members"
    project_admin = auth.create_user(db, "owner@example.org", PASSWORD, "Owner")
    db.flush()
    granted = client.put(
        url, headers=world.headers["platform_admin"], json={"user_id": project_admin.id, "role": "admin"}
    )
    assert granted.status_code == 200
    demote = client.put(url, headers=world.headers["lead"], json={"user_id": project_admin.id, "role": "viewer"})
    assert demote.status_code == 403, demote.text
    remove = client.delete(f"{url}/{project_admin.id}", headers=world.headers["lead"])
    assert remove.status_code == 403, remove.text
    assert _members(client, world)[project_admin.id] == "admin"
    # The lead still manages everyone else.
    assert client.delete(f"{url}/{world.users['viewer'].id}", headers=world.headers["lead"]).status_code == 204
    assert world.users["viewer"].id not in _members(client, world)


@BOTH_DATABASES
def test_platform_admin_keeps_full_rights_whatever_their_membership(
    client: TestClient, world: World, db: Session
) -> None:
    # Even when a project membership says 'viewer', a platform administrator may do everything everywhere.
    admin = world.users["platform_admin"]
    membership = db.scalar(
        select(Membership).where(Membership.project_id == world.project.id, Membership.user_id == admin.id)
    )
    assert membership is not None
    membership.role = "viewer"
    db.flush()
    response = client.get(f"/api/projects/{world.project.id}/audit", headers=world.headers["platform_admin"])
    assert response.status_code == 200, response.text
    project = client.get(f"/api/projects/{world.project.id}", headers=world.headers["platform_admin"])
    assert project.json()["role"] == "admin"


@BOTH_DATABASES
def test_project_list_shows_only_the_callers_projects(client: TestClient, world: World, db: Session) -> None:
    projects.create_project(db, "hidden", "Hidden", world.users["platform_admin"])
    db.flush()
    assert client.get("/api/projects", headers=world.headers["outsider"]).json() == []
    for role in ("lead", "annotator", "reviewer", "viewer"):
        listed = client.get("/api/projects", headers=world.headers[role]).json()
        assert [(p["slug"], p["role"]) for p in listed] == [("demo", role)], role
    admin_view = client.get("/api/projects", headers=world.headers["platform_admin"]).json()
    assert [(p["slug"], p["role"]) for p in admin_view] == [("demo", "admin"), ("hidden", "admin")]
    # Reading a project one is not in looks exactly like reading one that does not exist.
    hidden = client.get(f"/api/projects/{world.project.id}", headers=world.headers["outsider"])
    missing = client.get("/api/projects/999999", headers=world.headers["outsider"])
    assert hidden.status_code == missing.status_code == 404
