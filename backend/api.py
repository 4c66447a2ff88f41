"""The HTTP API: routers mounted under /api, domain errors mapped to status codes, limits enforced."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.exc import DataError, OperationalError

from backend.audit.router import router as audit_router
from backend.auth.router import router as auth_router
from backend.auth.router import users_router
from backend.core.config import Settings
from backend.core.errors import (
    Conflict,
    DomainError,
    InvalidInput,
    NotFound,
    PayloadTooLarge,
    PermissionDenied,
    Unauthenticated,
)
from backend.dashboard.router import router as dashboard_router
from backend.evaluation.router import router as evaluation_router
from backend.exports.router import router as exports_router
from backend.jobs.router import router as jobs_router
from backend.labels.router import router as labels_router
from backend.projects.router import router as projects_router
from backend.quality.router import router as quality_router
from backend.registry.router import router as registry_router
from backend.scans.router import router as scans_router
from backend.workflow.router import router as workflow_router

STATUS_OF: dict[type[DomainError], int] = {
    InvalidInput: 422,
    NotFound: 404,
    Unauthenticated: 401,
    PermissionDenied: 403,
    Conflict: 409,
    PayloadTooLarge: 413,
}


def _status_for(error: DomainError) -> int:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return 400


async def domain_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """Render a domain error as JSON: a readable message, a machine code and details."""
    assert isinstance(exc, DomainError)
    code = _status_for(exc)
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    body = {"detail": exc.message, "error": exc.code, **exc.details}
    return JSONResponse(status_code=code, content=body, headers=headers)


async def busy_database_handler(_request: Request, exc: Exception) -> JSONResponse:
    """An embedded (SQLite) database busy with another writer answers 503 + Retry-After, never a bare 500."""
    assert isinstance(exc, OperationalError)
    if "database is locked" not in str(exc.orig) and "database is busy" not in str(exc.orig):
        raise exc
    return JSONResponse(
        status_code=503,
        content={"detail": "the database is busy with another write; nothing was saved, retry", "error": "busy"},
        headers={"Retry-After": "1"},
    )


async def out_of_range_handler(_request: Request, exc: Exception) -> JSONResponse:
    """A value the database cannot hold (an id or page beyond its integer range, text too long) is the client's
    error: 422 with a message, and the request's transaction is rolled back."""
    assert isinstance(exc, DataError)
    return JSONResponse(
        status_code=422,
        content={
            "detail": "a value in the request is out of range for the database (an id, page or number too large, "
            "or a text too long); nothing was changed",
            "error": "out_of_range",
        },
    )


def install(app: FastAPI, settings: Settings) -> None:
    """Mount every router and the error handling on an app."""
    app.add_exception_handler(DomainError, domain_error_handler)
    app.add_exception_handler(OperationalError, busy_database_handler)
    app.add_exception_handler(DataError, out_of_range_handler)

    @app.middleware("http")
    async def refuse_oversized(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        """Refuse a body larger than the limit before reading it, when the client announces its size."""
        length = request.headers.get("content-length")
        if length and length.isdigit() and int(length) > settings.max_upload_bytes + (1 << 20):
            return JSONResponse(
                status_code=413,
                content={
                    "detail": f"request body is larger than the upload limit of {settings.max_upload_mb} MiB",
                    "error": "payload_too_large",
                },
            )
        return await call_next(request)

    routers = (auth_router, users_router, projects_router, scans_router, labels_router, audit_router)
    for router in (*routers, jobs_router, registry_router, dashboard_router, exports_router, workflow_router):
        app.include_router(router)
    app.include_router(quality_router)
    app.include_router(evaluation_router)

    @app.get("/api/health", tags=["meta"])
    def health() -> dict[str, str]:
        """Liveness probe."""
        return {"status": "ok"}
