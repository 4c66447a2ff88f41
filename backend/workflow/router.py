"""Review workflow endpoints: worklist, next task, transitions, leases, assignments, reviews, comments, activity."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, status
from fastapi.responses import Response

from backend.auth.dependencies import Blobs, DbSession
from backend.flows import review as flows
from backend.models import Project, Review, ReviewComment, Scan, User
from backend.projects import service as projects
from backend.projects.dependencies import ProjectAccess, require_project
from backend.scans import service as scans
from backend.scans.dependencies import ScanAccess, require_scan
from backend.workflow import service
from backend.workflow.dependencies import CommentAccess, require_comment
from backend.workflow.schemas import (
    ActivityIn,
    ActivityOut,
    AssignmentIn,
    AssignmentOut,
    CommentIn,
    CommentOut,
    CommentPatch,
    LeaseOut,
    NextTaskIn,
    ReviewIn,
    ReviewOut,
    TaskOut,
    TaskPage,
    TransitionIn,
    TransitionOut,
    UserRef,
)

router = APIRouter(tags=["workflow"])


def _ref(user_id: int | None, names: dict[int, str]) -> UserRef | None:
    if user_id is None:
        return None
    return UserRef(id=user_id, username=names.get(user_id, f"user {user_id}"))


def task_out(row: service.TaskRow, ctx: service.TaskContext) -> TaskOut:
    """Serialise a task for the caller described by the context."""
    task = row.task
    levels = list(ctx.config.review_levels)
    lease = None
    if task.lease_user_id is not None and task.lease_expires_at is not None and service.lease_live(task, ctx.now):
        lease = LeaseOut(
            user_id=task.lease_user_id,
            username=ctx.names.get(task.lease_user_id, f"user {task.lease_user_id}"),
            expires_at=task.lease_expires_at,
        )
    level_name = levels[min(task.review_level, len(levels)) - 1] if task.review_level > 0 else None
    return TaskOut(
        scan_id=task.scan_id,
        case_id=row.case_id,
        state=task.state,
        review_level=task.review_level,
        review_level_name=level_name,
        review_levels=levels,
        priority=task.priority,
        assignee=_ref(task.assignee_user_id, ctx.names),
        assigned_structure_ids=task.assigned_structure_ids,
        reviewer=_ref(task.reviewer_user_id, ctx.names),
        lease=lease,
        site=row.site,
        phase=row.phase,
        tumor=row.tumor,
        open_findings=task.open_findings,
        active_seconds=task.active_seconds,
        head_version_id=row.head_version_id,
        submitted_version_id=task.submitted_version_id,
        submitted_by=task.submitted_by_user_id,
        approved_version_id=task.approved_version_id,
        submitted_at=task.submitted_at,
        approved_at=task.approved_at,
        updated_at=task.updated_at,
        allowed_actions=ctx.actions(task),
    )


def _one(db: DbSession, scan: Scan, user: User, role: str) -> TaskOut:
    db.refresh(scan, attribute_names=["head_version_id"])
    row = service.task_row(db, scan)
    project = projects.get_project(db, scan.project_id)
    return task_out(row, service.context_for(db, project, user, role, [row]))


def _comment_out(comment: ReviewComment, names: dict[int, str], structures: dict[int, str]) -> CommentOut:
    return CommentOut(
        id=comment.id,
        scan_id=comment.scan_id,
        version_id=comment.version_id,
        review_id=comment.review_id,
        author=_ref(comment.author_user_id, names),
        structure=structures.get(comment.structure_id) if comment.structure_id is not None else None,
        slice_axis=comment.slice_axis,
        slice_index=comment.slice_index,
        voxel=comment.voxel,
        text=comment.text,
        resolved=comment.resolved,
        created_at=comment.created_at,
    )


def _comments_out(db: DbSession, project_id: int, comments: list[ReviewComment]) -> list[CommentOut]:
    names = service.usernames(db, {c.author_user_id for c in comments})
    structures = service.structure_names(db, project_id)
    return [_comment_out(c, names, structures) for c in comments]


def _reviews_out(db: DbSession, project: Project, scan: Scan, reviews: list[Review]) -> list[ReviewOut]:
    comments = service.list_comments(db, scan, review_ids=[r.id for r in reviews])
    names = service.usernames(db, {r.reviewer_user_id for r in reviews} | {c.author_user_id for c in comments})
    structures = service.structure_names(db, project.id)
    levels = service.config_of(project).review_levels
    out = []
    for review in reviews:
        mine = [_comment_out(c, names, structures) for c in comments if c.review_id == review.id]
        out.append(
            ReviewOut(
                id=review.id,
                scan_id=review.scan_id,
                version_id=review.version_id,
                reviewer=_ref(review.reviewer_user_id, names),
                review_level=review.review_level,
                review_level_name=levels[review.review_level - 1] if 0 < review.review_level <= len(levels) else None,
                decision=review.decision,
                message=review.message,
                created_at=review.created_at,
                comments=mine,
            )
        )
    return out


def _spec(body: CommentIn) -> service.CommentSpec:
    voxel = (body.voxel[0], body.voxel[1], body.voxel[2]) if body.voxel is not None else None
    return service.CommentSpec(
        text=body.text,
        version_id=body.version_id,
        structure=body.structure,
        slice_axis=body.slice_axis,
        slice_index=body.slice_index,
        voxel=voxel,
    )


@router.get("/api/projects/{project_id}/worklist", response_model=TaskPage)
def worklist(
    db: DbSession,
    access: ProjectAccess = require_project("read"),
    state: Annotated[str | None, Query(description="a state, or several comma-separated")] = None,
    site: str | None = None,
    phase: str | None = None,
    tumor: bool | None = None,
    assignee: Annotated[str | None, Query(description="'me', 'none' or a user id")] = None,
    q: Annotated[str | None, Query(max_length=200, description="case id prefix")] = None,
    sort: Annotated[str, Query(pattern="^(priority|updated|case)$")] = "priority",
    page: Annotated[int, Query(ge=1, le=10_000_000)] = 1,
    page_size: Annotated[int, Query(ge=1, le=500)] = 50,
    after: Annotated[
        str | None, Query(max_length=500, description="`next_cursor` of the previous page (instead of `page`)")
    ] = None,
) -> TaskPage:
    """The project's tasks, filtered and sorted, with what the caller may do with each."""
    flt = service.parse_filter(state=state, site=site, phase=phase, tumor=tumor, assignee=assignee, q=q)
    rows, total = service.worklist(
        db, access.project, access.user, flt, sort=sort, offset=(page - 1) * page_size, limit=page_size, after=after
    )
    ctx = service.context_for(db, access.project, access.user, access.role, rows)
    next_cursor = service.encode_cursor(sort, rows[-1]) if len(rows) == page_size else None
    return TaskPage(
        items=[task_out(r, ctx) for r in rows], total=total, page=page, page_size=page_size, next_cursor=next_cursor
    )


