"""The HTTP API: routers mounted under /api, domain errors mapped to status codes, limits enforced."""

from __future__ import annotations

import re

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, DBAPIError, DisconnectionError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout

from backend.audit.router import router as audit_router
from backend.auth.no_store import NoStoreMiddleware
from backend.auth.router import router as auth_router
from backend.auth.router import users_router
from backend.core import decode_limits
from backend.core.bodies import BodyPolicy, Limit, RequestBodyGuard
from backend.core.config import Settings
from backend.core.db import DB_RETRY_AFTER_S, DatabaseUnavailable, connection_fault
from backend.core.errors import (
    Conflict,
    DomainError,
    GatewayTimeout,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    ServiceUnavailable,
    TooManyRequests,
    Unauthenticated,
)
from backend.dashboard.router import router as dashboard_router
from backend.editing.router import install_openapi_models as install_editing_openapi
from backend.editing.router import router as editing_router
from backend.evaluation.router import router as evaluation_router
from backend.exports.router import router as exports_router
from backend.http_errors import error_response, install_error_handlers, install_openapi
from backend.imports.router import router as imports_router
from backend.interactive.router import router as interactive_router
from backend.jobs.router import router as jobs_router
from backend.labels import service as labels_service
from backend.labels.router import router as labels_router
from backend.monailabel.router import router as monailabel_router
from backend.observability.router import metrics_router
from backend.observability.router import router as observability_router
from backend.pacs.router import router as pacs_router
from backend.projects.router import router as projects_router
from backend.quality.router import router as quality_router
from backend.registry.router import router as registry_router
from backend.scans.router import router as scans_router
from backend.workflow.router import router as workflow_router

STATUS_OF: dict[type[DomainError], int] = {
    GatewayTimeout: 504,
    InvalidInput: 422,
    NotFound: 404,
    Unauthenticated: 401,
    PermissionDenied: 403,
    Conflict: 409,
    PayloadTooLarge: 413,
    TooManyRequests: 429,
    ServiceUnavailable: 503,
}


