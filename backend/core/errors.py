"""Domain errors: services raise these; the API layer maps them to HTTP status codes."""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import date, datetime
from typing import Any


class DomainError(Exception):
    """Base class of every error a service may raise on purpose."""

    code: str = "error"

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(DomainError):
    """The caller sent something malformed or inconsistent (maps to 400/422)."""

    code = "invalid_input"


class NotFound(DomainError):
    """The object does not exist or the caller may not know that it exists (maps to 404)."""

    code = "not_found"


class Unauthenticated(DomainError):
    """No valid credentials (maps to 401)."""

    code = "unauthenticated"


class PermissionDenied(DomainError):
    """The caller is known but lacks the role for this action (maps to 403)."""

    code = "permission_denied"


class Conflict(DomainError):
    """The action collides with the current state, e.g. a stale base version (maps to 409)."""

    code = "conflict"


class PayloadTooLarge(DomainError):
    """An upload exceeds the configured limit (maps to 413)."""

    code = "payload_too_large"


class TooManyRequests(DomainError):
    """The caller must slow down (login throttling); maps to 429 with Retry-After."""

    code = "too_many_requests"


class GatewayTimeout(DomainError):
    """Work the request waited for (an inference job) outlasted its timeout; the work goes on. Maps to 504."""

    code = "timeout"


class ServiceUnavailable(DomainError):
    """A dependency (database, broker) is briefly unreachable; nothing was changed. Maps to 503 with Retry-After."""

    code = "unavailable"


def error_body(detail: str, error: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one JSON error body of every 4xx/5xx answer: a readable message, a machine code, optional details."""
    body: dict[str, Any] = {"detail": detail, "error": error}
    if details:
        body["details"] = details
    return body


def json_safe(value: Any, *, max_text: int = 500, depth: int = 0) -> Any:
    """A JSON-serialisable copy of value for an error body: NaN/inf become null, bytes their length, unknown
    objects their (truncated) text. Error details come from anywhere (numpy arrays, affines with NaN, raw upload
    bytes in a validation error) and must never turn a 4xx answer into a 500 while it is being rendered."""
    if depth > 20:
        return "…"
    if value is None or isinstance(value, bool | int | str):
        return value if not isinstance(value, str) or len(value) <= max_text else value[:max_text] + "…"
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, Mapping):
        return {str(k): json_safe(v, max_text=max_text, depth=depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [json_safe(v, max_text=max_text, depth=depth + 1) for v in value]
    if isinstance(value, datetime | date):
        return value.isoformat()
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        return json_safe(tolist(), max_text=max_text, depth=depth + 1)
    return json_safe(str(value), max_text=max_text, depth=depth + 1)