@router.post(
    "/api/projects/{project_id}/next-task",
    response_model=TaskOut,
    responses={204: {"description": "no task is waiting for the caller"}},
)
def next_task(body: NextTaskIn, db: DbSession, access: ProjectAccess = require_project("read")) -> TaskOut | Response:
    """Claim the highest-priority task waiting for the caller (with the edit lease); 204 when none."""
    task = flows.next_task(db, access.project, body.kind, actor=access.user, role=access.role)
    if task is None:
        return Response(status_code=status.HTTP_204_NO_CONTENT)
    return _one(db, scans.get_scan(db, task.scan_id), access.user, access.role)


@router.post("/api/projects/{project_id}/assignments", response_model=AssignmentOut)
def assign(
    body: AssignmentIn, db: DbSession, access: ProjectAccess = require_project(projects.LEAD_PERMISSION)
) -> AssignmentOut:
    """Assign scans (or some of their structures) to an annotator or reviewer; a null user unassigns (leads)."""
    updated = flows.assign(
        db,
        access.project,
        scan_ids=body.scan_ids,
        user_id=body.user_id,
        role=body.role,
        structure_ids=body.structure_ids,
        actor=access.user,
    )
    return AssignmentOut(updated=updated)


@router.get("/api/scans/{scan_id}/task", response_model=TaskOut)
def get_task(db: DbSession, access: ScanAccess = require_scan("read")) -> TaskOut:
    """The scan's task: state, review level, assignee, lease, key versions and the caller's allowed actions."""
    return _one(db, access.scan, access.user, access.role)


@router.post("/api/scans/{scan_id}/transitions", response_model=TaskOut)
def transition(body: TransitionIn, db: DbSession, blobs: Blobs, access: ScanAccess = require_scan("read")) -> TaskOut:
    """Apply a workflow action (start, submit, start_review, approve, request_changes, reopen, adjudicate, resolve).

    After a submit the QA rules run on the submitted version (their findings show on the task and in review).
    """
    flows.transition(
        db,
        blobs,
        access.scan,
        body.action,
        version_id=body.version_id,
        message=body.message,
        actor=access.user,
        role=access.role,
    )
    return _one(db, access.scan, access.user, access.role)


