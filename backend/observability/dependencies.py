"""Request dependencies of the observability routes: the optional bearer token of /metrics."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from backend.core.config import Settings, get_settings
from backend.core.errors import Unauthenticated

_bearer = HTTPBearer(auto_error=False, description="MASKLOOP_METRICS_TOKEN, when one is set")


def metrics_access(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Let the scrape through when no metrics token is set, or when it sends that token."""
    token = settings.metrics_token.get_secret_value()
    if not token:
        return
    offered = credentials.credentials if credentials else ""
    if not hmac.compare_digest(offered.encode(), token.encode()):
        raise Unauthenticated("GET /metrics needs 'Authorization: Bearer <MASKLOOP_METRICS_TOKEN>'")


MetricsAccess = Depends(metrics_access)
