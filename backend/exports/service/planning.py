"""Export planning: one short database read resolving job parameters into plain data for the writer."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.exports.service.selection import FORMATS, VersionSpec, choose_versions, requested_structures
from backend.imaging import layouts
from backend.imaging.dicom_deid import Pseudonyms
from backend.labels import service as labels
from backend.models import LabelVersion, Model, ModelVersion, PacsSource, Project, Scan, Structure, User
from backend.projects import service as projects


@dataclass(frozen=True)
class StructureInfo:
    """An exported structure: name, schema label value, colour, group and containing parent."""

    name: str
    label_value: int
    color: str
    group: str
    inside: str | None
    code: dict[str, Any] | None = None  # the schema's DICOM SEG code (None: coded by name)


@dataclass
class CasePlan:
    """Everything the writer needs about one scan and its chosen version (no ORM objects)."""

    scan_id: int
    case_id: str
    split: str | None
    image_digest: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    metadata_row: dict[str, Any]
    version_id: int
    version_kind: str
    version_author: str
    model_version: str | None
    entries: dict[str, tuple[str, str | None]]
    site: str | None = None
    phase: str | None = None
    # Whether the case goes to the test folders (its split is the test split and test_split is "separate").
    test: bool = False
    # The scan's DICOM identifiers (study, series, patient; None: not from DICOM) and whether its intake already
    # replaced them by research ones (de-identified PACS intake): the de-identified DICOM SEG export reuses them.
    source_study_uid: str | None = None
    source_series_uid: str | None = None
    source_patient_id: str | None = None
    research_ids: bool = False
    # What the export calls the case (folders, file names, manifest, card, metadata): the case id, or in a
    # de-identifying project its research identifier (see `export_name`). Empty: the case id.
    export_id: str = ""

    def __post_init__(self) -> None:
        self.export_id = self.export_id or self.case_id

    def missing(self, names: list[str]) -> list[str]:
        """The exported structures this case's version does not hold (unknown, not empty)."""
        return [n for n in names if self.entries.get(n, ("missing", None))[0] != "present"]


@dataclass
class ExportPlan:
    """A resolved export: format, options, structures (schema order), paint order, cases and skipped scans."""

    format: str
    version: str
    project_slug: str
    structures: list[StructureInfo]
    paint_order: list[str]
    cases: list[CasePlan]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    nnunet_labels: str = "paint-order"
    dataset_id: int = 1
    dataset_name: str = "maskloop"
    seed: str = "maskloop"
    test_split: str = "separate"
    ignore_label: bool = True
    folder_name: str | None = None
    # The project's de-identification salt when its exports are de-identified (its PACS source's option), else None.
    deidentify_salt: str | None = None


# A case id that de-identified PACS intake made of research identifiers: research patient id _ series digest.
_RESEARCH_CASE_ID = re.compile(r"R[0-9A-F]{12}_[0-9a-f]{8}")


def export_name(scan: Scan, salt: str | None) -> str:
    """What an export calls a scan: its case id; in a de-identifying project (`salt`) its research identifier,
    never the case id someone gave it (often a name or a hospital number): the case id de-identified intake made
    of research identifiers as it is, else the project's research id of the case id (`Pseudonyms.patient`: the
    patient id the scan's de-identified DICOM export carries when it has no DICOM original)."""
    if salt is None:
        return scan.case_id
    if "deidentified" in (scan.raw_metadata or {}) and _RESEARCH_CASE_ID.fullmatch(scan.case_id):
        return scan.case_id
    return Pseudonyms(salt).patient(scan.case_id)


def _metadata_row(scan: Scan, name: str) -> dict[str, Any]:
    """The PanTS metadata row of a scan: its raw sheet values where it had them, else the normalised fields."""
    raw = {" ".join(str(k).lower().split()): v for k, v in (scan.raw_metadata or {}).items()}
    derived: dict[str, Any] = {
        "shape": "(" + ", ".join(str(int(v)) for v in scan.shape) + ")",
        "spacing": "(" + ", ".join(f"{float(v):g}" for v in scan.spacing) + ")",
        "ct phase": (scan.phase or "").replace("-", " ").title().replace("Non Contrast", "Non-contrast"),
        "sex": scan.sex or "",
        "age": scan.age if scan.age is not None else "",
        "manufacturer": scan.manufacturer or "",
        "manufacturer model": scan.manufacturer_model or "",
        "site": scan.site or "",
        "tumor?": "" if scan.tumor is None else int(scan.tumor),
        "number of pancreatic lesion instances": "" if scan.lesion_instances is None else scan.lesion_instances,
    }
    row: dict[str, Any] = {}
    for column in layouts.EXPORT_METADATA_COLUMNS[1 : len(layouts.EXPORT_METADATA_COLUMNS) - 3]:
        key = " ".join(column.lower().split())
        value = raw.get(key)
        row[column] = value if value not in (None, "") else derived.get(column, "")
    row["BDMAP ID"] = name
    return row


