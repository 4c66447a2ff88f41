"""The one error body on the wire: every 4xx/5xx answer of the API is `{"detail", "error", "details"?}`.

Domain errors are rendered by `backend.api`; this module renders the errors FastAPI and Starlette raise
themselves (request validation, unknown routes, wrong methods, malformed bodies, unexpected exceptions) in the
same shape, and adds the headers a status implies (`WWW-Authenticate` on 401, `Retry-After` on 429/503).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import compile_path

from backend.core.errors import error_body, json_safe

# Machine codes of the HTTP errors the framework raises by itself (domain errors bring their own code).
HTTP_ERROR_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    500: "internal_error",
    503: "unavailable",
}


def error_response(
    status_code: int,
    detail: str,
    error: str,
    details: Mapping[str, Any] | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    """A JSON error answer with the one error body; 429/503 carry Retry-After from `details.retry_after`."""
    safe = json_safe(dict(details)) if details else None
    out = dict(headers or {})
    if status_code == 401:
        out.setdefault("WWW-Authenticate", "Bearer")
    retry_after = (safe or {}).get("retry_after")
    if status_code in (429, 503) and "Retry-After" not in out:
        seconds = retry_after if isinstance(retry_after, int | float) and not isinstance(retry_after, bool) else 1
        out["Retry-After"] = str(max(1, math.ceil(seconds)))
    return JSONResponse(status_code=status_code, content=error_body(detail, error, safe), headers=out or None)


def _location(loc: Sequence[Any]) -> str:
    return ".".join(str(part) for part in loc) or "request"


def validation_summary(errors: Sequence[Mapping[str, Any]]) -> str:
    """One readable line for pydantic errors: 'body.version_id: Input should be a valid integer (and 2 more)'."""
    if not errors:
        return "the request is invalid"
    first = errors[0]
    line = f"{_location(first.get('loc', ()))}: {first.get('msg', 'invalid value')}"
    if len(errors) > 1:
        line += f" (and {len(errors) - 1} more)"
    return line


def _plain_errors(errors: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The pydantic errors without what may not travel: exception objects, raw (possibly binary) input, URLs."""
    out: list[dict[str, Any]] = []
    for item in errors[:50]:
        entry: dict[str, Any] = {
            "type": str(item.get("type", "")),
            "loc": [p if isinstance(p, int | str) else str(p) for p in item.get("loc", ())],
            "msg": str(item.get("msg", "")),
        }
        if "ctx" in item:
            entry["ctx"] = json_safe(item["ctx"], max_text=200)
        if "input" in item:
            entry["input"] = json_safe(item["input"], max_text=200)
        out.append(entry)
    return out


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's request validation 422 in the one error body; the pydantic errors go into details.errors."""
    assert isinstance(exc, RequestValidationError)
    errors = list(exc.errors())
    return error_response(422, validation_summary(errors), "validation_error", {"errors": _plain_errors(errors)})


def _allowed_methods(request: Request) -> str | None:
    """Every method the request's path answers to. Starlette's 405 names only the first route that matched the
    path, while GET and POST of one path are often separate routes (then `Allow` would hide one of them)."""
    methods: set[str] = set()
    # The documented operations are the route table (FastAPI nests included routers in private objects).
    for template, item in request.app.openapi().get("paths", {}).items():
        if compile_path(template)[0].match(request.url.path):
            methods |= {method.upper() for method in item if method in _METHODS}
    if "GET" in methods:
        methods.add("HEAD")
    return ", ".join(sorted(methods)) or None


