"""Exports: choose one label version per scan and write PanTS, nnU-Net v2, MSD or DICOM SEG datasets.

`validate_request` checks a request and resolves its scans (bad input is refused before a job exists);
`plan_export` reads everything the writer needs from the database in one short session (versions chosen per
scan, structure manifests, metadata); `write_export` then writes the folder with no database at all (blobs only)
and a `manifest.json`; `archive_folder` packs it as .tar.gz for the blob store. The worker pipeline and the
`maskloop export` command both use these.

Version choice per scan: `head` (the scan's head version), `approved` (ScanTask.approved_version_id; scans
without one are skipped and listed in the manifest), `model:<name>` (the label version of the newest prediction
of that model's promoted version; scans it never predicted are skipped).
"""

from __future__ import annotations

import gzip
import tarfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.imaging import chunks, dicom_seg, layouts, nifti
from backend.labels import service as labels
from backend.models import Job, LabelVersion, Model, ModelVersion, Prediction, Project, Scan, ScanTask, Structure, User
from backend.projects import service as projects
from backend.scans import service as scans

FORMATS = ("pants", "nnunet", "msd", "dicom-seg")
NNUNET_LABEL_MODES = ("paint-order", "regions")
MANIFEST_NAME = "manifest.json"
MAX_SCANS = 50_000
Progress = Callable[[int, int, str], None]


def maskloop_version() -> str:
    """The installed maskloop version (pyproject's when not installed as a distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maskloop")
    except PackageNotFoundError:
        return "0.1.0"


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


@dataclass(frozen=True)
class StructureInfo:
    """An exported structure: name, schema label value, colour, group and containing parent."""

    name: str
    label_value: int
    color: str
    group: str
    inside: str | None


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


# --- request validation -----------------------------------------------------------------------------------


def _structure_names(db: Session, project: Project, names: Sequence[str] | None) -> list[str]:
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
) -> dict[str, Any]:
    """Check an export request and return the job parameters (scan ids resolved, structure names canonical)."""
    if fmt not in FORMATS:
        raise InvalidInput(f"unknown export format {fmt!r}; use one of {list(FORMATS)}")
    if nnunet_labels not in NNUNET_LABEL_MODES:
        raise InvalidInput(f"nnunet_labels must be one of {list(NNUNET_LABEL_MODES)}, got {nnunet_labels!r}")
    spec = VersionSpec.parse(version)
    names = _structure_names(db, project, structures)
    name = dataset_name or "".join(c if c.isalnum() or c in "_-" else "_" for c in project.slug)[:60] or "maskloop"
    if fmt == "nnunet":
        layouts.nnunet_folder_name(dataset_id, name)
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
    chosen = _choose_versions(db, project, spec, ids)
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
    }


def _choose_versions(
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


# --- planning ---------------------------------------------------------------------------------------------


def _metadata_row(scan: Scan) -> dict[str, Any]:
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
    row["BDMAP ID"] = scan.case_id
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
    schema = projects.structures_of(db, project.id)
    names = _structure_names(db, project, params.get("structures"))
    selected: list[Structure] = [s for s in schema if s.name in set(names)]
    order = [s.name for s in labels.default_paint_order(selected)]
    ids = [int(i) for i in params["scan_ids"]]
    rows = {s.id: s for s in db.scalars(select(Scan).where(Scan.project_id == project.id, Scan.id.in_(ids)))}
    chosen = _choose_versions(db, project, spec, [i for i in ids if i in rows])
    by_id = {s.id: s.name for s in schema}
    plan = ExportPlan(
        format=fmt,
        version=str(spec),
        project_slug=project.slug,
        structures=[StructureInfo(s.name, s.label_value, s.color, s.group, s.inside) for s in selected],
        paint_order=order,
        cases=[],
        nnunet_labels=str(params.get("nnunet_labels", "paint-order")),
        dataset_id=int(params.get("dataset_id", 1)),
        dataset_name=str(params.get("dataset_name") or project.slug),
        seed=seed,
    )
    for scan_id in ids:
        scan = rows.get(scan_id)
        if scan is None:
            plan.skipped.append({"scan_id": scan_id, "case_id": None, "reason": "the scan was deleted"})
            continue
        version_id, reason = chosen[scan_id]
        if version_id is None:
            plan.skipped.append({"scan_id": scan_id, "case_id": scan.case_id, "reason": reason})
            continue
        version = labels.get_version(db, version_id)
        author, model_text = _author(db, version)
        entries = {
            by_id[e.structure_id]: (e.status, e.manifest_digest) for e in version.structures if e.structure_id in by_id
        }
        plan.cases.append(
            CasePlan(
                scan_id=scan.id,
                case_id=scan.case_id,
                split=scan.split,
                image_digest=scan.image_digest,
                shape=(int(scan.shape[0]), int(scan.shape[1]), int(scan.shape[2])),
                affine=np.asarray(scan.affine, dtype=np.float64),
                metadata_row=_metadata_row(scan),
                version_id=version.id,
                version_kind=version.kind,
                version_author=author,
                model_version=model_text,
                entries=entries,
            )
        )
    return plan


# --- writing ----------------------------------------------------------------------------------------------


def _masks(blobs: BlobStore, case: CasePlan, names: Sequence[str]) -> dict[str, np.ndarray | None]:
    """The case's masks of the exported structures; None for a structure missing in the version."""
    out: dict[str, np.ndarray | None] = {}
    for name in names:
        status, digest = case.entries.get(name, ("missing", None))
        if status != "present" or not digest:
            out[name] = None
            continue
        manifest = labels.load_manifest(blobs, digest)
        out[name] = chunks.assemble_mask(manifest, blobs.get_bytes)
    return out


