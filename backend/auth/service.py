"""Identity: users, argon2 password hashes, sign-in, bearer tokens of login sessions and API tokens."""

from __future__ import annotations

import re
import secrets
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.auth import sessions, throttle
from backend.auth.sessions import OpenedSession
from backend.core.config import Settings
from backend.core.db import get_or_404
from backend.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from backend.models import ApiToken, AuthSession, User

_hasher = PasswordHasher()
# Hash of a random password per hasher parameters: unknown accounts verify against it, so they cost the same time.
_dummy_hashes: dict[tuple[object, ...], str] = {}
_dummy_lock = threading.Lock()
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
API_TOKEN_PREFIX = "mlk_"
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    """Argon2id hash of a password."""
    return _hasher.hash(password)


def _dummy_hash() -> str:
    # Derived lazily from the current hasher (tests swap in cheap parameters), so its cost matches real hashes.
    hasher = _hasher
    params = (hasher.time_cost, hasher.memory_cost, hasher.parallelism, hasher.hash_len, hasher.salt_len, hasher.type)
    with _dummy_lock:
        if params not in _dummy_hashes:
            _dummy_hashes[params] = hasher.hash(secrets.token_urlsafe(24))
        return _dummy_hashes[params]


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether password matches the stored hash; accounts without a password verify against a dummy hash (False),
    so that they take as long as a wrong password."""
    try:
        if not password_hash:
            _hasher.verify(_dummy_hash(), password)
            return False
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def create_user(
    db: Session,
    email: str,
    password: str | None,
    display_name: str = "",
    *,
    is_admin: bool = False,
    is_service: bool = False,
    actor_user_id: int | None = None,
) -> User:
    """Create a user (a service account has no password and logs in with API tokens)."""
    email = email.strip().lower()
    if not _EMAIL_RE.match(email):
        raise InvalidInput(f"{email!r} is not an e-mail address")
    if not is_service and (password is None or len(password) < MIN_PASSWORD_LENGTH):
        raise InvalidInput(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    if db.scalar(select(User.id).where(User.email == email)) is not None:
        raise Conflict(f"a user with e-mail {email} already exists")
    user = User(
        email=email,
        display_name=display_name or email.split("@")[0],
        password_hash=hash_password(password) if password else None,
        is_admin=is_admin,
        is_service=is_service,
    )
    db.add(user)
    try:
        db.flush()
    except IntegrityError as exc:
        raise Conflict(f"a user with e-mail {email} already exists") from exc
    audit.record(
        db,
        actor_user_id=actor_user_id,
        action="user.create",
        entity_type="user",
        entity_id=user.id,
        details={"email": email, "is_admin": is_admin, "is_service": is_service},
    )
    return user


def authenticate(db: Session, email: str, password: str, settings: Settings, *, client_address: str) -> User:
    """The active user with this e-mail and password, or an error; failures are counted (the caller commits).

    Locked accounts or addresses get TooManyRequests before any hashing; at most `login_max_concurrent_hashes`
    hashes run at once (ServiceUnavailable when no slot frees in time). Unknown, inactive and password-less
    accounts cost one hash like the others and get the same Unauthenticated, so timing reveals no account.
    """
    now = datetime.now(UTC)
    email = email.strip().lower()
    account_key = throttle.throttle_key(throttle.ACCOUNT, email)
    address_key = throttle.throttle_key(throttle.ADDRESS, client_address)
    throttle.check_not_locked(db, (account_key, address_key), now)
    user = db.scalar(select(User).where(User.email == email))
    with throttle.hash_slot(settings):
        matches = verify_password(user.password_hash if user is not None else None, password)
    if user is None or not user.is_active or not matches:
        throttle.record_failure(db, throttle.ACCOUNT, account_key, settings, now)
        throttle.record_failure(db, throttle.ADDRESS, address_key, settings, now)
        raise Unauthenticated("wrong e-mail or password")
    throttle.forget(db, account_key)
    return user


def sign_in(
    db: Session, email: str, password: str, settings: Settings, *, client_address: str, user_agent: str = ""
) -> tuple[User, OpenedSession]:
    """Check the password (throttled, see `authenticate`) and open a login session (flushed, not committed)."""
    user = authenticate(db, email, password, settings, client_address=client_address)
    opened = sessions.open_session(db, user, settings, user_agent=user_agent, client_address=client_address)
    audit.record(
        db,
        actor_user_id=user.id,
        action="auth.login",
        entity_type="auth_session",
        entity_id=opened.session.id,
        details={"client_address": client_address[:64]},
    )
    return user, opened


def issue_access_token(
    user: User, settings: Settings, db: Session | None = None, *, session: AuthSession | None = None
) -> tuple[str, datetime]:
    """A signed bearer token for a user, valid for the configured lifetime (never past its session's end).

    With a login session (given, or opened when `db` is given) the token carries its id and can be revoked and
    refreshed; without one (trusted code only: tests, tools) it just expires.
    """
    if session is None and db is not None:
        session = sessions.open_session(db, user, settings).session
    return sessions.access_token(user, settings, session)


_token_digest = sessions.digest


def max_token_days(owner: User, settings: Settings) -> int:
    """The longest lifetime an API token of this account may have."""
    return settings.service_token_max_days if owner.is_service else settings.personal_token_max_days


def create_api_token(
    db: Session, owner: User, name: str, *, actor: User, settings: Settings, expires_in_days: int | None = None
) -> tuple[str, ApiToken]:
    """Create an API token for a service account or oneself (at most the account kind's maximum lifetime, which
    is also the default); the plaintext is returned only once."""
    if actor.id != owner.id and not actor.is_admin:
        raise PermissionDenied("only an administrator may create tokens for another account")
    limit = max_token_days(owner, settings)
    if expires_in_days is not None and expires_in_days > limit:
        kind = "a service account's" if owner.is_service else "a personal"
        raise InvalidInput(
            f"{kind} API token may live at most {limit} days", max_days=limit, expires_in_days=expires_in_days
        )
    plaintext = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days or limit)
    token = ApiToken(user_id=owner.id, name=name, token_sha256=_token_digest(plaintext), expires_at=expires_at)
    db.add(token)
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="token.create",
        entity_type="api_token",
        entity_id=token.id,
        details={"owner_user_id": owner.id, "name": name},
    )
    return plaintext, token


@dataclass(frozen=True)
class Principal:
    """Who a bearer token speaks for, and through what: a login session, an API token, or neither (trusted code)."""

    user: User
    session: AuthSession | None = None
    api_token_id: int | None = None


def resolve_credentials(db: Session, token: str, settings: Settings) -> Principal:
    """The active user a bearer token belongs to and its session or API token, or Unauthenticated with the reason."""
    session: AuthSession | None = None
    api_token_id: int | None = None
    if token.startswith(API_TOKEN_PREFIX):
        row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == _token_digest(token)))
        if row is None or row.revoked:
            raise Unauthenticated("unknown or revoked API token")
        if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
            raise Unauthenticated("API token expired")
        user_id, api_token_id = row.user_id, row.id
    else:
        try:
            payload = jwt.decode(token, settings.resolved_secret_key, algorithms=["HS256"])
            user_id = int(payload["sub"])
            sid = payload.get("sid")
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("session expired; sign in again") from exc
        except (jwt.PyJWTError, KeyError, TypeError, ValueError) as exc:
            raise Unauthenticated("invalid bearer token") from exc
        if payload.get("typ") != "access" or (sid is not None and type(sid) is not int):
            raise Unauthenticated("invalid bearer token")
        if sid is not None:
            session = sessions.active_session(db, sid, user_id)
    user = db.get(User, user_id)
    if user is None or not user.is_active:
        raise Unauthenticated("account disabled")
    return Principal(user, session, api_token_id)


def resolve_token(db: Session, token: str, settings: Settings) -> User:
    """The active user a bearer token belongs to, or Unauthenticated with the reason."""
    return resolve_credentials(db, token, settings).user


def refresh_session(db: Session, principal: Principal, settings: Settings) -> tuple[str, datetime]:
    """A fresh access token for the caller's login session, never valid past the session's absolute expiry."""
    if principal.session is None:
        raise Unauthenticated("only a login session's token can be refreshed; sign in again")
    sessions.touch(db, principal.session)
    return sessions.access_token(principal.user, settings, principal.session)


def cookie_refresh(
    db: Session, settings: Settings, *, refresh_cookie: str | None, csrf_header: str | None, csrf_cookie: str | None
) -> tuple[User, str, datetime]:
    """A fresh access token from the refresh cookie and its CSRF double submit: (user, token, expires_at)."""
    session = sessions.by_refresh_cookie(db, refresh_cookie, csrf_header, csrf_cookie)
    user = db.get(User, session.user_id)
    if user is None or not user.is_active:
        raise Unauthenticated("account disabled")
    sessions.touch(db, session)
    token, expires_at = sessions.access_token(user, settings, session)
    return user, token, expires_at


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
    if bearer:
        try:
            principal = resolve_credentials(db, bearer, settings)
        except Unauthenticated:
            if not refresh_cookie:
                raise
        else:
            if principal.session is not None:
                sessions.revoke(db, principal.session, actor_user_id=principal.user.id, action="auth.logout")
                return
            if not refresh_cookie:
                return  # an API token or a session-less token: nothing to end, the cookies are cleared anyway
    if not refresh_cookie:
        raise Unauthenticated("sign in first: send a bearer token or the session cookie")
    session = sessions.by_refresh_cookie(db, refresh_cookie, csrf_header, csrf_cookie)
    sessions.revoke(db, session, actor_user_id=session.user_id, action="auth.logout")


def list_sessions(db: Session, user_id: int) -> list[AuthSession]:
    """A user's live login sessions, newest first."""
    return sessions.list_active(db, user_id)


def revoke_session(db: Session, session_id: int, actor: User) -> AuthSession:
    """End one of the caller's login sessions (administrators: anyone's); others are 404."""
    session = sessions.get_own(db, session_id, actor)
    sessions.revoke(db, session, actor_user_id=actor.id)
    return session


def check_may_see_user(actor: User, user_id: int) -> None:
    """Only administrators look at another account's tokens and sessions."""
    if user_id != actor.id and not actor.is_admin:
        raise PermissionDenied("only a platform administrator may see another account's tokens and sessions")


def list_api_tokens(db: Session, user_id: int) -> list[ApiToken]:
    """A user's API tokens (revoked and expired ones too), newest first."""
    query = select(ApiToken).where(ApiToken.user_id == user_id).order_by(ApiToken.created_at.desc(), ApiToken.id.desc())
    return list(db.scalars(query))


def revoke_api_token(db: Session, token_id: int, actor: User) -> ApiToken:
    """Revoke one of the caller's API tokens (administrators: anyone's); others are 404."""
    token = db.get(ApiToken, token_id)
    if token is None or (token.user_id != actor.id and not actor.is_admin):
        raise NotFound(f"API token {token_id} not found")
    token.revoked = True
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="token.revoke",
        entity_type="api_token",
        entity_id=token.id,
        details={"owner_user_id": token.user_id, "name": token.name},
    )
    return token


