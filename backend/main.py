"""The FastAPI application (uvicorn backend.main:app)."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from backend import api
from backend.core.config import Settings, get_settings

_PLACEHOLDER = """<!doctype html><html><head><title>maskloop</title></head>
<body style="font-family:sans-serif;background:#111;color:#ddd;padding:2em">
<h1>maskloop</h1><p>The API is running. OpenAPI docs: <a style="color:#6cf" href="/docs">/docs</a>.</p>
<p>The browser workspace is served here once <code>frontend/</code> is built.</p></body></html>"""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the application for the given (or process-wide) settings."""
    settings = settings or get_settings()
    app = FastAPI(
        title="maskloop",
        version="0.1.0",
        description="Collaborative CT segmentation: per-structure label versions, review, and retraining.",
    )
    api.install(app, settings)
    dist = settings.frontend_dist
    if (dist / "index.html").exists():
        app.mount("/", StaticFiles(directory=dist, html=True), name="frontend")
    else:

        @app.get("/", response_class=HTMLResponse, include_in_schema=False)
        def placeholder() -> str:
            return _PLACEHOLDER

    return app


app = create_app()
