"""Wire observability into an API app: logging format, metric storage, and the outermost middleware."""

from __future__ import annotations

from fastapi import FastAPI

from backend.core.config import Settings
from backend.observability.logs import configure_logging
from backend.observability.metrics import http_metrics, prepare_process
from backend.observability.middleware import ObservabilityMiddleware


def install(app: FastAPI, settings: Settings) -> None:
    """Configure logs, choose where metrics are kept, and wrap the app (call last: it must be outermost, so it
    times and counts every answer, the other middlewares' refusals included)."""
    configure_logging(settings)
    metrics = None
    if settings.metrics_enabled:
        prepare_process(settings)
        metrics = http_metrics()
    app.add_middleware(ObservabilityMiddleware, metrics=metrics, routes=app.router.routes)
