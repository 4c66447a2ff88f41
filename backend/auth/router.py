"""Auth endpoints: sign-in (bearer token + refresh cookie), refresh, sign-out, users, API tokens, sessions.

Browser session: sign-in sets `maskloop_refresh` (httpOnly, SameSite=Strict, Path=/api/auth, Secure on https)
and `maskloop_csrf` (readable by the page, SameSite=Strict, Path=/); `POST /api/auth/session` turns the refresh
cookie plus an `X-CSRF-Token` header equal to the readable cookie into a fresh access token, which the page
keeps in memory only. Every answer under /api/auth is `Cache-Control: no-store` (see `no_store.py`).
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request, Response, status

from backend.auth import service
from backend.auth.dependencies import (
    AdminUser,
    BearerToken,
    CurrentPrincipal,
    CurrentUser,
    DbSession,
    SettingsDep,
)
from backend.auth.schemas import (
    ApiTokenCreate,
    ApiTokenInfo,
    ApiTokenOut,
    LoginRequest,
    RevokedOut,
    SessionOut,
    TokenOut,
    UserCreate,
    UserOut,
)
from backend.core.config import Settings
from backend.core.ids import PathId
from backend.flows import accounts
from backend.models import User

router = APIRouter(prefix="/api/auth", tags=["auth"])
users_router = APIRouter(prefix="/api/users", tags=["auth"])

REFRESH_COOKIE = "maskloop_refresh"
CSRF_COOKIE = "maskloop_csrf"
REFRESH_COOKIE_PATH = "/api/auth"
CsrfHeader = Annotated[
    str | None,
    Header(alias="X-CSRF-Token", description="The `maskloop_csrf` cookie's value (cookie requests only)."),
]


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _set_session_cookies(response: Response, request: Request, refresh: str, csrf: str, settings: Settings) -> None:
    secure = request.url.scheme == "https"
    max_age = int(settings.session_max_hours * 3600)
    response.set_cookie(
        REFRESH_COOKIE,
        refresh,
        max_age=max_age,
        path=REFRESH_COOKIE_PATH,
        secure=secure,
        httponly=True,
        samesite="strict",
    )
    # Readable by the page (it sends it back as X-CSRF-Token); a page of another site can neither read nor set it.
    response.set_cookie(CSRF_COOKIE, csrf, max_age=max_age, path="/", secure=secure, httponly=False, samesite="strict")


def _clear_session_cookies(response: Response, request: Request) -> None:
    secure = request.url.scheme == "https"
    response.delete_cookie(REFRESH_COOKIE, path=REFRESH_COOKIE_PATH, secure=secure, httponly=True, samesite="strict")
    response.delete_cookie(CSRF_COOKIE, path="/", secure=secure, httponly=False, samesite="strict")


@router.post("/login", response_model=TokenOut)
def login(body: LoginRequest, request: Request, response: Response, db: DbSession, settings: SettingsDep) -> TokenOut:
    """Exchange e-mail and password for a bearer token and a browser session (refresh + CSRF cookies).

    Throttled per account and per client address (429 with Retry-After while locked, even for the right password).
    """
    signed_in = accounts.sign_in(
        db,
        body.email,
        body.password,
        settings,
        client_address=_client_address(request),
        user_agent=request.headers.get("user-agent", ""),
    )
    opened = signed_in.opened
    _set_session_cookies(response, request, opened.refresh_token, opened.csrf_token, settings)
    return TokenOut(
        access_token=signed_in.access_token,
        expires_at=signed_in.expires_at,
        user=UserOut.model_validate(signed_in.user),
        csrf_token=opened.csrf_token,
    )


@router.post("/session", response_model=TokenOut)
def cookie_session(request: Request, db: DbSession, settings: SettingsDep, x_csrf_token: CsrfHeader = None) -> TokenOut:
    """A fresh access token from the refresh cookie; needs `X-CSRF-Token` equal to the `maskloop_csrf` cookie.

    401 without a live session cookie, 403 `csrf_failed` when the header is missing or wrong.
    """
    user, token, expires_at = accounts.cookie_refresh(
        db,
        settings,
        refresh_cookie=request.cookies.get(REFRESH_COOKIE),
        csrf_header=x_csrf_token,
        csrf_cookie=request.cookies.get(CSRF_COOKIE),
    )
    return TokenOut(
        access_token=token, expires_at=expires_at, user=UserOut.model_validate(user), csrf_token=x_csrf_token
    )


@router.post("/logout", status_code=status.HTTP_204_NO_CONTENT, response_class=Response)
def logout(
    request: Request, db: DbSession, settings: SettingsDep, token: BearerToken, x_csrf_token: CsrfHeader = None
) -> Response:
    """End this login session (its access tokens stop working at once) and clear the session cookies.

    Send the bearer token, or the refresh cookie with `X-CSRF-Token`.
    """
    accounts.sign_out(
        db,
        settings,
        bearer=token,
        refresh_cookie=request.cookies.get(REFRESH_COOKIE),
        csrf_header=x_csrf_token,
        csrf_cookie=request.cookies.get(CSRF_COOKIE),
    )
    response = Response(status_code=status.HTTP_204_NO_CONTENT)
    _clear_session_cookies(response, request)
    return response


@router.get("/me", response_model=UserOut)
def me(user: CurrentUser) -> User:
    """The signed-in user."""
    return user


@router.post("/refresh", response_model=TokenOut)
def refresh(principal: CurrentPrincipal, db: DbSession, settings: SettingsDep) -> TokenOut:
    """A fresh token for a still-valid login session (API clients), never valid past the session's absolute end."""
    token, expires_at = accounts.refresh_session(db, principal, settings)
    return TokenOut(access_token=token, expires_at=expires_at, user=UserOut.model_validate(principal.user))