def revoke_everything(db: Session, user_id: int, actor: User) -> tuple[int, int]:
    """Revoke every API token and login session of a user (administrators); (tokens, sessions) revoked."""
    if not actor.is_admin:
        raise PermissionDenied("only a platform administrator may do this")
    get_user(db, user_id)
    result = db.execute(
        update(ApiToken)
        .where(ApiToken.user_id == user_id, ApiToken.revoked.is_(False))
        .values(revoked=True)
        .execution_options(synchronize_session="fetch")
    )
    tokens = int(result.rowcount or 0)  # type: ignore[attr-defined]
    session_count = sessions.revoke_all(db, user_id)
    audit.record(
        db,
        actor_user_id=actor.id,
        action="user.revoke_credentials",
        entity_type="user",
        entity_id=user_id,
        details={"api_tokens": tokens, "sessions": session_count},
    )
    return tokens, session_count


def get_user(db: Session, user_id: int) -> User:
    """A user by id."""
    return get_or_404(db, User, user_id, "user")


def get_user_by_email(db: Session, email: str) -> User:
    """Look a user up by e-mail."""
    user = db.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user with e-mail {email}")
    return user


def list_users(db: Session) -> list[User]:
    """All users, by e-mail."""
    return list(db.scalars(select(User).order_by(User.email)))


def prune_auth_state(db: Session, settings: Settings) -> tuple[int, int]:
    """Housekeeping: drop stale sign-in failure counts and long-ended sessions (flushed, not committed)."""
    now = datetime.now(UTC)
    return throttle.prune(db, settings, now), sessions.prune(db, now)