def _pants_specs(plan: ExportPlan) -> list[layouts.LabelSpec]:
    values = {s.name: s.label_value for s in plan.structures}
    return [layouts.LabelSpec(name, values[name]) for name in plan.paint_order]


def _consecutive_specs(plan: ExportPlan) -> tuple[list[layouts.LabelSpec], list[layouts.LabelSpec]]:
    """nnU-Net/MSD labels 1..n in schema order, and the same labels in paint order."""
    specs = layouts.consecutive_labels([s.name for s in plan.structures])
    by_name = {spec.name: spec for spec in specs}
    return specs, [by_name[name] for name in plan.paint_order]


def _root_name(plan: ExportPlan) -> str:
    if plan.format == "nnunet":
        return layouts.nnunet_folder_name(plan.dataset_id, plan.dataset_name)
    return f"{plan.project_slug}-{plan.format}"


def write_export(
    blobs: BlobStore, plan: ExportPlan, out_dir: Path, *, progress: Progress | None = None
) -> dict[str, Any]:
    """Write the export under out_dir/<dataset folder> with a manifest.json; returns the manifest."""
    root = out_dir / _root_name(plan)
    root.mkdir(parents=True, exist_ok=True)
    names = [s.name for s in plan.structures]
    pants_order = _pants_specs(plan)
    consecutive, consecutive_order = _consecutive_specs(plan)
    encoder = layouts.RegionEncoder(plan.paint_order) if plan.nnunet_labels == "regions" else None
    exported: list[dict[str, Any]] = []
    metadata_rows: list[dict[str, Any]] = []
    total = len(plan.cases)
    for index, case in enumerate(plan.cases):
        image = blobs.get_bytes(case.image_digest)
        masks = _masks(blobs, case, names)
        files: list[Path]
        if plan.format == "pants":
            combined = layouts.paint_combined(masks, pants_order, case.shape)
            files = layouts.write_pants_case(
                root,
                case.case_id,
                split=case.split,
                image_nii_gz=image,
                affine=case.affine,
                masks=masks,
                combined=combined,
            )
            metadata_rows.append(
                {
                    **case.metadata_row,
                    "label_version_id": case.version_id,
                    "version_kind": case.version_kind,
                    "version_author": case.version_author,
                }
            )
        elif plan.format in ("nnunet", "msd"):
            if encoder is not None:
                label_map = encoder.encode(masks, case.shape)
            else:
                label_map = layouts.paint_combined(masks, consecutive_order, case.shape)
            writer = layouts.write_nnunet_case if plan.format == "nnunet" else layouts.write_msd_case
            files = writer(root, case.case_id, image_nii_gz=image, affine=case.affine, label_map=label_map)
        else:
            files = _write_dicom_case(root, plan, case, image, masks)
        exported.append(
            {
                "scan_id": case.scan_id,
                "case_id": case.case_id,
                "label_version_id": case.version_id,
                "version_kind": case.version_kind,
                "version_author": case.version_author,
                "missing_structures": [n for n in names if masks[n] is None],
                "files": [str(p.relative_to(root)) for p in files],
            }
        )
        if progress is not None:
            progress(index + 1, total, case.case_id)
    extra: dict[str, Any] = {}
    if plan.format == "pants":
        layouts.write_metadata_sheet(root, metadata_rows, layouts.EXPORT_METADATA_COLUMNS)
    elif plan.format == "nnunet":
        description = f"maskloop export of project {plan.project_slug}, version {plan.version}"
        if encoder is not None:
            regions = encoder.regions()
            dataset = layouts.nnunet_dataset_json(
                regions,
                len(plan.cases),
                name=plan.dataset_name,
                description=description,
                regions_class_order=list(range(1, len(regions) + 1)),
            )
            extra["nnunet_regions"] = regions
        else:
            dataset = layouts.nnunet_dataset_json(
                {spec.name: spec.value for spec in consecutive},
                len(plan.cases),
                name=plan.dataset_name,
                description=description,
            )
        layouts.write_json(root / "dataset.json", dataset)
    elif plan.format == "msd":
        dataset = layouts.msd_dataset_json(
            consecutive,
            [c.case_id for c in plan.cases],
            name=plan.dataset_name,
            description=f"maskloop export of project {plan.project_slug}, version {plan.version}",
        )
        layouts.write_json(root / "dataset.json", dataset)
    manifest = _manifest(plan, exported, consecutive, extra)
    layouts.write_json(root / MANIFEST_NAME, manifest)
    return manifest


