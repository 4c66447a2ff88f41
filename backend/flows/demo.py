"""The demo set-up behind `maskloop demo-data`: accounts, the demo project, synthetic phantom scans, bundled models,
and the attention maps over its two pre-annotations (classical + phantom UNet), so the overlay and priorities work.

Idempotent: a rerun finds the accounts, project, members, scans and models already there and adds what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.core.blobstore import BlobStore
from backend.core.config import Settings
from backend.core.errors import DomainError, InvalidInput
from backend.imaging.phantom import write_pants_dataset
from backend.interactive import service as interactive
from backend.jobs import service as jobs
from backend.models import Job, Project, User
from backend.projects import service as projects
from backend.registry import service as registry
from backend.scans import service as scans

DEMO_PROJECT = "demo"
DEMO_PASSWORD = "maskloop-demo"
DEMO_USERS = (
    ("admin@maskloop.local", "Demo Admin", "admin"),
    ("lead@maskloop.local", "Demo Lead", "lead"),
    ("annotator@maskloop.local", "Demo Annotator", "annotator"),
    ("reviewer@maskloop.local", "Demo Reviewer", "reviewer"),
)
DEMO_ADMIN = DEMO_USERS[0][0]

# A path only: the backend never imports the worker, it registers the weights file the worker package ships.
PHANTOM_WEIGHTS = Path(__file__).resolve().parents[2] / "worker" / "models" / "weights"
PHANTOM_MODEL_NAME = "phantom-unet"
INTERACTIVE_MODEL_NAME = interactive.DEFAULT_MODEL_NAME


@dataclass
class DemoSetup:
    """What `set_up_demo` found or made: the project, the import report and the registered model names."""

    project: Project
    users: dict[str, User]
    report: scans.DatasetImportReport
    models: list[str] = field(default_factory=list)


def dataset_dir(settings: Settings) -> Path:
    """Where the synthetic demo dataset lives (PanTS layout)."""
    return settings.data_dir / "demo-dataset"


def dataset_written(dataset: Path) -> bool:
    """Whether the synthetic demo dataset was written already (it is never rewritten)."""
    return (dataset / "ImageTr").exists()


def write_dataset(dataset: Path, cases: int, size: int) -> None:
    """Write `cases` synthetic phantoms of `size` in-plane voxels; the second case lacks its gall bladder."""
    depth = max(32, size // 2)
    write_pants_dataset(
        dataset,
        cases,
        shape=(size, size, depth),
        # Same physical extent whatever the voxel count: 320 × 320 × 320 mm.
        spacing=(2.5 * 128 / size, 2.5 * 128 / size, 5.0 * 64 / depth),
        seed=7,
        missing_structure={1: "gall_bladder"},
    )


def _demo_users(db: Session) -> dict[str, User]:
    users = {}
    for email, display, role in DEMO_USERS:
        try:
            users[role] = auth.get_user_by_email(db, email)
        except DomainError:
            users[role] = auth.create_user(db, email, DEMO_PASSWORD, display, is_admin=role == "admin")
    return users


def set_up_demo(db: Session, blobs: BlobStore, dataset: Path) -> DemoSetup:
    """Create (or complete) the demo accounts, project, memberships, scans from `dataset` and bundled models."""
    users = _demo_users(db)
    try:
        project = projects.get_project_by_slug(db, DEMO_PROJECT)
    except DomainError:
        project = projects.create_project(db, DEMO_PROJECT, "Demo: synthetic pancreas phantoms", users["admin"])
    for role in ("lead", "annotator", "reviewer"):
        if projects.role_of(db, users[role], project.id) is None:
            projects.set_membership(db, project.id, users[role], role, users["admin"])
    # One transaction per case (the first also holds the accounts and project), so a rerun resumes.
    report = scans.import_pants_dataset(db, blobs, project, users["admin"], dataset, commit=db.commit)
    models = _register_builtin_models(db, blobs, project.id)
    db.commit()
    return DemoSetup(project=project, users=users, report=report, models=models)


# The bundled models a lead may register in any project (`maskloop register-model --bundled NAME`).
BUNDLED_MODELS = {
    PHANTOM_MODEL_NAME: ("phantom_unet", "maskloop train --phantom"),
    INTERACTIVE_MODEL_NAME: ("interactive_unet", "maskloop train --interactive --phantom"),
}
# The demo's two pre-annotators: their predictions feed the attention maps (overlay and priorities).
DEMO_PREANNOTATORS = (registry.CLASSICAL_MODEL_NAME, PHANTOM_MODEL_NAME)


def register_bundled_model(db: Session, blobs: BlobStore, project: Project, name: str) -> bool:
    """Register and promote a bundled model in a project (idempotent; False when its weights were not built)."""
    if name not in BUNDLED_MODELS:
        raise InvalidInput(f"no bundled model named {name!r}; bundled: {sorted(BUNDLED_MODELS)}")
    stem, command = BUNDLED_MODELS[name]
    registered = _register_bundled(db, blobs, project.id, name, stem, command)
    db.commit()
    return registered


def launch_demo_attention(db: Session, project: Project, actor: User) -> list[Job]:
    """Queue attention maps for every scan of the project over the newest predictions of its models.

    Launched right after the demo's pre-annotations: an attention job that finds the scan's pre-annotation jobs
    still queued or running waits for them (worker/pipelines/attention.py), so the overlay and the priorities work
    out of the box once the worker has run them all.
    """
    launched = jobs.launch_attention(
        db,
        project,
        actor,
        scan_ids=jobs.select_scans(db, project, scan_ids=None, flt=None, all_scans=True),
        model_version_ids=None,
    )
    db.commit()
    return launched


def _register_builtin_models(db: Session, blobs: BlobStore, project_id: int) -> list[str]:
    """Register the classical pre-annotator and the bundled models (those whose weights exist) in a project: the
    phantom UNet (pre-annotation) and the click-guided model (AI refine), each promoted."""
    registry.ensure_classical_model(db, blobs, project_id)
    registered = [registry.CLASSICAL_MODEL_NAME]
    for name, (stem, command) in BUNDLED_MODELS.items():
        if _register_bundled(db, blobs, project_id, name, stem, command):
            registered.append(name)
    return registered


def _bundled_validation(meta: dict[str, Any]) -> dict[str, Any]:
    """A sidecar's held-out figures as a version's validation (the UNet's Dice; the click model's clicker curves)."""
    if "validation" in meta:
        return dict(meta["validation"])
    return {"mean_dice": meta.get("mean_val_dice"), "per_structure": meta.get("val_dice", {})}


def _register_bundled(db: Session, blobs: BlobStore, project_id: int, name: str, stem: str, command: str) -> bool:
    """Register and promote the shipped weights ``stem``.pt (+ .json sidecar) as model ``name``, once."""
    sidecar, weights = PHANTOM_WEIGHTS / f"{stem}.json", PHANTOM_WEIGHTS / f"{stem}.pt"
    if not (sidecar.exists() and weights.exists()):
        return False
    try:
        registry.get_model_by_name(db, project_id, name)
        return True
    except DomainError:
        pass
    meta = json.loads(sidecar.read_text())
    # A model claims only the structures this project's schema has (a click model knows more than most schemas).
    known = {s.name for s in projects.structures_of(db, project_id)}
    model = registry.create_model(
        db,
        project_id,
        name=name,
        architecture=meta["architecture"],
        structures=[s for s in meta["structures"] if s in known],
        config=meta.get("config", {}),
        preprocessing=meta.get("preprocessing", {}),
        inference=meta.get("inference", {}),
    )
    version = registry.add_version(
        db,
        blobs,
        model,
        weights=weights.read_bytes(),
        provenance={"trained_on": "synthetic phantoms", "command": command},
        validation=_bundled_validation(meta),
    )
    registry.promote(db, version, None, checked=False, reason=f"bundled model ({command})")
    return True
