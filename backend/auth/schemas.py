"""Request and response bodies of the auth endpoints."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict, Field


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
    """A bearer token and when it stops working."""

    access_token: str
    token_type: str = "bearer"
    expires_at: datetime | None
    user: UserOut


class UserCreate(BaseModel):
    """A new user (service accounts have no password)."""

    email: str = Field(max_length=320)
    password: str | None = Field(default=None, max_length=1000)
    display_name: str = Field(default="", max_length=200)
    is_admin: bool = False
    is_service: bool = False


class ApiTokenCreate(BaseModel):
    """A request for a long-lived token for oneself or (administrators) a service account."""

    name: str = Field(min_length=1, max_length=200)
    user_id: int | None = None
    expires_in_days: int | None = Field(default=None, ge=1, le=3650)


class ApiTokenOut(BaseModel):
    """A freshly created API token; the plaintext is shown only this once."""

    id: int
    name: str
    user_id: int
    token: str
    expires_at: datetime | None
