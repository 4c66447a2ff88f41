"""Account use cases: sign-in, session refresh and sign-out, users, API tokens, login sessions (each one transaction).

Called by `backend/auth/router.py` and the `maskloop` CLI. The services flush; these functions commit.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.auth.sessions import OpenedSession
from backend.core.config import Settings
from backend.core.errors import Unauthenticated
from backend.models import ApiToken, AuthSession, User
from backend.projects import service as projects


@dataclass(frozen=True)
class SignIn:
    """A successful sign-in: the user, the login session opened (with its two secrets) and an access token."""

    user: User
    opened: OpenedSession
    access_token: str
    expires_at: datetime


@dataclass(frozen=True)
class NewAccount:
    """A user created from the command line, and the plaintext of its first API token when one was asked for."""

    user: User
    token: str | None


def sign_in(
    db: Session, email: str, password: str, settings: Settings, *, client_address: str, user_agent: str = ""
) -> SignIn:
    """Check the password (throttled) and open a login session; a refused password's counted failure is committed."""
    try:
        user, opened = auth.sign_in(db, email, password, settings, client_address=client_address, user_agent=user_agent)
    except Unauthenticated:
        db.commit()  # the counted failure must outlive the refusal, or the throttle would never lock
        raise
    db.commit()
    token, expires_at = auth.issue_access_token(user, settings, session=opened.session)
    return SignIn(user=user, opened=opened, access_token=token, expires_at=expires_at)


def cookie_refresh(
    db: Session, settings: Settings, *, refresh_cookie: str | None, csrf_header: str | None, csrf_cookie: str | None
) -> tuple[User, str, datetime]:
    """A fresh access token from the refresh cookie and its CSRF double submit: (user, token, expires_at)."""
    result = auth.cookie_refresh(
        db, settings, refresh_cookie=refresh_cookie, csrf_header=csrf_header, csrf_cookie=csrf_cookie
    )
    db.commit()
    return result


def refresh_session(db: Session, principal: auth.Principal, settings: Settings) -> tuple[str, datetime]:
    """A fresh access token for the caller's login session (its last use recorded)."""
    result = auth.refresh_session(db, principal, settings)
    db.commit()
    return result


def sign_out(
    db: Session,
    settings: Settings,
    *,
    bearer: str | None,
    refresh_cookie: str | None,
    csrf_header: str | None,
    csrf_cookie: str | None,
) -> None:
    """End the caller's login session: the bearer token's, else the refresh cookie's (with its CSRF header)."""
    auth.sign_out(
        db, settings, bearer=bearer, refresh_cookie=refresh_cookie, csrf_header=csrf_header, csrf_cookie=csrf_cookie
    )
    db.commit()


def create_user(
    db: Session,
    email: str,
    password: str | None,
    display_name: str = "",
    *,
    is_admin: bool = False,
    is_service: bool = False,
    actor: User | None,
) -> User:
    """Create a user or service account (an administrator's request, or trusted code with no actor)."""
    user = auth.create_user(
        db,
        email,
        password,
        display_name,
        is_admin=is_admin,
        is_service=is_service,
        actor_user_id=actor.id if actor is not None else None,
    )
    db.commit()
    return user


def create_account(
    db: Session,
    email: str,
    password: str | None,
    display_name: str,
    settings: Settings,
    *,
    is_admin: bool = False,
    is_service: bool = False,
    project_slug: str | None = None,
    role: str = "annotator",
    with_token: bool = False,
) -> NewAccount:
    """Create a user, optionally joining a project and with a first API token, in one transaction (CLI)."""
    user = auth.create_user(db, email, password, display_name, is_admin=is_admin, is_service=is_service)
    if project_slug:
        projects.set_membership(db, projects.get_project_by_slug(db, project_slug).id, user, role, user)
    # A service account's token lives at most (and by default) service_token_max_days.
    plaintext = auth.create_api_token(db, user, "cli", actor=user, settings=settings)[0] if with_token else None
    db.commit()
    return NewAccount(user=user, token=plaintext)


def create_api_token(
    db: Session,
    name: str,
    settings: Settings,
    *,
    owner_id: int | None = None,
    expires_in_days: int | None = None,
    actor: User,
) -> tuple[User, str, ApiToken]:
    """An API token for `owner_id` (default: the actor): (owner, plaintext shown once, token row)."""
    owner = actor if owner_id is None else auth.get_user(db, owner_id)
    plaintext, token = auth.create_api_token(
        db, owner, name, actor=actor, settings=settings, expires_in_days=expires_in_days
    )
    db.commit()
    return owner, plaintext, token


def revoke_api_token(db: Session, token_id: int, *, actor: User) -> ApiToken:
    """Revoke one of the actor's API tokens (administrators: anyone's)."""
    token = auth.revoke_api_token(db, token_id, actor)
    db.commit()
    return token


def revoke_session(db: Session, session_id: int, *, actor: User) -> AuthSession:
    """End one of the actor's login sessions (administrators: anyone's)."""
    session = auth.revoke_session(db, session_id, actor)
    db.commit()
    return session


def revoke_credentials(db: Session, user_id: int, *, actor: User) -> tuple[int, int]:
    """Revoke every API token and login session of a user (administrators): (tokens, sessions) revoked."""
    revoked = auth.revoke_everything(db, user_id, actor)
    db.commit()
    return revoked


def prune_auth_state(db: Session, settings: Settings) -> tuple[int, int]:
    """Housekeeping: drop stale sign-in throttle rows and long-ended login sessions: (throttle rows, sessions)."""
    pruned = auth.prune_auth_state(db, settings)
    db.commit()
    return pruned
