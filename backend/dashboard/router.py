"""Lead dashboard endpoints under /api/projects/{project_id}/dashboard/ (read_dashboard: lead, admin, reviewer).

Read-only: each handler calls one service and validates the dataclass it answers into the response body.
"""

from __future__ import annotations

from typing import Annotated, Literal, TypeVar

from fastapi import APIRouter, Query
from pydantic import BaseModel

from backend.auth.dependencies import DbSession
from backend.dashboard import schemas, service
from backend.dashboard.dependencies import ProjectAccess, require_dashboard

router = APIRouter(prefix="/api/projects/{project_id}/dashboard", tags=["dashboard"])
Body = TypeVar("Body", bound=BaseModel)


def _body(model: type[Body], result: object) -> Body:
    """The response body of a service's dataclass (read by attribute, nested ones included)."""
    return model.model_validate(result, from_attributes=True)


@router.get("/summary", response_model=schemas.SummaryOut)
def summary(db: DbSession, access: ProjectAccess = require_dashboard()) -> schemas.SummaryOut:
    """Counts by state and review level, totals, open QA findings and live leases."""
    return _body(schemas.SummaryOut, service.summary(db, access.project))


@router.get("/sites", response_model=schemas.GroupsOut)
def sites(db: DbSession, access: ProjectAccess = require_dashboard()) -> schemas.GroupsOut:
    """Counts by state per acquisition site."""
    return _body(schemas.GroupsOut, service.groups(db, access.project, "site"))


@router.get("/phases", response_model=schemas.GroupsOut)
def phases(db: DbSession, access: ProjectAccess = require_dashboard()) -> schemas.GroupsOut:
    """Counts by state per contrast phase."""
    return _body(schemas.GroupsOut, service.groups(db, access.project, "phase"))


@router.get("/structures", response_model=schemas.StructuresOut)
def structures(
    db: DbSession,
    access: ProjectAccess = require_dashboard(),
    basis: Literal["head", "approved"] = "head",
    fresh: bool = False,
) -> schemas.StructuresOut:
    """Per structure: scans with it present and non-empty, mean/median volume (mL), open findings."""
    return _body(schemas.StructuresOut, service.structures(db, access.project, basis=basis, fresh=fresh))


@router.get("/throughput", response_model=schemas.ThroughputOut)
def throughput(
    db: DbSession,
    access: ProjectAccess = require_dashboard(),
    days: Annotated[int, Query(ge=1, le=366)] = 30,
) -> schemas.ThroughputOut:
    """Per person per day over the last `days` days: saves, submissions, reviews, approvals, active time."""
    return _body(schemas.ThroughputOut, service.throughput(db, access.project, days=days))


@router.get("/editing-time", response_model=schemas.EditingTimeOut)
def editing_time(
    db: DbSession,
    access: ProjectAccess = require_dashboard(),
    days: Annotated[int | None, Query(ge=1, le=3660)] = None,
) -> schemas.EditingTimeOut:
    """Active editing seconds per scan (median, p90), overall and per person."""
    return _body(schemas.EditingTimeOut, service.editing_time(db, access.project, days=days))


@router.get("/turnaround", response_model=schemas.TurnaroundOut)
def turnaround(
    db: DbSession,
    access: ProjectAccess = require_dashboard(),
    weeks: Annotated[int, Query(ge=1, le=104)] = 12,
) -> schemas.TurnaroundOut:
    """Review turnaround (submission to first decision, cycle start to approval), overall and per week."""
    return _body(schemas.TurnaroundOut, service.turnaround(db, access.project, weeks=weeks))


@router.get("/agreement", response_model=schemas.AgreementOut)
def agreement(
    db: DbSession,
    access: ProjectAccess = require_dashboard(),
    bins: Annotated[int, Query(ge=2, le=50)] = 10,
) -> schemas.AgreementOut:
    """Histogram of per-structure multi-reader agreement and the number of scans in adjudication."""
    return _body(schemas.AgreementOut, service.agreement(db, access.project, bins=bins))


@router.get("/model-rounds", response_model=schemas.ModelRoundsOut)
def model_rounds(db: DbSession, access: ProjectAccess = require_dashboard()) -> schemas.ModelRoundsOut:
    """AI-vs-final Dice per structure for every training round of every model of the project."""
    return _body(schemas.ModelRoundsOut, service.model_rounds(db, access.project))


@router.get("/qa", response_model=schemas.QaOut)
def qa(db: DbSession, access: ProjectAccess = require_dashboard()) -> schemas.QaOut:
    """Open QA findings by rule, structure and severity."""
    return _body(schemas.QaOut, service.qa(db, access.project))