def _manifest(
    plan: ExportPlan, exported: list[dict[str, Any]], consecutive: list[layouts.LabelSpec], extra: dict[str, Any]
) -> dict[str, Any]:
    """What the export holds and how it was made."""
    if plan.format in ("nnunet", "msd") and plan.nnunet_labels == "paint-order":
        label_values = {spec.name: spec.value for spec in consecutive}
    elif plan.format == "pants":
        label_values = {s.name: s.label_value for s in plan.structures}
    else:
        label_values = {}
    paint_note = {
        "pants": "combined_labels.nii.gz paints structures in paint_order (schema label values); later ones win",
        "nnunet": (
            "labelsTr paint structures in paint_order with label_values; later ones win"
            if plan.nnunet_labels == "paint-order"
            else "region-based: each class is one combination of structures; labels map structures to classes"
        ),
        "msd": "labelsTr paint structures in paint_order with label_values; later ones win",
        "dicom-seg": "not flattened: one SEG segment per structure, overlaps kept",
    }[plan.format]
    return {
        "format": plan.format,
        "maskloop_version": maskloop_version(),
        "created_at": datetime.now(UTC).isoformat(),
        "project": plan.project_slug,
        "version": plan.version,
        "structures": [
            {"name": s.name, "label_value": s.label_value, "color": s.color, "group": s.group, "inside": s.inside}
            for s in plan.structures
        ],
        "paint_order": plan.paint_order,
        "label_values": label_values,
        "paint_order_note": paint_note,
        "nnunet_labels": plan.nnunet_labels if plan.format == "nnunet" else None,
        "scans": exported,
        "skipped": plan.skipped,
        **extra,
    }


def _write_dicom_case(
    root: Path, plan: ExportPlan, case: CasePlan, image: bytes, masks: dict[str, np.ndarray | None]
) -> list[Path]:
    """<case>/CT/<nnnn>.dcm (the scan as a DICOM series) and <case>/SEG/seg.dcm (one segment per structure)."""
    volume = nifti.load_nifti_bytes(image, f"{case.case_id}.nii.gz")
    seed = f"{plan.seed}:{case.scan_id}:{case.version_id}"
    ids = dicom_seg.SeriesIds.derive(case.case_id, seed)
    series = dicom_seg.ct_series(volume.data, volume.geometry.affine, ids, description=f"{case.case_id} CT")
    files = dicom_seg.write_datasets(series, root / case.case_id / "CT")
    infos = {s.name: s for s in plan.structures}
    segments = [
        (dicom_seg.SegmentSpec(name, infos[name].color, infos[name].group == "lesion"), mask)
        for name, mask in masks.items()
        if mask is not None
    ]
    if not segments:
        return files
    seg = dicom_seg.segmentation(
        series,
        segments,
        manual=case.version_kind in ("human", "import", "fusion"),
        algorithm_name=(case.model_version or "model").rsplit(" ", 1)[0],
        algorithm_version=(case.model_version or "v1").rsplit(" ", 1)[-1],
        series_uid=dicom_seg.uid(seed, "seg-series"),
        sop_uid=dicom_seg.uid(seed, "seg"),
        series_description=f"{case.case_id} labels v{case.version_id}",
    )
    path = root / case.case_id / "SEG" / "seg.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_seg.seg_to_bytes(seg))
    return [*files, path]


def archive_folder(folder: Path, target: Path) -> int:
    """Pack a folder as .tar.gz (the folder name as its top level, sorted, fixed mtimes); returns the file count."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    with gzip.GzipFile(target, "wb", compresslevel=1, mtime=0) as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for path in files:
            info = tar.gettarinfo(str(path), arcname=f"{folder.name}/{path.relative_to(folder).as_posix()}")
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0
            with path.open("rb") as handle:
                tar.addfile(info, handle)
    return len(files)


def export_summary(manifest: dict[str, Any]) -> dict[str, Any]:
    """The short form of a manifest kept in job.result."""
    return {
        "format": manifest["format"],
        "version": manifest["version"],
        "scans_exported": len(manifest["scans"]),
        "scans_skipped": len(manifest["skipped"]),
        "skipped": manifest["skipped"][:100],
        "structures": [s["name"] for s in manifest["structures"]],
        "paint_order": manifest["paint_order"],
    }


def download_of(job: Job) -> tuple[str, str]:
    """The archive digest and file name of a finished export job (409 while it is not finished)."""
    if job.kind != "export":
        raise NotFound(f"job {job.id} is not an export")
    if job.status != "succeeded":
        detail = f": {job.error}" if job.status == "failed" and job.error else ""
        raise Conflict(f"export job {job.id} is {job.status}; the archive is not ready{detail}", status=job.status)
    digest = job.result.get("archive_digest")
    if not isinstance(digest, str):
        raise NotFound(f"export job {job.id} has no archive")
    return digest, str(job.result.get("archive_name") or f"export-{job.id}.tar.gz")
