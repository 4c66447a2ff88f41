"""The FastAPI application (uvicorn backend.main:app)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from backend import api
from backend.core.config import Settings, get_settings
from backend.core.db import warm_up
from backend.core.security_headers import SecurityHeadersMiddleware
from backend.observability import wiring as observability
from backend.storage.temp import TempSweeper

# No inline styles: the Content-Security-Policy (core/security_headers.py) would refuse them.
_PLACEHOLDER = """<!doctype html><html><head><meta name="color-scheme" content="dark"><title>maskloop</title></head>
<body><h1>maskloop</h1><p>The API is running. OpenAPI docs: <a href="/docs">/docs</a>.</p>
<p>The browser workspace is served here once <code>frontend/</code> is built.</p></body></html>"""


def _build_routes(app: FastAPI) -> None:
    """Build every route before the first request: FastAPI analyses an included router's routes lazily, on the
    first request matched against it, which would add ~70 ms to the first request of each API process."""
    scope: dict[str, object] = {
        "type": "http",
        "path": "/__warm-up__",
        "method": "GET",
        "root_path": "",
        "headers": [],
        "query_string": b"",
    }
    for route in app.router.routes:
        route.matches(dict(scope))


def _lifespan(settings: Settings) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    """Start-up and shutdown of one app: stale temp files (a killed import's) go at start, then periodically."""

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        _build_routes(_app)
        warm_up(settings)
        # Cheap when there is nothing to remove (two folder listings): tests start many apps.
        sweeper = TempSweeper(settings).start()
        try:
            yield
        finally:
            sweeper.stop()

    return lifespan


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for the given (or process-wide) settings."""
    settings = settings or get_settings()
    app = FastAPI(
        title="maskloop",
        version="0.1.0",
        description="Collaborative CT segmentation: per-structure label versions, review, and retraining.",
        lifespan=_lifespan(settings),
    )
    api.install(app, settings)
    dist = settings.frontend_dist
    if (dist / "index.html").exists():
        app.mount("/", StaticFiles(directory=dist, html=True), name="frontend")
    else:

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        def placeholder() -> str:
            return _PLACEHOLDER

    # Added last, so it wraps every route, mount and middleware installed above (CSP, framing, nosniff...).
    docs = (app.docs_url, app.redoc_url, app.swagger_ui_oauth2_redirect_url)
    app.add_middleware(
        SecurityHeadersMiddleware, docs_paths=[p for p in docs if p], connect_sources=settings.presign_connect_sources
    )
    # Outermost of all: request ids for logs and answers, latency and status metrics of every answer.
    observability.install(app, settings)
    return app


app = create_app()
