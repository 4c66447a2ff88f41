"""GET /api/health/ready (database, broker and blob store) and GET /metrics (Prometheus text format)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from backend.auth.dependencies import Blobs, DbSession, SettingsDep
from backend.observability import metrics, service
from backend.observability.dependencies import MetricsAccess
from backend.observability.schemas import CheckOut, ReadinessOut

router = APIRouter(tags=["meta"])
# Mounted only when MASKLOOP_METRICS_ENABLED is on.
metrics_router = APIRouter(tags=["meta"])


@router.get("/api/health/ready", response_model=ReadinessOut)
def ready(db: DbSession, settings: SettingsDep, blobs: Blobs) -> ReadinessOut:
    """Readiness probe: 200 when the database, the broker and the blob store answer; 503 naming those that do
    not (`details.failed`), each check within MASKLOOP_READINESS_TIMEOUT_S."""
    report = service.require_ready(db, settings, blobs)
    checks = {name: CheckOut(ok=r.ok, seconds=round(r.seconds, 4), error=r.error) for name, r in report.checks.items()}
    return ReadinessOut(status="ready", checks=checks)


@metrics_router.get("/metrics", include_in_schema=False, dependencies=[MetricsAccess])
def get_metrics(settings: SettingsDep) -> Response:
    """Request, job and queue metrics of this host's processes, for Prometheus to scrape."""
    return Response(content=metrics.render(settings), media_type=metrics.CONTENT_TYPE)
