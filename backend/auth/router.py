"""Auth endpoints: login, the current user, users and API tokens."""

from __future__ import annotations

from fastapi import APIRouter, status

from backend.auth import service
from backend.auth.dependencies import AdminUser, CurrentUser, DbSession, SettingsDep
from backend.auth.schemas import ApiTokenCreate, ApiTokenOut, LoginRequest, TokenOut, UserCreate, UserOut
from backend.core.errors import NotFound
from backend.models import User

router = APIRouter(prefix="/api/auth", tags=["auth"])
users_router = APIRouter(prefix="/api/users", tags=["auth"])


@router.post("/login", response_model=TokenOut)
def login(body: LoginRequest, db: DbSession, settings: SettingsDep) -> TokenOut:
    """Exchange e-mail and password for a bearer token."""
    user = service.authenticate(db, body.email, body.password)
    token, expires_at = service.issue_access_token(user, settings)
    return TokenOut(access_token=token, expires_at=expires_at, user=UserOut.model_validate(user))


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> User:
    """The signed-in user."""
    return user


@router.post("/refresh", response_model=TokenOut)
def refresh(user: CurrentUser, settings: SettingsDep) -> TokenOut:
    """A fresh token for a still-valid session, so a long editing session never expires mid-edit."""
    token, expires_at = service.issue_access_token(user, settings)
    return TokenOut(access_token=token, expires_at=expires_at, user=UserOut.model_validate(user))


@router.post("/tokens", response_model=ApiTokenOut, status_code=status.HTTP_201_CREATED)
def create_token(body: ApiTokenCreate, db: DbSession, user: CurrentUser) -> ApiTokenOut:
    """Create a long-lived API token (for a model worker's service account, or oneself)."""
    owner = user if body.user_id is None else db.get(User, body.user_id)
    if owner is None:
        raise NotFound(f"user {body.user_id} not found")
    plaintext, token = service.create_api_token(db, owner, body.name, actor=user, expires_in_days=body.expires_in_days)
    db.commit()
    return ApiTokenOut(id=token.id, name=token.name, user_id=owner.id, token=plaintext, expires_at=token.expires_at)


@users_router.get("", response_model=list[UserOut])
def list_users(db: DbSession, _admin: AdminUser) -> list[User]:
    """All users (platform administrators only)."""
    return service.list_users(db)


@users_router.post("", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, db: DbSession, admin: AdminUser) -> User:
    """Create a user or service account (platform administrators only)."""
    user = service.create_user(
        db,
        body.email,
        body.password,
        body.display_name,
        is_admin=body.is_admin,
        is_service=body.is_service,
        actor_user_id=admin.id,
    )
    db.commit()
    return user