async def http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    """Starlette's HTTP errors (404 unknown route, 405 wrong method, 400 malformed body) in the one error body."""
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else validation_summary(exc.detail or [])
    code = HTTP_ERROR_CODES.get(exc.status_code, "error" if exc.status_code < 500 else "server_error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := _allowed_methods(request)):
        headers["Allow"] = allowed
    return error_response(exc.status_code, detail, code, headers=headers)


async def server_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """An unexpected exception: a JSON 500 (Starlette still logs the traceback), never a plain-text page."""
    return error_response(500, "internal server error", "internal_error")


def install_error_handlers(app: FastAPI) -> None:
    """Render FastAPI's and Starlette's own errors (and unexpected exceptions) with the one error body."""
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.add_exception_handler(StarletteHTTPException, http_exception_handler)
    app.add_exception_handler(Exception, server_error_handler)


# --- OpenAPI: the error body documented on every operation ---

ERROR_BODY_SCHEMA: dict[str, Any] = {
    "title": "ErrorBody",
    "type": "object",
    "description": "The body of every 4xx/5xx answer: a readable message, a machine code and optional details "
    "(for a validation error, `details.errors` lists the failed fields; for 429/503, `details.retry_after`).",
    "required": ["detail", "error"],
    "properties": {
        "detail": {"type": "string", "description": "a readable message"},
        "error": {"type": "string", "description": "a machine code, e.g. not_found, conflict, validation_error"},
        "details": {"type": "object", "additionalProperties": True, "description": "extra fields of this error"},
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Malformed request (e.g. an unreadable multipart body)",
    401: "Not authenticated: no, an expired or a revoked credential",
    403: "Authenticated, but not allowed to do this",
    404: "Not found, or not visible to the caller",
    409: "Conflicts with the current state (e.g. a stale base version, a duplicate)",
    413: "Request body larger than this route's limit",
    422: "Invalid input (the fields that failed are in details.errors)",
    429: "Too many requests; retry after the Retry-After header's seconds",
    503: "A dependency (the database) is briefly unavailable; nothing was changed; retry after Retry-After",
}
_BODY_ONLY = frozenset({400, 413})  # only where the operation takes a request body
_PUBLIC_PATHS = frozenset({"/api/health"})  # answers nothing but 200
_BINARY = {"type": "string", "format": "binary"}
# Successful answers that are not JSON, as (method, path) -> (status, media types), and routes answering 304.
BINARY_ANSWERS: dict[tuple[str, str], tuple[str, tuple[str, ...]]] = {
    ("get", "/api/exports/{job_id}/download"): ("200", ("application/gzip",)),
    ("get", "/api/evaluations/{evaluation_id}/cases"): ("200", ("application/json", "text/csv")),
}
NOT_MODIFIED_ANSWERS = frozenset({("get", "/api/versions/{version_id}/masks/{structure}")})
_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options"})


def _error_response_doc(code: int) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "description": ERROR_DESCRIPTIONS[code],
        "content": {"application/json": {"schema": _ERROR_REF}},
    }
    if code in (429, 503):
        doc["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
    if code == 401:
        doc["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
    return doc


def _document_success(method: str, path: str, responses: dict[str, Any]) -> None:
    """Give non-JSON success answers their real media types (FastAPI documents a bare Response as nothing)."""
    special = BINARY_ANSWERS.get((method, path))
    if special:
        status, types = special
        existing = responses.setdefault(status, {"description": "OK"}).setdefault("content", {})
        for media in types:
            existing.setdefault(media, {"schema": {"type": "string"} if media.startswith("text/") else _BINARY})
    for status, doc in responses.items():
        if status.startswith("2") and status != "204" and not doc.get("content"):
            doc["content"] = {"application/octet-stream": {"schema": _BINARY}}
        if status == "204":
            doc.pop("content", None)
    if (method, path) in NOT_MODIFIED_ANSWERS:
        responses.setdefault("304", {"description": "Not modified (the If-None-Match ETag is current)"})


def document_errors(schema: dict[str, Any]) -> dict[str, Any]:
    """Add the ErrorBody schema and every error status to every operation of an OpenAPI document (in place).

    FastAPI documents only its own 422 (with a body we no longer send); every operation of this API can answer
    401/403 (credentials, roles), 404 (an object that is missing or not visible), 409 (state conflicts), 422
    (input), 429 (throttling) and 503 (database faults); operations with a body also 400 and 413."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ERROR_BODY_SCHEMA
    for path, item in schema.get("paths", {}).items():
        for method, operation in item.items():
            if method not in _METHODS:
                continue
            responses = operation.setdefault("responses", {})
            _document_success(method, path, responses)
            if path in _PUBLIC_PATHS:
                continue
            has_body = "requestBody" in operation
            for code in ERROR_DESCRIPTIONS:
                if code in _BODY_ONLY and not has_body:
                    continue
                responses[str(code)] = _error_response_doc(code)
    for unused in ("HTTPValidationError", "ValidationError"):
        if unused not in str(schema.get("paths")) and unused in components:
            del components[unused]
    return schema


def install_openapi(app: FastAPI) -> None:
    """Post-process the app's OpenAPI document once: the error body on every operation."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document_errors(build())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
