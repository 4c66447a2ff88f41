"""Login sessions: server-side rows behind the access tokens, the refresh cookie and its CSRF token.

A sign-in opens a session with an absolute expiry (`session_max_hours`). Its access tokens (JWT) carry the
session id (`sid`); resolving such a token costs one primary-key lookup, so a revoked session's tokens stop
working at once. Refreshing (bearer or cookie) never issues a token that outlives the session. The refresh
cookie is not rotated on use: several tabs share it, and rotation would make them log each other out; it is
bound to its CSRF token (both stored as sha256 only).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.config import Settings
from backend.core.errors import NotFound, PermissionDenied, Unauthenticated
from backend.models import AuthSession, User


class CsrfFailed(PermissionDenied):
    """The cookie request lacks the matching X-CSRF-Token header (403)."""

    code = "csrf_failed"


def digest(secret: str) -> str:
    """sha256 hex of a token: what the database keeps instead of the token."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True)
class OpenedSession:
    """A new session and its two secrets, shown to the client only once."""

    session: AuthSession
    refresh_token: str
    csrf_token: str


def open_session(
    db: Session, user: User, settings: Settings, *, user_agent: str = "", client_address: str = ""
) -> OpenedSession:
    """Start a login session for a user (flushed, not committed)."""
    now = datetime.now(UTC)
    refresh, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    row = AuthSession(
        user_id=user.id,
        created_at=now,
        expires_at=now + timedelta(hours=settings.session_max_hours),
        last_used_at=now,
        refresh_sha256=digest(refresh),
        csrf_sha256=digest(csrf),
        user_agent=user_agent[:300],
        client_address=client_address[:64],
    )
    db.add(row)
    db.flush()
    return OpenedSession(row, refresh, csrf)


def access_token(user: User, settings: Settings, session: AuthSession | None = None) -> tuple[str, datetime]:
    """A signed access token; with a session it carries `sid` and never outlives the session's absolute expiry."""
    now = datetime.now(UTC)
    expires_at = now + timedelta(minutes=settings.token_ttl_minutes)
    payload: dict[str, object] = {"sub": str(user.id), "typ": "access", "iat": int(now.timestamp())}
    if session is not None:
        expires_at = min(expires_at, session.expires_at)
        payload["sid"] = session.id
    payload["exp"] = expires_at
    return jwt.encode(payload, settings.resolved_secret_key, algorithm="HS256"), expires_at


def _check_active(row: AuthSession | None, now: datetime) -> AuthSession:
    if row is None or row.revoked_at is not None:
        raise Unauthenticated("this session was signed out; sign in again")
    if row.expires_at <= now:
        raise Unauthenticated("session expired; sign in again")
    return row


def active_session(db: Session, session_id: int, user_id: int) -> AuthSession:
    """The live session a token names (one primary-key lookup), or Unauthenticated."""
    row = db.get(AuthSession, session_id)
    if row is not None and row.user_id != user_id:
        row = None
    return _check_active(row, datetime.now(UTC))


def touch(db: Session, session: AuthSession) -> None:
    """Note that the session was refreshed now."""
    session.last_used_at = datetime.now(UTC)
    db.flush()


def by_refresh_cookie(
    db: Session, refresh_cookie: str | None, csrf_header: str | None, csrf_cookie: str | None
) -> AuthSession:
    """The live session of a refresh cookie whose CSRF double submit matches; 401 without it, 403 on CSRF."""
    if not refresh_cookie:
        raise Unauthenticated("no session cookie; sign in")
    row = db.scalar(select(AuthSession).where(AuthSession.refresh_sha256 == digest(refresh_cookie)))
    row = _check_active(row, datetime.now(UTC))
    # Double submit: the header must equal the readable cookie (which another site cannot read) and belong to
    # this session, so a forged cross-site request (which carries the cookies but not the header) is refused.
    if (
        not csrf_header
        or not csrf_cookie
        or not hmac.compare_digest(csrf_header.encode(), csrf_cookie.encode())
        or not hmac.compare_digest(digest(csrf_header), row.csrf_sha256)
    ):
        raise CsrfFailed("missing or wrong X-CSRF-Token header")
    return row


def revoke(db: Session, session: AuthSession, *, actor_user_id: int, action: str = "auth_session.revoke") -> None:
    """End a session now (its access tokens and refresh cookie stop working), with an audit event."""
    if session.revoked_at is None:
        session.revoked_at = datetime.now(UTC)
    db.flush()
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action=action,
        entity_type="auth_session",
        entity_id=session.id,
        details={"user_id": session.user_id},
    )


def list_active(db: Session, user_id: int) -> list[AuthSession]:
    """A user's live sessions, newest first."""
    now = datetime.now(UTC)
    query = (
        select(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None), AuthSession.expires_at > now)
        .order_by(AuthSession.created_at.desc(), AuthSession.id.desc())
    )
    return list(db.scalars(query))


def get_own(db: Session, session_id: int, actor: User) -> AuthSession:
    """A session of the caller (administrators: anyone's); others are 404 so ids reveal nothing."""
    row = db.get(AuthSession, session_id)
    if row is None or (row.user_id != actor.id and not actor.is_admin):
        raise NotFound(f"session {session_id} not found")
    return row


def revoke_all(db: Session, user_id: int) -> int:
    """End every live session of a user; how many."""
    now = datetime.now(UTC)
    result = db.execute(
        update(AuthSession)
        .where(AuthSession.user_id == user_id, AuthSession.revoked_at.is_(None), AuthSession.expires_at > now)
        .values(revoked_at=now)
        .execution_options(synchronize_session="fetch")
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def prune(db: Session, now: datetime, keep_days: int = 30) -> int:
    """Delete sessions that ended (expired or revoked) more than `keep_days` ago; how many."""
    cutoff = now - timedelta(days=keep_days)
    result = db.execute(
        delete(AuthSession).where(
            (AuthSession.expires_at < cutoff)
            | (AuthSession.revoked_at.is_not(None) & (AuthSession.revoked_at < cutoff))
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
