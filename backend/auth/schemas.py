"""Request and response bodies of the auth endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from backend.core.ids import Id


class LoginRequest(BaseModel):
    """E-mail and password."""

    email: str = Field(max_length=320)
    password: str = Field(max_length=1000)


class UserOut(BaseModel):
    """A user as the API shows it (never the password hash)."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    email: str
    display_name: str
    is_admin: bool
    is_service: bool
    is_active: bool


class TokenOut(BaseModel):
    """A bearer token and when it stops working (never later than its login session's absolute end).

    Sign-in and the cookie refresh also return `csrf_token`, the value to send as `X-CSRF-Token` with
    `POST /api/auth/session` and `POST /api/auth/logout` (it equals the readable `maskloop_csrf` cookie).
    """

    access_token: str
    token_type: str = "bearer"
    expires_at: datetime | None
    user: UserOut
    csrf_token: str | None = None


class UserCreate(BaseModel):
    """A new user (service accounts have no password)."""

    email: str = Field(max_length=320)
    password: str | None = Field(default=None, max_length=1000)
    display_name: str = Field(default="", max_length=200)
    is_admin: StrictBool = False
    is_service: StrictBool = False


class ApiTokenCreate(BaseModel):
    """A request for a long-lived token for oneself or (administrators) a service account."""

    name: str = Field(min_length=1, max_length=200)
    user_id: Id | None = None
    expires_in_days: int | None = Field(
        default=None,
        ge=1,
        le=3650,
        description="Lifetime in days; at most (and by default) the account kind's maximum (30 personal, 365 service).",
    )


class ApiTokenOut(BaseModel):
    """A freshly created API token; the plaintext is shown only this once."""

    id: int
    name: str
    user_id: int
    token: str
    expires_at: datetime | None


class ApiTokenInfo(BaseModel):
    """An API token as listed: never its secret."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    user_id: int
    created_at: datetime
    expires_at: datetime | None
    revoked: bool


class SessionOut(BaseModel):
    """A live login session as listed: never its refresh or CSRF token."""

    model_config = ConfigDict(from_attributes=True)

    id: int
    user_id: int
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime
    user_agent: str
    client_address: str
    current: bool = False


class RevokedOut(BaseModel):
    """What an administrator's revocation ended."""

    api_tokens_revoked: int
    sessions_revoked: int