def _author(db: Session, version: LabelVersion) -> tuple[str, str | None]:
    """A readable author ('user:<email>', 'model:<name> v<n>', 'import') and the model version text."""
    if version.author_model_version_id is not None:
        model_version = db.get(ModelVersion, version.author_model_version_id)
        model = db.get(Model, model_version.model_id) if model_version else None
        text = f"{model.name} v{model_version.number}" if model and model_version else "unknown model"
        return f"model:{text}", text
    if version.author_user_id is not None:
        user = db.get(User, version.author_user_id)
        return f"user:{user.email if user else version.author_user_id}", None
    return version.kind, None


def plan_export(db: Session, project: Project, params: dict[str, Any], *, seed: str = "maskloop") -> ExportPlan:
    """Resolve job parameters into a plan: one chosen version per scan, skipped scans with their reason."""
    fmt = str(params["format"])
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}")
    spec = VersionSpec.parse(str(params["version"]))
    schema = projects.structures_of(db, project.id, with_codes=True)
    names = requested_structures(db, project, params.get("structures"))
    selected: list[Structure] = [s for s in schema if s.name in set(names)]
    order = [s.name for s in labels.default_paint_order(selected)]
    ids = [int(i) for i in params["scan_ids"]]
    rows = {s.id: s for s in db.scalars(select(Scan).where(Scan.project_id == project.id, Scan.id.in_(ids)))}
    chosen = choose_versions(db, project, spec, [i for i in ids if i in rows])
    test_split = str(params.get("test_split") or "separate")
    by_id = {s.id: s.name for s in schema}
    plan = ExportPlan(
        format=fmt,
        version=str(spec),
        project_slug=project.slug,
        structures=[StructureInfo(s.name, s.label_value, s.color, s.group, s.inside, s.code) for s in selected],
        paint_order=order,
        cases=[],
        nnunet_labels=str(params.get("nnunet_labels", "paint-order")),
        dataset_id=int(params.get("dataset_id", 1)),
        dataset_name=str(params.get("dataset_name") or project.slug),
        seed=seed,
        test_split=test_split,
        ignore_label=bool(params.get("ignore_label", True)),
        folder_name=params.get("folder_name") or None,
    )
    source = db.scalar(select(PacsSource).where(PacsSource.project_id == project.id))
    if source is not None and source.deidentify:
        plan.deidentify_salt = source.salt
    for scan_id in ids:
        scan = rows.get(scan_id)
        if scan is None:
            plan.skipped.append({"scan_id": scan_id, "case_id": None, "reason": "the scan was deleted"})
            continue
        version_id, reason = chosen[scan_id]
        is_test = layouts.is_test_split(scan.split)
        if version_id is not None and is_test and test_split == "exclude":
            version_id, reason = None, "test split excluded"
        if version_id is None:
            plan.skipped.append(
                {"scan_id": scan_id, "case_id": export_name(scan, plan.deidentify_salt), "reason": reason}
            )
            continue
        version = labels.get_version(db, version_id)
        author, model_text = _author(db, version)
        entries = {
            by_id[e.structure_id]: (e.status, e.manifest_digest) for e in version.structures if e.structure_id in by_id
        }
        name = export_name(scan, plan.deidentify_salt)
        plan.cases.append(
            CasePlan(
                scan_id=scan.id,
                case_id=scan.case_id,
                split=scan.split,
                image_digest=scan.image_digest,
                shape=(int(scan.shape[0]), int(scan.shape[1]), int(scan.shape[2])),
                affine=np.asarray(scan.affine, dtype=np.float64),
                metadata_row=_metadata_row(scan, name),
                version_id=version.id,
                version_kind=version.kind,
                version_author=author,
                model_version=model_text,
                entries=entries,
                site=scan.site,
                phase=scan.phase,
                test=is_test and test_split == "separate",
                source_study_uid=scan.source_study_uid,
                source_series_uid=scan.source_series_uid,
                source_patient_id=str((scan.raw_metadata or {}).get("dicom PatientID") or "") or None,
                research_ids="deidentified" in (scan.raw_metadata or {}),
                export_id=name,
            )
        )
    return plan
