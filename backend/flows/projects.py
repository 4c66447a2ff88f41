"""Project use cases: create a project with its label schema, manage members, change settings (each one transaction).

Called by `backend/projects/router.py` and the `maskloop` CLI. The services flush; these functions commit.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput, PermissionDenied
from backend.models import Project, User
from backend.projects import service as projects
from backend.quality import service as quality
from backend.registry import service as registry
from backend.workflow import service as workflow


def create_project(
    db: Session,
    blobs: BlobStore,
    slug: str,
    name: str,
    *,
    structures: Sequence[dict[str, Any]] | None = None,
    schema_name: str | None = None,
    description: str = "",
    actor: User,
) -> Project:
    """Create a project with its label schema (PanTS unless structures are given), the actor its admin.

    Every project can pre-annotate at once: the weightless classical model is registered with it.
    """
    specs = projects.parse_structures(structures) if structures is not None else None
    project = projects.create_project(db, slug, name, actor, specs, schema_name=schema_name, description=description)
    registry.ensure_classical_model(db, blobs, project.id)
    db.commit()
    return project


def _member(db: Session, user_id: int | None, email: str | None) -> User:
    if user_id is not None:
        return auth.get_user(db, user_id)
    if email:
        return auth.get_user_by_email(db, email)
    raise InvalidInput("give the member's email or user_id")


def set_member(
    db: Session,
    project: Project,
    role: str,
    *,
    user_id: int | None = None,
    email: str | None = None,
    actor: User,
    actor_role: str,
) -> User:
    """Add a member (by id or e-mail) or change a role; only a project admin grants or takes away the admin role."""
    user = _member(db, user_id, email)
    if actor_role != "admin" and "admin" in (role, projects.member_role(db, project.id, user.id)):
        raise PermissionDenied("only a project admin may grant the admin role or change a project admin's role")
    projects.set_membership(db, project.id, user, role, actor)
    db.commit()
    return user


def remove_member(db: Session, project: Project, user_id: int, *, actor: User, actor_role: str) -> None:
    """Remove a member; only a project admin removes a project admin."""
    if actor_role != "admin" and projects.member_role(db, project.id, user_id) == "admin":
        raise PermissionDenied("only a project admin may remove a project admin")
    projects.remove_membership(db, project.id, user_id, actor)
    db.commit()


def update_settings(db: Session, project: Project, changes: dict[str, Any], *, actor: User) -> Project:
    """Change project settings; a `workflow` section is checked and normalised by the workflow rules first (its
    QA expected structures resolved against the schema), a `promotion` section by the registry's gate rules."""
    if "workflow" in changes:
        changes = {**changes, "workflow": workflow.validate_settings(changes["workflow"])}
        if "expected_structures" in changes["workflow"].get("qa", {}):
            changes = {**changes, "workflow": quality.resolve_expected_structures(db, project, changes["workflow"])}
    if "promotion" in changes:
        changes = {**changes, "promotion": registry.validate_promotion_rules(changes["promotion"])}
    updated = projects.update_settings(db, project, changes, actor)
    db.commit()
    return updated
