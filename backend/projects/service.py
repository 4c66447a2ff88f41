"""Projects, their label schemas, memberships, and the role rules every endpoint checks."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, undefer

from backend.audit import service as audit
from backend.core.db import get_or_404
from backend.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from backend.evaluation.settings import validate_evaluation_settings
from backend.imaging import dicom_codes
from backend.models import LabelSchema, Membership, Project, Structure, User
from backend.models.projects import PROJECT_ROLES

DEFAULT_SCHEMA_PATH = Path(__file__).with_name("pants_schema.json")
_SLUG_RE = re.compile(r"^[a-z0-9][a-z0-9-]{1,62}$")
_NAME_RE = re.compile(r"^[a-z0-9_]{1,100}$")
_COLOR_RE = re.compile(r"^#[0-9a-fA-F]{6}$")

# What each project role may do. Platform administrators may do everything everywhere.
PERMISSIONS: dict[str, frozenset[str]] = {
    "viewer": frozenset({"read"}),
    "annotator": frozenset({"read", "write_labels"}),
    "reviewer": frozenset({"read", "write_labels", "review", "read_dashboard"}),
    "lead": frozenset(
        {"read", "write_labels", "review", "import", "manage_members", "read_audit", "run_jobs", "read_dashboard"}
        | {"assign"}
    ),
    "admin": frozenset(
        {"read", "write_labels", "review", "import", "manage_members", "read_audit", "run_jobs", "admin"}
        | {"read_dashboard", "assign"}
    ),
}

# The one rule for who leads a project: the roles holding this permission (lead, and platform admin).
LEAD_PERMISSION = "assign"


def is_lead(role: str | None) -> bool:
    """Whether a project role leads the project (assigns work, sees everyone's work, manages reader sets)."""
    return role is not None and LEAD_PERMISSION in PERMISSIONS.get(role, frozenset())


@dataclass(frozen=True)
class StructureSpec:
    """A structure as given in a schema file or request."""

    name: str
    label_value: int
    color: str
    group: str = ""
    inside: str | None = None
    aliases: tuple[str, ...] = ()
    # The DICOM SEG code (dicom_codes.StructureCode JSON): the schema's own, else the standard table's by name.
    code: dict[str, Any] | None = None


def load_schema_file(path: Path = DEFAULT_SCHEMA_PATH) -> tuple[str, list[StructureSpec]]:
    """Read a label schema JSON (the PanTS one by default)."""
    data = json.loads(path.read_text())
    return data["name"], parse_structures(data["structures"])


def parse_structures(items: Sequence[dict[str, Any]]) -> list[StructureSpec]:
    """Validate raw structure dicts: unique snake_case names and label values, known parents, colours."""
    specs: list[StructureSpec] = []
    for item in items:
        name = str(item.get("name", ""))
        if not _NAME_RE.match(name):
            raise InvalidInput(f"structure name {name!r} must be lower-case letters, digits and '_'")
        value = item.get("label_value", item.get("id"))
        if not isinstance(value, int) or not 0 < value < 65536:
            raise InvalidInput(f"structure {name!r} needs an integer label value in 1..65535")
        color = str(item.get("color", "#888888"))
        if not _COLOR_RE.match(color):
            raise InvalidInput(f"structure {name!r} colour {color!r} must look like #rrggbb")
        given_code = item.get("code")
        # Only a schema's own code is stored: without one the standard table's code by name applies wherever a code
        # is used (SEG export, SEG import, the schema's output), so an older database row needs no backfill.
        code = (
            dicom_codes.StructureCode.from_json(given_code, f"code of structure {name!r}").to_json()
            if given_code
            else None
        )
        specs.append(
            StructureSpec(
                name=name,
                label_value=value,
                color=color.lower(),
                group=str(item.get("group", "")),
                inside=item.get("inside"),
                aliases=tuple(str(a) for a in item.get("aliases", [])),
                code=code,
            )
        )
    names = [s.name for s in specs]
    values = [s.label_value for s in specs]
    if not specs:
        raise InvalidInput("a label schema needs at least one structure")
    if len(set(names)) != len(names):
        raise InvalidInput("structure names must be unique")
    if len(set(values)) != len(values):
        raise InvalidInput("structure label values must be unique")
    for spec in specs:
        if spec.inside is not None and spec.inside not in names:
            raise InvalidInput(f"structure {spec.name!r} is inside unknown structure {spec.inside!r}")
    return specs


def create_project(
    db: Session,
    slug: str,
    name: str,
    creator: User,
    structures: Sequence[StructureSpec] | None = None,
    schema_name: str | None = None,
    description: str = "",
) -> Project:
    """Create a project with its label schema (PanTS by default) and make the creator its admin."""
    if not _SLUG_RE.match(slug):
        raise InvalidInput(f"project slug {slug!r} must be 2-63 lower-case letters, digits or '-'")
    if db.scalar(select(Project.id).where(Project.slug == slug)) is not None:
        raise Conflict(f"a project with slug {slug!r} already exists")
    if structures is None:
        schema_name, structures = load_schema_file()
    project = Project(slug=slug, name=name, description=description, settings={})
    db.add(project)
    db.flush()
    schema = LabelSchema(project_id=project.id, name=schema_name or slug)
    db.add(schema)
    db.flush()
    for position, spec in enumerate(structures):
        db.add(
            Structure(
                schema_id=schema.id,
                label_value=spec.label_value,
                name=spec.name,
                position=position,
                color=spec.color,
                group=spec.group,
                inside=spec.inside,
                aliases=list(spec.aliases),
                # Left out when None (not written as NULL): schemas then insert into databases of any revision.
                **({"code": spec.code} if spec.code else {}),
            )
        )
    db.add(Membership(project_id=project.id, user_id=creator.id, role="admin"))
    db.flush()
    audit.record(
        db,
        actor_user_id=creator.id,
        action="project.create",
        entity_type="project",
        entity_id=project.id,
        project_id=project.id,
        details={"slug": slug, "structures": len(structures)},
    )
    return project


def get_project(db: Session, project_id: int) -> Project:
    """A project by id."""
    return get_or_404(db, Project, project_id, "project")


def get_project_by_slug(db: Session, slug: str) -> Project:
    """A project by slug."""
    project = db.scalar(select(Project).where(Project.slug == slug))
    if project is None:
        raise NotFound(f"project {slug!r} not found")
    return project


def member_role(db: Session, project_id: int, user_id: int) -> str | None:
    """The role a membership row gives the user in a project, or None (platform admin rights not counted)."""
    return db.scalar(select(Membership.role).where(Membership.project_id == project_id, Membership.user_id == user_id))


def role_of(db: Session, user: User, project_id: int) -> str | None:
    """The user's role in a project, or None; platform administrators are 'admin' whatever their membership."""
    if user.is_admin:
        return "admin"
    return member_role(db, project_id, user.id)


def authorize(db: Session, user: User, project_id: int, permission: str) -> str:
    """Check a permission: outsiders get NotFound (the project is invisible), members without it get denied."""
    role = role_of(db, user, project_id)
    if role is None:
        raise NotFound(f"project {project_id} not found")
    if permission not in PERMISSIONS[role]:
        raise PermissionDenied(f"role {role!r} may not {permission.replace('_', ' ')} in this project")
    return role


def list_projects_for(db: Session, user: User) -> list[tuple[Project, str]]:
    """Projects the user can see, with their role."""
    if user.is_admin:
        return [(p, "admin") for p in db.scalars(select(Project).order_by(Project.slug))]
    rows = db.execute(
        select(Project, Membership.role)
        .join(Membership, Membership.project_id == Project.id)
        .where(Membership.user_id == user.id)
        .order_by(Project.slug)
    ).all()
    return [(project, role) for project, role in rows]


def structures_of(db: Session, project_id: int, *, with_codes: bool = False) -> list[Structure]:
    """The project's structures in schema order (``with_codes``: their DICOM codes loaded in the same query)."""
    query = (
        select(Structure)
        .join(LabelSchema, LabelSchema.id == Structure.schema_id)
        .where(LabelSchema.project_id == project_id)
        .order_by(Structure.position)
    )
    if with_codes:
        query = query.options(undefer(Structure.code))
    return list(db.scalars(query))


def find_structure(structures: Sequence[Structure], name: str) -> Structure:
    """Resolve a structure by name or alias; a name not in the schema is bad input."""
    for structure in structures:
        if structure.name == name or name in structure.aliases:
            return structure
    raise InvalidInput(
        f"structure {name!r} is not in the project's label schema",
        known=[s.name for s in structures],
    )


def set_membership(db: Session, project_id: int, user: User, role: str, actor: User) -> Membership:
    """Add a member or change their role."""
    if role not in PROJECT_ROLES:
        raise InvalidInput(f"unknown role {role!r}; use one of {list(PROJECT_ROLES)}")
    membership = db.scalar(select(Membership).where(Membership.project_id == project_id, Membership.user_id == user.id))
    previous = membership.role if membership else None
    if membership is None:
        membership = Membership(project_id=project_id, user_id=user.id, role=role)
        db.add(membership)
    else:
        membership.role = role
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="membership.set",
        entity_type="membership",
        entity_id=membership.id,
        project_id=project_id,
        details={"user_id": user.id, "role": role, "previous_role": previous},
    )
    return membership


