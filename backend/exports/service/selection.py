"""Export requests: which structures, which scans and which label version of each scan (checked before a job)."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput, NotFound
from backend.imaging import layouts
from backend.models import Model, ModelVersion, Prediction, Project, Scan, ScanTask
from backend.projects import service as projects
from backend.scans import service as scans

FORMATS = ("pants", "nnunet", "msd", "dicom-seg")
NNUNET_LABEL_MODES = ("paint-order", "regions")
# Where scans of the test split go: their own test folders (default), nowhere, or the training folders.
TEST_SPLIT_MODES = ("separate", "exclude", "merge")
DEFAULT_VERSION = "approved"
MAX_SCANS = 50_000
_FOLDER_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class VersionSpec:
    """Which label version of each scan to export: 'head', 'approved' or 'model' (with its model name)."""

    kind: str
    model: str | None = None

    @classmethod
    def parse(cls, text: str) -> VersionSpec:
        """Parse 'head', 'approved' or 'model:<name>'."""
        value = (text or "").strip()
        if value in ("head", "approved"):
            return cls(value)
        if value.startswith("model:") and value[len("model:") :].strip():
            return cls("model", value[len("model:") :].strip())
        raise InvalidInput(f"version must be 'head', 'approved' or 'model:<name>', got {text!r}")

    def __str__(self) -> str:
        """The spec as written in requests."""
        return f"model:{self.model}" if self.kind == "model" else self.kind


def requested_structures(db: Session, project: Project, names: Sequence[str] | None) -> list[str]:
    """Canonical names of the requested structures (aliases resolved), in schema order; all when None."""
    schema = projects.structures_of(db, project.id)
    if names is None:
        return [s.name for s in schema]
    if not names:
        raise InvalidInput("structures, when given, must name at least one structure")
    chosen = {projects.find_structure(schema, name).name for name in names}
    return [s.name for s in schema if s.name in chosen]


def _promoted_model_version(db: Session, project: Project, name: str) -> tuple[Model, ModelVersion]:
    model = db.scalar(select(Model).where(Model.project_id == project.id, Model.name == name))
    if model is None:
        raise InvalidInput(f"no model named {name!r} in this project")
    promoted = db.scalar(select(ModelVersion).where(ModelVersion.model_id == model.id, ModelVersion.is_promoted))
    if promoted is None:
        raise InvalidInput(f"model {name!r} has no promoted version, so it has no predictions to export")
    return model, promoted


def validate_request(
    db: Session,
    project: Project,
    *,
    fmt: str,
    version: str,
    structures: Sequence[str] | None,
    scan_ids: Sequence[int] | None,
    flt: scans.ScanFilter | None,
    nnunet_labels: str = "paint-order",
    dataset_id: int = 1,
    dataset_name: str | None = None,
    test_split: str = "separate",
    ignore_label: bool = True,
    folder_name: str | None = None,
) -> dict[str, Any]:
    """Check an export request and return the job parameters (scan ids resolved, structure names canonical)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; use one of {list(FORMATS)}")
    if nnunet_labels not in NNUNET_LABEL_MODES:
        raise InvalidInput(f"nnunet_labels must be one of {list(NNUNET_LABEL_MODES)}, got {nnunet_labels!r}")
    if test_split not in TEST_SPLIT_MODES:
        raise InvalidInput(f"test_split must be one of {list(TEST_SPLIT_MODES)}, got {test_split!r}")
    spec = VersionSpec.parse(version)
    names = requested_structures(db, project, structures)
    name = dataset_name or "".join(c if c.isalnum() or c in "_-" else "_" for c in project.slug)[:60] or "maskloop"
    if fmt == "nnunet":
        layouts.nnunet_folder_name(dataset_id, name)
        if folder_name is not None and folder_name != layouts.nnunet_folder_name(dataset_id, name):
            raise InvalidInput(
                "an nnU-Net dataset folder must be named DatasetXXX_Name; set dataset_id and dataset_name instead "
                "of folder_name"
            )
    if folder_name is not None and not _FOLDER_NAME_RE.match(folder_name):
        raise InvalidInput(
            f"folder_name {folder_name!r} must be 1-100 letters, digits, '.', '_' or '-' (no path), "
            "starting with a letter or digit"
        )
    if scan_ids is not None and flt is not None:
        raise InvalidInput("give scan_ids or a filter, not both")
    if scan_ids is not None:
        ids = list(dict.fromkeys(int(i) for i in scan_ids))
        if not ids:
            raise InvalidInput("scan_ids, when given, must name at least one scan")
        found = set(db.scalars(select(Scan.id).where(Scan.project_id == project.id, Scan.id.in_(ids))))
        unknown = [i for i in ids if i not in found]
        if unknown:
            raise NotFound(f"scan(s) {unknown[:20]} not found in this project")
    else:
        ids = scans.scan_ids_matching(db, project.id, flt or scans.ScanFilter())
    if not ids:
        raise InvalidInput("no scan matches the request")
    if len(ids) > MAX_SCANS:
        raise InvalidInput(f"{len(ids)} scans in one export; the limit is {MAX_SCANS}")
    chosen = choose_versions(db, project, spec, ids)
    if test_split == "exclude":
        splits = {row[0]: row[1] for row in db.execute(select(Scan.id, Scan.split).where(Scan.id.in_(ids)))}
        chosen = {
            i: (None, "test split excluded") if layouts.is_test_split(splits.get(i)) else c for i, c in chosen.items()
        }
    if not any(version_id for version_id, _ in chosen.values()):
        reasons = sorted({reason for _, reason in chosen.values()})
        raise InvalidInput(f"none of the {len(ids)} selected scans has a version to export ({spec}): {reasons[:3]}")
    return {
        "format": fmt,
        "version": str(spec),
        "structures": names,
        "scan_ids": ids,
        "nnunet_labels": nnunet_labels,
        "dataset_id": dataset_id,
        "dataset_name": name,
        "test_split": test_split,
        "ignore_label": bool(ignore_label),
        "folder_name": folder_name,
    }


