"""Request dependencies shared by every router: the database session, settings, blobs, the current user."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from backend.auth import service
from backend.core.blobstore import BlobStore, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import get_session
from backend.core.errors import PermissionDenied, Unauthenticated
from backend.models import User

_bearer = HTTPBearer(auto_error=False, description="A login token or a service API token (mlk_...)")

DbSession = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
Blobs = Annotated[BlobStore, Depends(get_blob_store)]


def current_user(
    db: DbSession,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> User:
    """The authenticated caller; every endpoint but login needs one."""
    token = credentials.credentials if credentials else None
    if not token:
        raise Unauthenticated("sign in first: send 'Authorization: Bearer <token>'")
    return service.resolve_token(db, token, settings)


CurrentUser = Annotated[User, Depends(current_user)]


def platform_admin(user: CurrentUser) -> User:
    """The caller, if a platform administrator."""
    if not user.is_admin:
        raise PermissionDenied("only a platform administrator may do this")
    return user


AdminUser = Annotated[User, Depends(platform_admin)]
