"""Domain errors: services raise these; the API layer maps them to HTTP status codes."""

from __future__ import annotations

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


class ServiceUnavailable(DomainError):
    """A dependency (database, broker) is briefly unreachable; nothing was changed. Maps to 503 with Retry-After."""

    code = "unavailable"


def error_body(detail: str, error: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    """The one JSON error body of every 4xx/5xx answer: a readable message, a machine code, optional details."""
    body: dict[str, Any] = {"detail": detail, "error": error}
    if details:
        body["details"] = details
    return body