def choose_versions(
    db: Session, project: Project, spec: VersionSpec, scan_ids: Sequence[int]
) -> dict[int, tuple[int | None, str]]:
    """{scan id: (version id or None, why it was chosen or skipped)}."""
    out: dict[int, tuple[int | None, str]] = {}
    ids = list(scan_ids)
    if spec.kind == "head":
        heads = {row[0]: row[1] for row in db.execute(select(Scan.id, Scan.head_version_id).where(Scan.id.in_(ids)))}
        for scan_id in ids:
            head = heads.get(scan_id)
            out[scan_id] = (head, "head") if head is not None else (None, "the scan has no label version")
    elif spec.kind == "approved":
        query = select(ScanTask.scan_id, ScanTask.approved_version_id).where(ScanTask.scan_id.in_(ids))
        approved = {row[0]: row[1] for row in db.execute(query)}
        for scan_id in ids:
            version_id = approved.get(scan_id)
            out[scan_id] = (version_id, "approved") if version_id is not None else (None, "not approved")
    else:
        assert spec.model is not None
        model, promoted = _promoted_model_version(db, project, spec.model)
        newest: dict[int, int] = {}
        predictions = (
            select(Prediction.scan_id, Prediction.label_version_id)
            .where(Prediction.model_version_id == promoted.id, Prediction.scan_id.in_(ids))
            .order_by(Prediction.id)
        )
        for row in db.execute(predictions):
            newest[row[0]] = row[1]
        if not newest:
            raise InvalidInput(
                f"model {model.name!r} (promoted version {promoted.number}) has no predictions for the selected scans"
            )
        for scan_id in ids:
            version_id = newest.get(scan_id)
            out[scan_id] = (
                (version_id, f"{model.name} v{promoted.number}")
                if version_id is not None
                else (None, f"no prediction of {model.name} v{promoted.number}")
            )
    return out


def export_options(db: Session, project: Project) -> dict[str, Any]:
    """The choices of an export request and their defaults, with the project's split and approval counts."""
    promoted = db.scalars(
        select(Model.name)
        .join(ModelVersion, ModelVersion.model_id == Model.id)
        .where(Model.project_id == project.id, ModelVersion.is_promoted)
        .order_by(Model.name)
    )
    splits = {
        str(split or ""): int(count)
        for split, count in db.execute(
            select(Scan.split, func.count(Scan.id)).where(Scan.project_id == project.id).group_by(Scan.split)
        )
    }
    approved = db.scalar(
        select(func.count())
        .select_from(ScanTask)
        .join(Scan, Scan.id == ScanTask.scan_id)
        .where(Scan.project_id == project.id, ScanTask.approved_version_id.is_not(None))
    )
    return {
        "formats": list(FORMATS),
        "versions": ["approved", "head", *(f"model:{name}" for name in promoted)],
        "default_version": DEFAULT_VERSION,
        "test_split_modes": list(TEST_SPLIT_MODES),
        "default_test_split": TEST_SPLIT_MODES[0],
        "nnunet_label_modes": list(NNUNET_LABEL_MODES),
        "ignore_label_default": True,
        "splits": dict(sorted(splits.items())),
        "approved_scans": int(approved or 0),
        "scans": sum(splits.values()),
    }
