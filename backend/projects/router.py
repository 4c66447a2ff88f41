"""Project endpoints: list, create, schema, members."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from backend.auth import service as auth
from backend.auth.dependencies import AdminUser, Blobs, CurrentUser, DbSession
from backend.core.errors import InvalidInput, NotFound, PermissionDenied
from backend.core.ids import PathId
from backend.models import Project, User
from backend.projects import service
from backend.projects.dependencies import ProjectAccess, require_project
from backend.projects.schemas import (
    MemberIn,
    MemberOut,
    ProjectCreate,
    ProjectOut,
    SchemaOut,
    StructureOut,
)
from backend.quality import service as quality
from backend.registry import service as registry
from backend.workflow import service as workflow

router = APIRouter(prefix="/api/projects", tags=["projects"])


def _out(project: Project, role: str) -> ProjectOut:
    return ProjectOut(
        id=project.id,
        slug=project.slug,
        name=project.name,
        description=project.description,
        role=role,
        created_at=project.created_at,
        settings=project.settings,
    )


@router.get("", response_model=list[ProjectOut])
def list_projects(db: DbSession, user: CurrentUser) -> list[ProjectOut]:
    """Projects the caller belongs to."""
    return [_out(project, role) for project, role in service.list_projects_for(db, user)]


@router.post("", response_model=ProjectOut, status_code=status.HTTP_201_CREATED)
def create_project(body: ProjectCreate, db: DbSession, blobs: Blobs, admin: AdminUser) -> ProjectOut:
    """Create a project (platform administrators); the PanTS schema unless structures are given."""
    specs = None
    if body.structures is not None:
        specs = service.parse_structures([s.model_dump() for s in body.structures])
    project = service.create_project(
        db, body.slug, body.name, admin, specs, schema_name=body.schema_name, description=body.description
    )
    # Every project can pre-annotate at once with the weightless classical model.
    registry.ensure_classical_model(db, blobs, project.id)
    db.commit()
    return _out(project, "admin")


@router.get("/{project_id}", response_model=ProjectOut)
def get_project(access: ProjectAccess = require_project("read")) -> ProjectOut:
    """One project."""
    return _out(access.project, access.role)


@router.get("/{project_id}/schema", response_model=SchemaOut)
def get_schema(db: DbSession, access: ProjectAccess = require_project("read")) -> SchemaOut:
    """The project's label schema: ordered structures with colours, groups and parents."""
    structures = service.structures_of(db, access.project.id)
    return SchemaOut(
        name=access.project.label_schema.name,
        structures=[StructureOut.model_validate(s) for s in structures],
    )


@router.get("/{project_id}/members", response_model=list[MemberOut])
def list_members(db: DbSession, access: ProjectAccess = require_project("read")) -> list[MemberOut]:
    """Members and roles."""
    return [
        MemberOut(user_id=user.id, email=user.email, display_name=user.display_name, role=role)
        for user, role in service.list_members(db, access.project.id)
    ]


@router.put("/{project_id}/members", response_model=MemberOut)
def set_member(body: MemberIn, db: DbSession, access: ProjectAccess = require_project("manage_members")) -> MemberOut:
    """Add a member or change a role (leads and admins)."""
    user: User | None
    if body.user_id is not None:
        user = db.get(User, body.user_id)
        if user is None:
            raise NotFound(f"user {body.user_id} not found")
    elif body.email:
        user = auth.get_user_by_email(db, body.email)
    else:
        raise InvalidInput("give the member's email or user_id")
    if access.role != "admin" and "admin" in (body.role, service.member_role(db, access.project.id, user.id)):
        raise PermissionDenied("only a project admin may grant the admin role or change a project admin's role")
    service.set_membership(db, access.project.id, user, body.role, access.user)
    db.commit()
    return MemberOut(user_id=user.id, email=user.email, display_name=user.display_name, role=body.role)


@router.delete("/{project_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(user_id: PathId, db: DbSession, access: ProjectAccess = require_project("manage_members")) -> None:
    """Remove a member (leads and admins; only admins remove a project admin)."""
    if access.role != "admin" and service.member_role(db, access.project.id, user_id) == "admin":
        raise PermissionDenied("only a project admin may remove a project admin")
    service.remove_membership(db, access.project.id, user_id, access.user)
    db.commit()


@router.patch("/{project_id}/settings", response_model=ProjectOut)
def update_settings(
    body: dict[str, Any], db: DbSession, access: ProjectAccess = require_project("manage_members")
) -> ProjectOut:
    """Change project settings, e.g. {"attention": {"std": 0.1, "entropy": 0.05}} (leads and admins)."""
    if "workflow" in body:
        body = {**body, "workflow": quality.validate_settings(workflow.validate_settings(body["workflow"]))}
    project = service.update_settings(db, access.project, body, access.user)
    db.commit()
    return _out(project, access.role)
