"""Browser security headers on every HTTP answer (the static workspace and the API): a pure ASGI middleware.

The workspace is one same-origin bundle (Vite build, no CDN, no inline script), so its Content-Security-Policy
allows only 'self' for scripts and styles. WebGL (NiiVue) needs no CSP source; `blob:` workers and images cover
NiiVue's helpers, `data:` images its font atlas and the `data:,` favicon. Style *attributes* written from markup
are refused; the code sets styles through the CSSOM (`el.style`), which CSP does not govern.

FastAPI's own documentation pages (Swagger UI, ReDoc) load their scripts from a CDN and start them with an
inline script; those paths get a relaxed policy (CDN + inline) so they keep working where the CDN is reachable.
Everything else about them (frame-ancestors, nosniff, referrer) stays strict.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data: blob:",
        "font-src 'self' data:",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "media-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)

# Swagger UI / ReDoc as FastAPI serves them: CDN bundles, an inline bootstrap script, inline styles, a favicon.
_DOCS_CDN = "https://cdn.jsdelivr.net"
DOCS_CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        f"script-src 'self' 'unsafe-inline' {_DOCS_CDN}",
        f"style-src 'self' 'unsafe-inline' {_DOCS_CDN} https://fonts.googleapis.com",
        "font-src 'self' data: https://fonts.gstatic.com",
        "img-src 'self' data: blob: https://fastapi.tiangolo.com https://cdn.redoc.ly",
        "connect-src 'self'",
        "worker-src 'self' blob:",
        "object-src 'none'",
        "base-uri 'self'",
        "frame-ancestors 'none'",
        "form-action 'self'",
    ]
)

PERMISSIONS_POLICY = "camera=(), microphone=(), geolocation=(), payment=(), usb=()"


def with_connect_sources(csp: str, sources: Iterable[str]) -> str:
    """The policy with extra connect-src origins (the S3 endpoint of presigned volume downloads)."""
    extra = " ".join(source for source in sources if source)
    return csp.replace("connect-src 'self'", f"connect-src 'self' {extra}") if extra else csp


def _headers(csp: str) -> list[tuple[bytes, bytes]]:
    return [
        (b"content-security-policy", csp.encode()),
        (b"x-frame-options", b"DENY"),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"cross-origin-opener-policy", b"same-origin"),
        (b"permissions-policy", PERMISSIONS_POLICY.encode()),
    ]


class SecurityHeadersMiddleware:
    """Add CSP, X-Frame-Options, nosniff, Referrer-Policy, COOP and Permissions-Policy to every HTTP response.

    A header the application already set is kept (a route may know better); `docs_paths` get the relaxed
    documentation policy.
    """

    def __init__(self, app: ASGIApp, docs_paths: Iterable[str] = (), connect_sources: Iterable[str] = ()) -> None:
        self.app = app
        self.docs_paths = frozenset(p for p in docs_paths if p)
        self.strict = _headers(with_connect_sources(CONTENT_SECURITY_POLICY, connect_sources))
        self.docs = _headers(DOCS_CONTENT_SECURITY_POLICY)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through; decorate the response start message."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.docs if scope.get("path") in self.docs_paths else self.strict

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                present = {name.lower() for name, _ in headers}
                headers.extend((name, value) for name, value in extra if name not in present)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)