@router.get("/api/scans/{scan_id}/transitions", response_model=list[TransitionOut])
def list_transitions(db: DbSession, access: ScanAccess = require_scan("read")) -> list[TransitionOut]:
    """The task's history (every state change with its actor and version), oldest first."""
    rows = service.list_transitions(db, access.scan)
    names = service.usernames(db, {r.actor_user_id for r in rows})
    return [
        TransitionOut(
            id=r.id,
            action=r.action,
            from_state=r.from_state,
            to_state=r.to_state,
            review_level=r.review_level,
            actor=_ref(r.actor_user_id, names),
            version_id=r.version_id,
            at=r.at,
        )
        for r in rows
    ]


@router.post("/api/scans/{scan_id}/lease", response_model=TaskOut)
def acquire_lease(db: DbSession, access: ScanAccess = require_scan("write_labels")) -> TaskOut:
    """Take or renew (heartbeat) the edit lease; 409 lease_held while someone else holds a live one."""
    flows.acquire_lease(db, access.scan, actor=access.user, role=access.role)
    return _one(db, access.scan, access.user, access.role)


@router.delete("/api/scans/{scan_id}/lease", response_model=TaskOut)
def release_lease(db: DbSession, access: ScanAccess = require_scan("read")) -> TaskOut:
    """Release the edit lease (its holder), or force-release it (a lead)."""
    flows.release_lease(db, access.scan, actor=access.user, role=access.role)
    return _one(db, access.scan, access.user, access.role)


@router.post("/api/scans/{scan_id}/reviews", response_model=ReviewOut, status_code=status.HTTP_201_CREATED)
def create_review(
    body: ReviewIn, db: DbSession, blobs: Blobs, access: ScanAccess = require_scan("review")
) -> ReviewOut:
    """Approve or request changes on the head version at the current review level, with located comments."""
    review = flows.submit_review(
        db,
        blobs,
        access.scan,
        version_id=body.version_id,
        decision=body.decision,
        message=body.message,
        comments=[_spec(c) for c in body.comments],
        actor=access.user,
        role=access.role,
    )
    project = projects.get_project(db, access.scan.project_id)
    out = _reviews_out(db, project, access.scan, [review])[0]
    out.task = _one(db, access.scan, access.user, access.role)
    return out


@router.get("/api/scans/{scan_id}/reviews", response_model=list[ReviewOut])
def list_reviews(db: DbSession, access: ScanAccess = require_scan("read")) -> list[ReviewOut]:
    """The scan's reviews, oldest first, with their comments."""
    project = projects.get_project(db, access.scan.project_id)
    return _reviews_out(db, project, access.scan, service.list_reviews(db, access.scan))


@router.get("/api/scans/{scan_id}/comments", response_model=list[CommentOut])
def list_comments(db: DbSession, access: ScanAccess = require_scan("read")) -> list[CommentOut]:
    """Every comment on the scan, oldest first."""
    return _comments_out(db, access.scan.project_id, service.list_comments(db, access.scan))


@router.post("/api/scans/{scan_id}/comments", response_model=CommentOut, status_code=status.HTTP_201_CREATED)
def create_comment(body: CommentIn, db: DbSession, access: ScanAccess = require_scan("write_labels")) -> CommentOut:
    """Pin a comment on the scan: optionally a version, a structure, a slice (axis + index) and/or a voxel."""
    comment = flows.add_comment(db, access.scan, _spec(body), actor=access.user)
    return _comments_out(db, access.scan.project_id, [comment])[0]


@router.patch("/api/comments/{comment_id}", response_model=CommentOut)
def patch_comment(
    body: CommentPatch, db: DbSession, access: CommentAccess = require_comment("write_labels")
) -> CommentOut:
    """Resolve (or re-open) a comment."""
    comment = flows.set_comment_resolved(db, access.comment, body.resolved, actor=access.user)
    return _comments_out(db, access.scan.project_id, [comment])[0]


@router.post("/api/scans/{scan_id}/activity", response_model=ActivityOut)
def report_activity(body: ActivityIn, db: DbSession, access: ScanAccess = require_scan("write_labels")) -> ActivityOut:
    """Add active editing seconds (the editor reports about every 30 s of input) to the task and today's tally."""
    task = flows.record_activity(db, access.scan, body.active_seconds, actor=access.user)
    return ActivityOut(scan_id=task.scan_id, active_seconds=task.active_seconds)
