"""The demo set-up behind `maskloop demo-data`: accounts, the demo project, synthetic phantom scans, bundled models.

Idempotent: a rerun finds the accounts, project, members, scans and models already there and adds what is missing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.orm import Session

from backend.auth import service as auth
from backend.core.blobstore import BlobStore
from backend.core.config import Settings
from backend.core.errors import DomainError
from backend.imaging.phantom import write_pants_dataset
from backend.models import Project, User
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


def _register_builtin_models(db: Session, blobs: BlobStore, project_id: int) -> list[str]:
    """Register the classical pre-annotator and the bundled phantom UNet (if its weights exist) in a project."""
    registry.ensure_classical_model(db, blobs, project_id)
    registered = [registry.CLASSICAL_MODEL_NAME]
    sidecar = PHANTOM_WEIGHTS / "phantom_unet.json"
    weights = PHANTOM_WEIGHTS / "phantom_unet.pt"
    if sidecar.exists() and weights.exists():
        meta = json.loads(sidecar.read_text())
        try:
            registry.get_model_by_name(db, project_id, PHANTOM_MODEL_NAME)
        except DomainError:
            model = registry.create_model(
                db,
                project_id,
                name=PHANTOM_MODEL_NAME,
                architecture=meta["architecture"],
                structures=meta["structures"],
                config=meta.get("config", {}),
                preprocessing=meta.get("preprocessing", {}),
                inference=meta.get("inference", {}),
            )
            version = registry.add_version(
                db,
                blobs,
                model,
                weights=weights.read_bytes(),
                provenance={"trained_on": "synthetic phantoms", "command": "maskloop train --phantom"},
                validation={"mean_dice": meta.get("mean_val_dice"), "per_structure": meta.get("val_dice", {})},
            )
            registry.promote(db, version, None, checked=False)
        registered.append(PHANTOM_MODEL_NAME)
    return registered
