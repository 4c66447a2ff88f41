"""`Cache-Control: no-store` on every answer under /api/auth (tokens, CSRF values, errors): a pure ASGI middleware.

A middleware rather than a route dependency, so error answers (401, 403, 422, 429) carry it too.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

AUTH_PREFIX = "/api/auth/"
_HEADERS = ((b"cache-control", b"no-store"), (b"pragma", b"no-cache"))


class NoStoreMiddleware:
    """Mark auth answers uncacheable (browsers, proxies, back/forward cache), replacing any Cache-Control."""

    def __init__(self, app: ASGIApp, prefix: str = AUTH_PREFIX) -> None:
        self.app = app
        self.prefix = prefix

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through; set the headers on the response start of auth paths."""
        if scope["type"] != "http" or not str(scope.get("path", "")).startswith(self.prefix):
            await self.app(scope, receive, send)
            return

        async def send_no_store(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name for name, _ in _HEADERS}
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                message["headers"] = [*headers, *_HEADERS]
            await send(message)

        await self.app(scope, receive, send_no_store)
