"""QA findings: open findings by rule, structure and severity, and all findings by status."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import and_, distinct, func, select
from sqlalchemy.orm import Session

from backend.dashboard.service.results import CountBy, Qa
from backend.models import Project, QAFinding, Structure
from backend.models.workflow import FINDING_STATUSES


def _count_by(rows: Iterable[Any]) -> list[CountBy]:
    items = [CountBy(key=None if k is None else str(k), count=int(n)) for k, n in rows]
    items.sort(key=lambda c: (-c.count, c.key is None, c.key or ""))
    return items


def qa(db: Session, project: Project) -> Qa:
    """Open QA findings by rule, structure and severity, and all findings by status."""
    is_open = and_(QAFinding.project_id == project.id, QAFinding.status == "open")
    by_rule = db.execute(select(QAFinding.rule, func.count()).where(is_open).group_by(QAFinding.rule)).all()
    by_structure = db.execute(
        select(Structure.name, func.count())
        .select_from(QAFinding)
        .outerjoin(Structure, Structure.id == QAFinding.structure_id)
        .where(is_open)
        .group_by(Structure.name)
    ).all()
    by_severity = db.execute(select(QAFinding.severity, func.count()).where(is_open).group_by(QAFinding.severity)).all()
    by_status = dict(
        db.execute(
            select(QAFinding.status, func.count()).where(QAFinding.project_id == project.id).group_by(QAFinding.status)
        ).all()
    )
    scans = int(db.scalar(select(func.count(distinct(QAFinding.scan_id))).where(is_open)) or 0)
    return Qa(
        project_id=project.id,
        open_findings=int(by_status.get("open", 0)),
        scans_with_open_findings=scans,
        by_rule=_count_by(by_rule),
        by_structure=_count_by(by_structure),
        by_severity=_count_by(by_severity),
        by_status={s: int(by_status.get(s, 0)) for s in FINDING_STATUSES},
    )
