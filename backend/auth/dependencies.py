"""Request dependencies shared by every router: the database session, settings, blobs, the current user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.auth import service
from backend.core.blobstore import BlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import declare_write_intent, get_session
from backend.core.errors import PermissionDenied, Unauthenticated
from backend.models import User

_bearer = HTTPBearer(auto_error=False, description="A login token or a service API token (mlk_...)")

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


def request_session(request: Request, db: Annotated[Session, Depends(get_session)]) -> Session:
    """The request's database session; a request that may write (not GET/HEAD) declares it before its first query."""
    if request.method not in _SAFE_METHODS:
        declare_write_intent(db)
    return db


DbSession = Annotated[Session, Depends(request_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Blobs = Annotated[BlobStore, Depends(get_blob_store)]


def bearer_token(credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> str | None:
    """The bearer token of the request, if any."""
    return credentials.credentials if credentials else None


BearerToken = Annotated[str | None, Depends(bearer_token)]


def current_principal(db: DbSession, settings: SettingsDep, token: BearerToken) -> service.Principal:
    """The authenticated caller with the login session or API token it used."""
    if not token:
        raise Unauthenticated("sign in first: send 'Authorization: Bearer <token>'")
    return service.resolve_credentials(db, token, settings)


CurrentPrincipal = Annotated[service.Principal, Depends(current_principal)]


def current_user(principal: CurrentPrincipal) -> User:
    """The authenticated caller; every endpoint but login needs one."""
    return principal.user


CurrentUser = Annotated[User, Depends(current_user)]


def platform_admin(user: CurrentUser) -> User:
    """The caller, if a platform administrator."""
    if not user.is_admin:
        raise PermissionDenied("only a platform administrator may do this")
    return user


AdminUser = Annotated[User, Depends(platform_admin)]
