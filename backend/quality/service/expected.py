"""Expected structures: which structures a project's QA expects in every version, so "structure missing" fires only
for those.

A lead sets them in ``settings["workflow"]["qa"]["expected_structures"]`` (names or aliases of the schema; null
restores the default). The default is the structures labelled (present and non-empty) in the head or approved
version of at least one scan of the project: what the project has shown it annotates. Not the whole schema, and
not the whole PanTS set for a PanTS project either: that set holds structures (prostate, femurs) many cohorts and
every phantom lack, whose "missing" findings would bury the real ones (a case that lacks a structure its cohort
has). The default reads the dashboard's per-structure totals (kept by triggers), so it costs one small query.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.models import DashboardTotal, Project
from backend.models.dashboard import CHOSEN_SCANS
from backend.projects import service as projects
from backend.quality.service.settings import quality_settings


def configured_expected_structures(project: Project) -> list[str] | None:
    """The structure names a lead set as expected, or None (the default applies)."""
    names = (quality_settings(project).get("qa") or {}).get("expected_structures")
    return list(names) if isinstance(names, list) else None


def labelled_structures(db: Session, project_id: int) -> set[str]:
    """Structures present and non-empty in the head or approved version of at least one scan of the project."""
    rows = db.execute(
        select(DashboardTotal.structure_id)
        .where(DashboardTotal.project_id == project_id, DashboardTotal.structure_id != CHOSEN_SCANS)
        .group_by(DashboardTotal.structure_id)
        .having(func.sum(DashboardTotal.scans) > 0)
    )
    ids = {int(structure_id) for (structure_id,) in rows.all()}
    return {s.name for s in projects.structures_of(db, project_id) if s.id in ids}


def expected_structures(db: Session, project: Project) -> set[str]:
    """The structures QA expects in every version of this project (the setting, else the labelled ones)."""
    configured = configured_expected_structures(project)
    return set(configured) if configured is not None else labelled_structures(db, project.id)


def resolve_expected_structures(db: Session, project: Project, workflow: dict[str, Any]) -> dict[str, Any]:
    """A validated `workflow` settings section with its `qa.expected_structures` resolved to schema names (aliases
    accepted; an unknown name is refused, 422)."""
    qa = dict(workflow.get("qa") or {})
    names = qa.get("expected_structures")
    if names is None:
        return workflow
    schema = projects.structures_of(db, project.id)
    qa["expected_structures"] = list(dict.fromkeys(projects.find_structure(schema, name).name for name in names))
    return {**workflow, "qa": qa}