def _status_for(error: DomainError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 400


async def domain_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """Render a domain error in the one error body: a readable message, a machine code and its details
    (keyword arguments of the error) under `details`; 401 adds WWW-Authenticate, 429/503 Retry-After."""
    assert isinstance(exc, DomainError)
    return error_response(_status_for(exc), exc.message, exc.code, exc.details)


def _sqlite_busy(exc: Exception) -> bool:
    text = str(exc.orig) if isinstance(exc, OperationalError) else ""
    return "database is locked" in text or "database is busy" in text


async def database_fault_handler(_request: Request, exc: Exception) -> JSONResponse:
    """A database that is unreachable, lost its connection or (SQLite) is busy with another writer answers
    503 + Retry-After with the JSON error body, never a bare 500; other database errors stay server errors."""
    code = "unavailable"
    if isinstance(exc, DatabaseUnavailable):  # raised by the request session, which knows whether it committed
        detail, details = exc.message, exc.details
    elif _sqlite_busy(exc):
        detail, code = "the database is busy with another write; nothing was saved, retry", "busy"
        details = {"retry_after": 1}
    elif connection_fault(exc):
        detail, details = "the database is unreachable or lost its connection; retry", {"retry_after": DB_RETRY_AFTER_S}
    else:
        raise exc
    return error_response(503, detail, code, details)


async def out_of_range_handler(_request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold (an id or page beyond its integer range, text too long) is the client's
    error: 422 with a message, and the request's transaction is rolled back."""
    assert isinstance(exc, DataError)
    return error_response(
        422,
        "a value in the request is out of range for the database (an id, page or number too large, "
        "or a text too long); nothing was changed",
        "out_of_range",
    )


# Body routes that work without a bearer token (their own check is a password or the refresh cookie + CSRF).
PUBLIC_BODY_ROUTES = frozenset(
    {
        ("POST", "/api/auth/login"),
        ("POST", "/api/auth/session"),
        ("POST", "/api/auth/logout"),
        ("POST", "/monailabel/{project}/auth/token"),
    }
)
# MONAI Label's form login, one per project URL (its template above is what the OpenAPI lists).
_MONAILABEL_TOKEN = re.compile(r"/monailabel/[^/]+/auth/token")


class _PublicRoutes(frozenset[tuple[str, str]]):
    """The public body routes: the exact ones, and every project's MONAI Label login."""

    def __contains__(self, item: object) -> bool:
        if super().__contains__(item):
            return True
        return isinstance(item, tuple) and item[0] == "POST" and bool(_MONAILABEL_TOKEN.fullmatch(str(item[1])))


def body_policy(settings: Settings) -> BodyPolicy:
    """Which body limit each route gets: the upload limit for file routes, the draft limit for the autosave,
    the small JSON limit for everything else (login included)."""
    mib = 1 << 20
    # Multipart framing (boundaries, part headers, form fields) on top of the files themselves.
    upload = Limit(
        settings.max_upload_bytes + mib,
        f"request body is larger than the upload limit of {settings.max_upload_mb} MiB",
    )
    draft = Limit(
        labels_service.MAX_DRAFT_BYTES, f"a draft may hold at most {labels_service.MAX_DRAFT_BYTES // mib} MiB"
    )
    # A click carries the structure's current mask box (base64): more than a plain JSON body, far less than a file.
    interactive = Limit(
        settings.interactive_max_body_kb * 1024,
        f"a click request is larger than the limit of {settings.interactive_max_body_kb} KiB",
    )
    routes = (
        ("POST", r"/api/projects/[^/]+/scans(/dicom)?", upload),
        ("POST", r"/api/scans/[^/]+/versions(/combined|/patch)?", upload),
        ("POST", r"/api/scans/[^/]+/operations", upload),
        ("POST", r"/api/scans/[^/]+/labels/dicom-seg", upload),
        ("POST", r"/api/models/[^/]+/versions", upload),
        ("PUT", r"/api/scans/[^/]+/draft", draft),
        ("POST", r"/api/scans/[^/]+/interactive", interactive),
        ("PUT", r"/monailabel/[^/]+/datastore/label", upload),
    )
    return BodyPolicy(
        default=Limit(
            settings.max_json_body_kb * 1024,
            f"request body is larger than the limit of {settings.max_json_body_kb} KiB for this route",
        ),
        routes=tuple((method, re.compile(path), limit) for method, path, limit in routes),
        public=_PublicRoutes(PUBLIC_BODY_ROUTES),
        secret_key=lambda: settings.resolved_secret_key,
    )


def install(app: FastAPI, settings: Settings) -> None:
    """Mount every router and the error handling on an app."""
    install_error_handlers(app)  # FastAPI's own 422s, Starlette's 404/405/400 and 500s in the one error body
    app.add_exception_handler(DomainError, domain_error_handler)
    for database_fault in (DatabaseUnavailable, DBAPIError, DisconnectionError, PoolTimeout):
        app.add_exception_handler(database_fault, database_fault_handler)
    app.add_exception_handler(DataError, out_of_range_handler)
    # This process serves the API: its uploads are decoded under the settings' limits and a cap on concurrent
    # heavy decodes (workers never call this, so they are not capped).
    decode_limits.install(settings)

    # Pure ASGI: a credential before any body byte is read, the route's size limit while the body streams.
    app.add_middleware(RequestBodyGuard, policy=body_policy(settings))
    # Outside the body guard, so its own refusals of /api/auth requests are `no-store` too.
    app.add_middleware(NoStoreMiddleware)

    routers = (auth_router, users_router, projects_router, scans_router, labels_router, audit_router)
    for router in (*routers, jobs_router, registry_router, dashboard_router, exports_router, workflow_router):
        app.include_router(router)
    app.include_router(quality_router)
    app.include_router(evaluation_router)
    app.include_router(monailabel_router)
    app.include_router(imports_router)
    app.include_router(interactive_router)
    app.include_router(editing_router)
    app.include_router(pacs_router)
    app.include_router(observability_router)  # /api/health/ready
    if settings.metrics_enabled:
        app.include_router(metrics_router)  # /metrics

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness probe."""
        return {"status": "ok"}

    install_openapi(app)
    install_editing_openapi(app)
