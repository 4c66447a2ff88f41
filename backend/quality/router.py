"""Multi-reader and QA endpoints: reader sets (create, submit, fuse), QA runs and findings."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status

from backend.auth.dependencies import Blobs, DbSession
from backend.flows import jobs as job_flows
from backend.flows import quality as quality_flows
from backend.jobs import service as jobs
from backend.jobs.router import job_out
from backend.models import QAFinding, ReaderSet, User
from backend.projects.dependencies import ProjectAccess, require_project
from backend.quality import service
from backend.quality.dependencies import FindingAccess, ReaderSetAccess, require_finding, require_reader_set
from backend.quality.schemas import (
    FindingOut,
    FindingPage,
    FindingUpdate,
    FuseAccepted,
    FuseRequest,
    QARunRequest,
    ReaderOut,
    ReaderSetCreate,
    ReaderSetOut,
    ReaderSubmit,
)
from backend.scans.dependencies import ScanAccess, require_scan

router = APIRouter(tags=["quality"])


def _set_out(db: DbSession, reader_set: ReaderSet, viewer: User) -> ReaderSetOut:
    """Serialise a set as the viewer may see it (other readers' versions and agreement hidden while open)."""
    members = service.members_of(db, reader_set)
    users = service.users_by_id(db, [m.user_id for m in members])
    lead = service.is_lead(db, viewer, reader_set.project_id)
    blinded = service.is_blinded(reader_set, [m.user_id for m in members], viewer, lead)
    fusion_job = jobs.fusion_job_of(db, reader_set)
    positions = jobs.queue_positions(db, [fusion_job]) if fusion_job is not None else {}
    return ReaderSetOut(
        id=reader_set.id,
        project_id=reader_set.project_id,
        scan_id=reader_set.scan_id,
        case_id=service.case_ids(db, [reader_set.scan_id]).get(reader_set.scan_id, ""),
        base_version_id=reader_set.base_version_id,
        status=reader_set.status,
        members=[
            ReaderOut(
                user_id=m.user_id,
                display_name=users[m.user_id].display_name if m.user_id in users else "",
                submitted=m.version_id is not None,
                submitted_at=m.submitted_at,
                version_id=service.visible_member_version(m, viewer, blinded),
            )
            for m in members
        ],
        agreement=None if blinded else dict(reader_set.agreement or {}),
        below_threshold=[] if blinded else service.below_threshold(reader_set),
        fusion_method=reader_set.fusion_method,
        fusion_version_id=reader_set.fusion_version_id,
        fusion_job=job_out(fusion_job, positions.get(fusion_job.id)) if fusion_job is not None else None,
        created_by=reader_set.created_by,
        created_at=reader_set.created_at,
        completed_at=reader_set.completed_at,
    )


def _findings_out(db: DbSession, findings: list[QAFinding]) -> list[FindingOut]:
    if not findings:
        return []
    names = {
        structure_id: name
        for project_id in {f.project_id for f in findings}
        for structure_id, name in service.structure_names(db, project_id).items()
    }
    cases = service.case_ids(db, [f.scan_id for f in findings])
    return [
        FindingOut(
            id=f.id,
            project_id=f.project_id,
            scan_id=f.scan_id,
            case_id=cases.get(f.scan_id, ""),
            version_id=f.version_id,
            rule=f.rule,
            structure=names.get(f.structure_id) if f.structure_id is not None else None,
            severity=f.severity,
            message=f.message,
            details=dict(f.details or {}),
            status=f.status,
            resolved_by=f.resolved_by,
            created_at=f.created_at,
        )
        for f in findings
    ]


@router.post(
    "/api/projects/{project_id}/reader-sets", response_model=list[ReaderSetOut], status_code=status.HTTP_201_CREATED
)
def create_reader_sets(
    body: ReaderSetCreate, db: DbSession, access: ProjectAccess = require_project("read")
) -> list[ReaderSetOut]:
    """Open blinded multi-reader sets (lead): chosen scans or a seeded random fraction; readers chosen or picked."""
    created = quality_flows.create_reader_sets(
        db,
        access.project,
        scan_ids=body.scan_ids,
        sample_fraction=body.sample_fraction,
        readers=body.readers,
        n_readers=body.n_readers,
        seed=body.seed,
        actor=access.user,
    )
    return [_set_out(db, s, access.user) for s in created]


@router.get("/api/scans/{scan_id}/reader-sets", response_model=list[ReaderSetOut])
def scan_reader_sets(db: DbSession, access: ScanAccess = require_scan("read")) -> list[ReaderSetOut]:
    """The scan's reader sets, oldest first."""
    return [_set_out(db, s, access.user) for s in service.reader_sets_of_scan(db, access.scan)]


@router.get("/api/reader-sets/{reader_set_id}", response_model=ReaderSetOut)
def get_reader_set(db: DbSession, access: ReaderSetAccess = require_reader_set("read")) -> ReaderSetOut:
    """One set: readers, status and agreement (readers see only their own version until it is complete)."""
    return _set_out(db, access.reader_set, access.user)


@router.post("/api/reader-sets/{reader_set_id}/submit", response_model=ReaderSetOut)
def submit(
    body: ReaderSubmit, db: DbSession, blobs: Blobs, access: ReaderSetAccess = require_reader_set("write_labels")
) -> ReaderSetOut:
    """A reader submits their version; the last submission computes agreement (below threshold: adjudication)."""
    reader_set = quality_flows.submit_reading(db, blobs, access.reader_set, body.version_id, actor=access.user)
    return _set_out(db, reader_set, access.user)


@router.post("/api/reader-sets/{reader_set_id}/fuse", response_model=FuseAccepted, status_code=status.HTTP_202_ACCEPTED)
def fuse(
    body: FuseRequest, db: DbSession, access: ReaderSetAccess = require_reader_set("write_labels")
) -> FuseAccepted:
    """Queue the fusion of the readers' versions (lead; majority vote or STAPLE) as a `fuse` job on the cpu queue.

    Refusals come at once (not a lead, unknown method, set still open or already fused, a fusion already queued);
    when the job succeeds the `fusion` version becomes the head and the set is `fused` with its
    `fusion_version_id`. `GET /api/reader-sets/{id}` shows the job's status and progress meanwhile.
    """
    job = job_flows.launch_fusion(db, access.reader_set, body.method, actor=access.user)
    positions = jobs.queue_positions(db, [job])
    return FuseAccepted(
        job=job_out(job, positions.get(job.id)), reader_set=_set_out(db, access.reader_set, access.user)
    )


@router.get("/api/scans/{scan_id}/findings", response_model=list[FindingOut])
def scan_findings(
    db: DbSession,
    access: ScanAccess = require_scan("read"),
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    rule: str | None = None,
) -> list[FindingOut]:
    """The scan's QA findings, newest first (filter by status and rule)."""
    items, _ = service.list_findings(db, scan_id=access.scan.id, status=status_filter, rule=rule)
    return _findings_out(db, items)


@router.post("/api/scans/{scan_id}/qa", response_model=list[FindingOut])
def run_qa(
    db: DbSession, blobs: Blobs, body: QARunRequest | None = None, access: ScanAccess = require_scan("write_labels")
) -> list[FindingOut]:
    """Run the QA rules now on a version (default: the head); returns that version's open findings."""
    findings = quality_flows.rerun_qa(db, blobs, access.scan, body.version_id if body else None, actor=access.user)
    return _findings_out(db, findings)


@router.patch("/api/findings/{finding_id}", response_model=FindingOut)
def update_finding(
    body: FindingUpdate, db: DbSession, access: FindingAccess = require_finding("write_labels")
) -> FindingOut:
    """Resolve, dismiss (reviewers and leads) or reopen a finding."""
    finding = quality_flows.set_finding_status(db, access.finding, body.status, actor=access.user, role=access.role)
    return _findings_out(db, [finding])[0]


@router.get("/api/projects/{project_id}/findings", response_model=FindingPage)
def project_findings(
    db: DbSession,
    access: ProjectAccess = require_project("read"),
    status_filter: Annotated[str | None, Query(alias="status")] = None,
    rule: str | None = None,
    page: Annotated[int, Query(ge=1)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 100,
) -> FindingPage:
    """The project's QA findings, newest first, one page at a time (filter by status and rule)."""
    items, total = service.list_findings(
        db,
        project_id=access.project.id,
        status=status_filter,
        rule=rule,
        offset=(page - 1) * page_size,
        limit=page_size,
    )
    return FindingPage(items=_findings_out(db, items), total=total, page=page, page_size=page_size)
