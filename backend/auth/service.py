"""Identity: users, argon2 password hashes, expiring bearer tokens and long-lived service tokens."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.config import Settings
from backend.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied, Unauthenticated
from backend.models import ApiToken, User

_hasher = PasswordHasher()
_EMAIL_RE = re.compile(r"^[^@\s]+@[^@\s]+$")
API_TOKEN_PREFIX = "mlk_"
MIN_PASSWORD_LENGTH = 8


def hash_password(password: str) -> str:
    """Argon2id hash of a password."""
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    """Whether password matches the stored hash (False for accounts without a password)."""
    if not password_hash:
        return False
    try:
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


def authenticate(db: Session, email: str, password: str) -> User:
    """The active user with this e-mail and password, or Unauthenticated (same message for both faults)."""
    user = db.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None or not user.is_active or not verify_password(user.password_hash, password):
        raise Unauthenticated("wrong e-mail or password")
    return user


def issue_access_token(user: User, settings: Settings) -> tuple[str, datetime]:
    """A signed bearer token for a user, valid for the configured lifetime."""
    expires_at = datetime.now(UTC) + timedelta(minutes=settings.token_ttl_minutes)
    payload = {"sub": str(user.id), "exp": expires_at, "typ": "access"}
    return jwt.encode(payload, settings.resolved_secret_key, algorithm="HS256"), expires_at


def _token_digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def create_api_token(
    db: Session, owner: User, name: str, *, actor: User, expires_in_days: int | None = None
) -> tuple[str, ApiToken]:
    """Create a long-lived token for a service account or oneself; the plaintext is returned only once."""
    if actor.id != owner.id and not actor.is_admin:
        raise PermissionDenied("only an administrator may create tokens for another account")
    plaintext = API_TOKEN_PREFIX + secrets.token_urlsafe(32)
    expires_at = datetime.now(UTC) + timedelta(days=expires_in_days) if expires_in_days else None
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


def resolve_token(db: Session, token: str, settings: Settings) -> User:
    """The active user a bearer token belongs to, or Unauthenticated with the reason."""
    if token.startswith(API_TOKEN_PREFIX):
        row = db.scalar(select(ApiToken).where(ApiToken.token_sha256 == _token_digest(token)))
        if row is None or row.revoked:
            raise Unauthenticated("unknown or revoked API token")
        if row.expires_at is not None and row.expires_at <= datetime.now(UTC):
            raise Unauthenticated("API token expired")
        user_id = row.user_id
    else:
        try:
            payload = jwt.decode(token, settings.resolved_secret_key, algorithms=["HS256"])
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("session expired; sign in again") from exc
        except jwt.PyJWTError as exc:
            raise Unauthenticated("invalid bearer token") from exc
        if payload.get("typ") != "access":
            raise Unauthenticated("invalid bearer token")
        user_id = int(payload["sub"])
    user = db.get(User, user_id)
    if user is None or not user.is_active:
        raise Unauthenticated("account disabled")
    return user


def get_user_by_email(db: Session, email: str) -> User:
    """Look a user up by e-mail."""
    user = db.scalar(select(User).where(User.email == email.strip().lower()))
    if user is None:
        raise NotFound(f"no user with e-mail {email}")
    return user


def list_users(db: Session) -> list[User]:
    """All users, by e-mail."""
    return list(db.scalars(select(User).order_by(User.email)))
