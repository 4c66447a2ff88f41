"""QA findings: listing, resolving and dismissing them, and the open count on the scan's task."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.db import get_or_404
from backend.core.errors import InvalidInput, PermissionDenied
from backend.imaging import qa_rules
from backend.models import QAFinding, Scan, ScanTask, User
from backend.models.workflow import FINDING_STATUSES
from backend.projects import service as projects
from backend.workflow import service as workflow


def scan_task(db: Session, scan: Scan) -> ScanTask:
    """The scan's workflow task (created when the scan has none yet)."""
    return workflow.ensure_task(db, scan)


def refresh_open_findings(db: Session, scan: Scan) -> int:
    """Recount the scan's open findings into its task (the worklist shows the number)."""
    count = int(db.scalar(select(func.count()).where(QAFinding.scan_id == scan.id, QAFinding.status == "open")) or 0)
    task = scan_task(db, scan)
    task.open_findings = count
    db.flush()
    return count


def list_findings(
    db: Session,
    *,
    project_id: int | None = None,
    scan_id: int | None = None,
    status: str | None = None,
    rule: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> tuple[list[QAFinding], int]:
    """Findings of a project or a scan, newest first, filtered by status and rule, with the total."""
    if status is not None and status not in FINDING_STATUSES:
        raise InvalidInput(f"unknown finding status {status!r}; use one of {list(FINDING_STATUSES)}")
    if rule is not None and rule not in qa_rules.RULES:
        raise InvalidInput(f"unknown rule {rule!r}; use one of {list(qa_rules.RULES)}")
    query = select(QAFinding)
    if project_id is not None:
        query = query.where(QAFinding.project_id == project_id)
    if scan_id is not None:
        query = query.where(QAFinding.scan_id == scan_id)
    if status is not None:
        query = query.where(QAFinding.status == status)
    if rule is not None:
        query = query.where(QAFinding.rule == rule)
    total = int(db.scalar(select(func.count()).select_from(query.subquery())) or 0)
    page = query.order_by(QAFinding.id.desc()).offset(offset)
    if limit is not None:
        page = page.limit(limit)
    return list(db.scalars(page)), total


def get_finding(db: Session, finding_id: int) -> QAFinding:
    """A finding by id."""
    return get_or_404(db, QAFinding, finding_id, "finding")


def set_finding_status(db: Session, finding: QAFinding, status: str, actor: User, role: str) -> QAFinding:
    """Resolve (annotators too), dismiss (reviewers and leads) or reopen a finding; the scan's count follows."""
    if status not in FINDING_STATUSES:
        raise InvalidInput(f"unknown finding status {status!r}; use one of {list(FINDING_STATUSES)}")
    if status == "dismissed" and "review" not in projects.PERMISSIONS.get(role, frozenset()):
        raise PermissionDenied("only reviewers and leads may dismiss a finding")
    before = finding.status
    finding.status = status
    finding.resolved_by = None if status == "open" else actor.id
    db.flush()
    scan = db.get(Scan, finding.scan_id)
    assert scan is not None
    refresh_open_findings(db, scan)
    audit.record(
        db,
        actor_user_id=actor.id,
        action=f"qa.finding.{status}",
        entity_type="qa_finding",
        entity_id=finding.id,
        project_id=finding.project_id,
        scan_id=finding.scan_id,
        details={"rule": finding.rule, "from": before, "to": status},
    )
    return finding


def case_ids(db: Session, scan_ids: Iterable[int]) -> dict[int, str]:
    """Case ids by scan id."""
    wanted = set(scan_ids)
    if not wanted:
        return {}
    return {sid: cid for sid, cid in db.execute(select(Scan.id, Scan.case_id).where(Scan.id.in_(wanted)))}