@router.post("/tokens", response_model=ApiTokenOut, status_code=status.HTTP_201_CREATED)
def create_token(body: ApiTokenCreate, db: DbSession, user: CurrentUser, settings: SettingsDep) -> ApiTokenOut:
    """Create an API token (for a model worker's service account, or oneself), at most the account kind's lifetime."""
    owner, plaintext, token = accounts.create_api_token(
        db, body.name, settings, owner_id=body.user_id, expires_in_days=body.expires_in_days, actor=user
    )
    return ApiTokenOut(id=token.id, name=token.name, user_id=owner.id, token=plaintext, expires_at=token.expires_at)


@router.get("/tokens", response_model=list[ApiTokenInfo])
def list_tokens(db: DbSession, user: CurrentUser, user_id: PathId | None = None) -> list[ApiTokenInfo]:
    """One's API tokens (administrators: `user_id`'s), revoked and expired ones too; never their secrets."""
    owner_id = user.id if user_id is None else user_id
    service.check_may_see_user(user, owner_id)
    return [ApiTokenInfo.model_validate(token) for token in service.list_api_tokens(db, owner_id)]


@router.delete("/tokens/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: PathId, db: DbSession, user: CurrentUser) -> None:
    """Revoke one of one's API tokens (administrators: anyone's)."""
    accounts.revoke_api_token(db, token_id, actor=user)


@router.get("/sessions", response_model=list[SessionOut])
def list_sessions(db: DbSession, principal: CurrentPrincipal, user_id: PathId | None = None) -> list[SessionOut]:
    """One's live login sessions (administrators: `user_id`'s); `current` marks the caller's; never their secrets."""
    owner_id = principal.user.id if user_id is None else user_id
    service.check_may_see_user(principal.user, owner_id)
    current = principal.session.id if principal.session is not None else None
    return [
        SessionOut.model_validate(row).model_copy(update={"current": row.id == current})
        for row in service.list_sessions(db, owner_id)
    ]


@router.delete("/sessions/{session_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_session(session_id: PathId, db: DbSession, user: CurrentUser) -> None:
    """End one of one's login sessions (administrators: anyone's); its access tokens stop working at once."""
    accounts.revoke_session(db, session_id, actor=user)


@users_router.post("/{user_id}/revoke-tokens", response_model=RevokedOut)
def revoke_user_credentials(user_id: PathId, db: DbSession, admin: AdminUser) -> RevokedOut:
    """Revoke every API token and login session of a user (platform administrators only)."""
    tokens, session_count = accounts.revoke_credentials(db, user_id, actor=admin)
    return RevokedOut(api_tokens_revoked=tokens, sessions_revoked=session_count)


@users_router.get("", response_model=list[UserOut])
def list_users(db: DbSession, _admin: AdminUser) -> list[User]:
    """All users (platform administrators only)."""
    return service.list_users(db)


@users_router.post("", response_model=UserOut, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, db: DbSession, admin: AdminUser) -> User:
    """Create a user or service account (platform administrators only)."""
    return accounts.create_user(
        db,
        body.email,
        body.password,
        body.display_name,
        is_admin=body.is_admin,
        is_service=body.is_service,
        actor=admin,
    )
