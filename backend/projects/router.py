"""Project endpoints: list, create, schema, members."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, status

from backend.auth.dependencies import AdminUser, Blobs, CurrentUser, DbSession
from backend.core.ids import PathId
from backend.flows import projects as flows
from backend.models import Project
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
    project = flows.create_project(
        db,
        blobs,
        body.slug,
        body.name,
        structures=None if body.structures is None else [s.model_dump() for s in body.structures],
        schema_name=body.schema_name,
        description=body.description,
        actor=admin,
    )
    return _out(project, "admin")


@router.get("/{project_id}", response_model=ProjectOut)
def get_project(access: ProjectAccess = require_project("read")) -> ProjectOut:
    """One project."""
    return _out(access.project, access.role)


@router.get("/{project_id}/schema", response_model=SchemaOut)
def get_schema(db: DbSession, access: ProjectAccess = require_project("read")) -> SchemaOut:
    """The project's label schema: ordered structures with colours, groups and parents."""
    structures = service.structures_of(db, access.project.id, with_codes=True)
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
    user = flows.set_member(
        db,
        access.project,
        body.role,
        user_id=body.user_id,
        email=body.email,
        actor=access.user,
        actor_role=access.role,
    )
    return MemberOut(user_id=user.id, email=user.email, display_name=user.display_name, role=body.role)


@router.delete("/{project_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(user_id: PathId, db: DbSession, access: ProjectAccess = require_project("manage_members")) -> None:
    """Remove a member (leads and admins; only admins remove a project admin)."""
    flows.remove_member(db, access.project, user_id, actor=access.user, actor_role=access.role)


@router.patch("/{project_id}/settings", response_model=ProjectOut)
def update_settings(
    body: dict[str, Any], db: DbSession, access: ProjectAccess = require_project("manage_members")
) -> ProjectOut:
    """Change project settings, e.g. {"attention": {"std": 0.1, "entropy": 0.05}} (leads and admins)."""
    project = flows.update_settings(db, access.project, body, actor=access.user)
    return _out(project, access.role)
