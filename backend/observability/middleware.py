"""The outermost ASGI layer of the API: a request id for logs and the answer, latency and status metrics by route
template (never the raw path: ids would make a series per scan), and one access log line per request."""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from backend.observability.context import new_request_id, request_id_var
from backend.observability.metrics import UNMATCHED_ROUTE, HttpMetrics

access_log = logging.getLogger("maskloop.access")

REQUEST_ID_HEADER = "x-request-id"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


def route_template(scope: Scope, routes: Sequence[BaseRoute] = ()) -> str:
    """The template of the route that answered (`/api/scans/{scan_id}`), or one label for unmatched paths.

    FastAPI names its own routes in the scope; for a request no route saw (a mount served it, or a middleware
    refused it before routing: a missing credential, a body too large) the template is found by matching `routes`.
    """
    route = scope.get("route")
    if route is None:
        partial = None
        for candidate in routes:
            match, _ = candidate.matches(scope)
            if match is Match.FULL:
                route = candidate
                break
            if match is Match.PARTIAL and partial is None:
                partial = candidate
        route = route or partial
    template = getattr(route, "path_format", None)
    return template if isinstance(template, str) and template else UNMATCHED_ROUTE


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


class ObservabilityMiddleware:
    """Bind a request id (the caller's X-Request-ID when it is plain, else a new one) for the logs of the request,
    echo it in the answer, and record the request's latency, status and route template."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics | None, routes: Sequence[BaseRoute] = ()) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve one request, timed and identified."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = dict(scope)  # as it arrived: routing adds to the scope (path params, a mount's root path)
        request_id = new_request_id(_header(scope, REQUEST_ID_HEADER.encode()))
        token = request_id_var.set(request_id)
        started = time.perf_counter()
        status = 500  # when the app fails before answering, the server answers 500
        finished: float | None = None

        async def send_identified(message: Message) -> None:
            nonlocal status, finished
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                if not any(name.lower() == REQUEST_ID_HEADER.encode() for name, _ in headers):
                    headers.append((REQUEST_ID_HEADER.encode(), request_id.encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                finished = time.perf_counter()  # background tasks after the answer are not its latency
            await send(message)

        try:
            await self.app(scope, receive, send_identified)
        finally:
            elapsed = (finished or time.perf_counter()) - started
            if "route" in scope:
                request["route"] = scope["route"]
            self._record(request, status, elapsed)
            request_id_var.reset(token)

    def _record(self, scope: Scope, status: int, elapsed: float) -> None:
        method = str(scope.get("method", ""))
        method = method if method in _METHODS else "OTHER"
        route = route_template(scope, self.routes)
        if self.metrics is not None:
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.duration.labels(method, route).observe(elapsed)
        access_log.info(
            "%s %s %d %.1f ms",
            method,
            scope.get("path", ""),
            status,
            elapsed * 1000,
            extra={"method": method, "route": route, "status": status, "duration_ms": round(elapsed * 1000, 2)},
        )