def remove_membership(db: Session, project_id: int, user_id: int, actor: User) -> None:
    """Remove a member from a project."""
    membership = db.scalar(select(Membership).where(Membership.project_id == project_id, Membership.user_id == user_id))
    if membership is None:
        raise NotFound(f"user {user_id} is not a member of project {project_id}")
    db.delete(membership)
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="membership.remove",
        entity_type="membership",
        entity_id=membership.id,
        project_id=project_id,
        details={"user_id": user_id, "previous_role": membership.role},
    )


def list_members(db: Session, project_id: int) -> list[tuple[User, str]]:
    """Members of a project with their roles."""
    rows = db.execute(
        select(User, Membership.role)
        .join(Membership, Membership.user_id == User.id)
        .where(Membership.project_id == project_id)
        .order_by(User.email)
    ).all()
    return [(user, role) for user, role in rows]


ATTENTION_KEYS = {"std": float, "entropy": float, "erosion_iterations": int, "dilation_iterations": int}


def _positive_mm(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        raise InvalidInput(f"{where} must be a distance in mm in (0, 100]")
    return float(value)


def _evaluation_settings(section: object, structure_names: set[str]) -> dict[str, Any]:
    """Evaluation defaults: {"nsd_tolerance_mm": mm | {structure: mm, "default": mm}} plus the detection volume
    threshold and metric definition (backend.evaluation.settings documents those and their defaults)."""
    if not isinstance(section, dict):
        raise InvalidInput("evaluation settings take {'nsd_tolerance_mm': mm or {structure: mm}}")
    out = validate_evaluation_settings({k: v for k, v in section.items() if k != "nsd_tolerance_mm"})
    tolerance = section.get("nsd_tolerance_mm")
    if tolerance is None:
        return out
    if isinstance(tolerance, dict):
        unknown = sorted(set(tolerance) - structure_names - {"default"})
        if unknown:
            raise InvalidInput(f"evaluation.nsd_tolerance_mm names unknown structures {unknown}")
        return {
            **out,
            "nsd_tolerance_mm": {k: _positive_mm(v, f"evaluation.nsd_tolerance_mm.{k}") for k, v in tolerance.items()},
        }
    return {**out, "nsd_tolerance_mm": _positive_mm(tolerance, "evaluation.nsd_tolerance_mm")}


def update_settings(db: Session, project: Project, changes: dict[str, Any], actor: User) -> Project:
    """Merge validated changes into a project's settings (attention thresholds, workflow, evaluation, promotion)."""
    unknown = set(changes) - {"attention", "workflow", "evaluation", "promotion"}
    if unknown:
        raise InvalidInput(
            f"unknown project settings {sorted(unknown)}; known: ['attention', 'evaluation', 'promotion', 'workflow']"
        )
    settings = dict(project.settings)
    if "promotion" in changes:
        # Validated by backend.registry.service.validate_promotion_rules (the flow calls it); keys merge.
        if not isinstance(changes["promotion"], dict):
            raise InvalidInput("promotion settings must be an object")
        settings["promotion"] = {**settings.get("promotion", {}), **changes["promotion"]}
    if "evaluation" in changes:
        names = {structure.name for structure in structures_of(db, project.id)}
        settings["evaluation"] = _evaluation_settings(changes["evaluation"], names)
    if "workflow" in changes:
        # Validated by backend.workflow.service.validate_settings (the router calls it); sections replace.
        if not isinstance(changes["workflow"], dict):
            raise InvalidInput("workflow settings must be an object")
        settings["workflow"] = {**settings.get("workflow", {}), **changes["workflow"]}
    if "attention" in changes:
        attention = changes["attention"]
        if not isinstance(attention, dict) or set(attention) - set(ATTENTION_KEYS):
            raise InvalidInput(f"attention settings take {sorted(ATTENTION_KEYS)}")
        merged = dict(settings.get("attention", {}))
        for key, value in attention.items():
            cast = ATTENTION_KEYS[key]
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise InvalidInput(f"attention.{key} must be a non-negative number")
            if cast is int and int(value) != value:
                raise InvalidInput(f"attention.{key} must be a whole number")
            if key in ("std", "entropy") and value > 1:
                raise InvalidInput(f"attention.{key} is a threshold in [0, 1]")
            merged[key] = cast(value)
        settings["attention"] = merged
    project.settings = settings
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="project.settings",
        entity_type="project",
        entity_id=project.id,
        project_id=project.id,
        details={"changes": changes},
    )
    return project
