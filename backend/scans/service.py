"""Scans: import (NIfTI, DICOM series, PanTS-layout datasets), metadata, listing and volume lookup."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core import decode_limits
from backend.core.blobstore import BlobStore
from backend.core.db import get_or_404
from backend.core.errors import Conflict, DomainError, InvalidInput
from backend.core.filenames import clean_file_name
from backend.imaging import chunks, dicom, nifti, nifti_masks, pants
from backend.imaging.nifti import MaskValues
from backend.labels import service as labels
from backend.models import LabelVersion, Project, Scan, User
from backend.projects import service as projects
from backend.quality import service as quality
from backend.workflow import service as workflow

_CASE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$")
_NIFTI_SUFFIXES = (".nii.gz", ".nii")


def case_id_from_filename(filename: str) -> str:
    """The case id implied by an uploaded file name (its base name without .nii/.nii.gz)."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    for suffix in _NIFTI_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[: -len(suffix)]
    return base


def check_case_id(case_id: str) -> str:
    """Refuse case ids that could escape a folder or break exports (path traversal, separators)."""
    if not _CASE_ID_RE.match(case_id) or ".." in case_id:
        raise InvalidInput(
            f"case id {case_id!r} may only hold letters, digits, '.', '_' and '-' (no '..' or '/'), "
            "and must start with a letter or digit"
        )
    return case_id


@dataclass(frozen=True)
class ScanFilter:
    """Filters of the scan list (all optional)."""

    site: str | None = None
    phase: str | None = None
    sex: str | None = None
    tumor: bool | None = None
    manufacturer: str | None = None
    split: str | None = None
    age_min: int | None = None
    age_max: int | None = None
    search: str | None = None


def _metadata_fields(meta: pants.NormalisedMetadata | None) -> dict[str, Any]:
    """Scan columns filled from normalised metadata."""
    if meta is None:
        return {}
    return {
        "site": meta.site,
        "phase": meta.phase,
        "sex": meta.sex,
        "age": meta.age,
        "manufacturer": meta.manufacturer,
        "manufacturer_model": meta.manufacturer_model,
        "tumor": meta.tumor,
        "lesion_instances": meta.lesion_instances,
        "header_spacing": list(meta.header_spacing) if meta.header_spacing else None,
        "slice_thickness": meta.slice_thickness,
    }


def _ensure_new_case(db: Session, project: Project, case_id: str) -> None:
    if db.scalar(select(Scan.id).where(Scan.project_id == project.id, Scan.case_id == case_id)) is not None:
        raise Conflict(f"case {case_id!r} already exists in project {project.slug!r}", case_id=case_id)


def _create_scan(
    db: Session,
    project: Project,
    actor: User | None,
    *,
    case_id: str,
    image_digest: str,
    image_bytes: int,
    volume: nifti.LoadedVolume,
    source_format: str,
    source_name: str,
    split: str | None,
    raw_metadata: Mapping[str, str] | None,
    slice_thickness: float | None = None,
) -> Scan:
    geometry = volume.geometry
    meta = pants.normalise_metadata(dict(raw_metadata)) if raw_metadata else None
    fields = _metadata_fields(meta)
    thickness = fields.pop("slice_thickness", None) or slice_thickness or volume.slice_thickness
    scan = Scan(
        project_id=project.id,
        case_id=case_id,
        split=split,
        source_format=source_format,
        source_name=source_name[:500],
        image_digest=image_digest,
        image_bytes=image_bytes,
        source_dtype=volume.source_dtype,
        shape=list(geometry.shape),
        spacing=[float(s) for s in geometry.spacing],
        affine=[[float(v) for v in row] for row in geometry.affine],
        orientation=geometry.orientation,
        slice_count=int(geometry.shape[2]),
        voxel_volume_mm3=float(abs(np.linalg.det(geometry.affine[:3, :3]))),
        slice_thickness=thickness,
        raw_metadata=dict(raw_metadata or {}),
        created_by=actor.id if actor else None,
        **fields,
    )
    db.add(scan)
    db.flush()
    workflow.ensure_task(db, scan)
    audit.record(
        db,
        actor_user_id=actor.id if actor else None,
        action="scan.import",
        entity_type="scan",
        entity_id=scan.id,
        project_id=project.id,
        scan_id=scan.id,
        details={
            "case_id": case_id,
            "format": source_format,
            "source": source_name[:500],
            "shape": list(geometry.shape),
            "orientation": geometry.orientation,
        },
    )
    return scan


def geometry_of(scan: Scan) -> nifti.Geometry:
    """The stored geometry of a scan."""
    return nifti.Geometry.from_affine(tuple(scan.shape), np.asarray(scan.affine, dtype=np.float64))


def import_nifti(
    db: Session,
    blobs: BlobStore,
    project: Project,
    actor: User | None,
    data: bytes,
    filename: str,
    *,
    case_id: str | None = None,
    split: str | None = None,
    raw_metadata: Mapping[str, str] | None = None,
) -> Scan:
    """Import one NIfTI volume; the stored file keeps the original header (geometry, scaling) byte for byte."""
    case_id = check_case_id(case_id or case_id_from_filename(filename))
    _ensure_new_case(db, project, case_id)
    # Checked from the header before anything is decompressed: the scan's voxel count and decoded size.
    limits = decode_limits.current()
    volume = nifti.load_nifti_bytes(
        data, filename, max_bytes=limits.max_decoded_bytes, max_voxels=limits.max_scan_voxels
    )
    stored = nifti.ensure_gzip(data)
    digest = blobs.put_bytes(stored)
    return _create_scan(
        db,
        project,
        actor,
        case_id=case_id,
        image_digest=digest,
        image_bytes=len(stored),
        volume=volume,
        source_format="nifti",
        source_name=clean_file_name(filename),  # the client's name: base name only, no '..' or control chars
        split=split,
        raw_metadata=raw_metadata,
    )


def import_dicom(
    db: Session,
    blobs: BlobStore,
    project: Project,
    actor: User | None,
    files: Sequence[Path] | Path,
    *,
    case_id: str,
    split: str | None = None,
    raw_metadata: Mapping[str, str] | None = None,
) -> Scan:
    """Import one DICOM series (files or a folder) as a RAS NIfTI volume in Hounsfield units."""
    check_case_id(case_id)
    _ensure_new_case(db, project, case_id)
    volume = dicom.load_dicom_series(files)
    stored = nifti.to_nifti_gz(volume.data, volume.geometry.affine)
    digest = blobs.put_bytes(stored)
    source = str(files) if isinstance(files, Path) else f"{len(files)} DICOM files"
    scan = _create_scan(
        db,
        project,
        actor,
        case_id=case_id,
        image_digest=digest,
        image_bytes=len(stored),
        volume=volume,
        source_format="dicom",
        source_name=source,
        split=split,
        raw_metadata=raw_metadata,
        slice_thickness=volume.slice_thickness,
    )
    # The source identifiers stay with the scan: a DICOM SEG of this series finds its scan by them.
    scan.source_series_uid = volume.series_uid[:64] or None
    scan.source_study_uid = volume.study_uid[:64] or None
    db.flush()
    return scan


@dataclass(frozen=True)
class CaseFailure:
    """A case that could not be imported: the file at fault (relative to the dataset folder) and why."""

    case_id: str
    file: str | None
    reason: str


@dataclass
class DatasetImportReport:
    """What a dataset import did, case by case."""

    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    missing_structures: dict[str, list[str]] = field(default_factory=dict)
    unknown_files: dict[str, list[str]] = field(default_factory=dict)
    failed: list[CaseFailure] = field(default_factory=list)


@dataclass(frozen=True)
class PreparedCase:
    """A PanTS case decoded, checked and stored as blobs (the CT, the masks' chunks), before any database work."""

    case: pants.PantsCase
    volume: nifti.LoadedVolume
    image_digest: str
    image_bytes: int
    masks: labels.PrebuiltMasks | None
    mask_values: dict[str, MaskValues]
    timings: dict[str, float]


def _dataset_name(path: Path, root: Path | None) -> str:
    """How messages name a dataset file: relative to the dataset folder when it is known."""
    return str(path.relative_to(root)) if root is not None and path.is_relative_to(root) else path.name


def read_dataset_file(path: Path, name: str) -> bytes:
    """A dataset file's bytes; InvalidInput naming the file when it is missing or cannot be read."""
    try:
        return path.read_bytes()
    except FileNotFoundError as exc:
        raise InvalidInput(f"{name}: file not found", file=name) from exc
    except IsADirectoryError as exc:
        raise InvalidInput(f"{name}: is a folder, not a NIfTI file", file=name) from exc
    except OSError as exc:
        raise InvalidInput(f"{name}: cannot read the file ({exc.strerror or exc})", file=name) from exc


def prepare_pants_case(
    blobs: BlobStore, case: pants.PantsCase, *, root: Path | None = None, threads: int | None = None
) -> PreparedCase:
    """Decode a PanTS case's CT and masks (each checked against the CT's grid) and store their blobs.

    No database work, so a caller imports the slow part outside any transaction. The masks decode on `threads`
    threads (default: the CPUs available) and only a few are in memory at once. Errors name the file at fault
    (relative to `root`, the dataset folder); blobs stored before an error are unreferenced (`maskloop gc`).
    """
    started = time.perf_counter()
    image_name = _dataset_name(case.image_path, root)
    data = read_dataset_file(case.image_path, image_name)
    limits = decode_limits.current()
    # The masks are checked against the grid the CT's header declares, so they decode while the CT does.
    geometry = nifti.header_geometry(
        data, image_name, max_bytes=limits.max_decoded_bytes, max_voxels=limits.max_scan_voxels
    )
    values: dict[str, MaskValues] = {}

    def builder(structure: str, path: Path) -> Callable[[chunks.PutBlob], chunks.MaskManifest]:
        # Each mask file is inflated a few planes at a time straight into its stored chunks (nifti_masks): no
        # whole 79 MB mask is allocated, so decoding costs half the CPU and scales across worker processes.
        def build(put: chunks.PutBlob) -> chunks.MaskManifest:
            name = _dataset_name(path, root)
            data = read_dataset_file(path, name)
            manifest, values[structure] = nifti_masks.mask_manifest(data, geometry, name, put)
            return manifest

        return build

    def read_ct() -> tuple[nifti.LoadedVolume, str, int, float]:
        volume = nifti.load_nifti_bytes(
            data, image_name, max_bytes=limits.max_decoded_bytes, max_voxels=limits.max_scan_voxels
        )
        stored = nifti.ensure_gzip(data)
        return volume, blobs.put_bytes(stored), len(stored), time.perf_counter() - started

    builders = {structure: builder(structure, path) for structure, path in case.structure_paths.items()}
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="ct") as pool:
        ct = pool.submit(read_ct)
        try:
            masks = labels.prebuild_manifests(blobs, builders, threads=threads) if builders else None
        except BaseException:
            ct.result()  # a faulty CT is the case's first problem; else the mask's error stands
            raise
        volume, digest, size, ct_s = ct.result()
    # Seconds: the CT's decoding and storing (alongside the masks'), and the whole decoding of the case.
    timings = {"ct": round(ct_s, 3), "decode": round(time.perf_counter() - started, 3)}
    return PreparedCase(case, volume, digest, size, masks, values, timings)


def import_pants_case(
    db: Session,
    blobs: BlobStore,
    project: Project,
    actor: User | None,
    case: pants.PantsCase,
    prepared: PreparedCase | None = None,
) -> tuple[Scan, LabelVersion | None]:
    """Import one PanTS case: the CT and, if it has masks, an `import` version (missing files stay missing), QA.

    With `prepared` (see prepare_pants_case) only the rows are written here, a short transaction.
    """
    check_case_id(case.case_id)
    _ensure_new_case(db, project, case.case_id)
    prepared = prepared or prepare_pants_case(blobs, case)
    scan = _create_scan(
        db,
        project,
        actor,
        case_id=case.case_id,
        image_digest=prepared.image_digest,
        image_bytes=prepared.image_bytes,
        volume=prepared.volume,
        source_format="nifti",
        source_name=clean_file_name(case.image_path.name),
        split=case.split,
        raw_metadata=case.raw_metadata,
    )
    if prepared.masks is None:
        return scan, None
    version = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=actor.id if actor else None),
        kind="import",
        message=f"imported from {case.image_path.parent.parent.parent.name}/{case.case_id}",
        masks={},
        prebuilt=prepared.masks,
        missing=case.missing_structures,
    )
    # QA of the import (missing files, float masks off {0, 1}, tumour flag, phase, orientation...); the CT is
    # already decoded, so the phase rule does not decode it again.
    quality.run_qa(db, blobs, scan, version, mask_values=prepared.mask_values, actor=actor, volume=prepared.volume.data)
    return scan, version


def import_pants_dataset(
    db: Session,
    blobs: BlobStore,
    project: Project,
    actor: User | None,
    root: Path,
    *,
    progress: Callable[[int, int, str], None] | None = None,
    commit: Callable[[], None] | None = None,
) -> DatasetImportReport:
    """Import a PanTS-layout folder here, case after case; cases already in the project are skipped, so a rerun
    resumes. Each case is written in a savepoint (committed after it when `commit` is given): a case that fails
    (a truncated or missing file, a mask of the wrong grid) is reported in `failed` and the others go on.
    (`backend.imports` runs the same import as one job per case, on any number of workers.)"""
    structure_names = [s.name for s in projects.structures_of(db, project.id)]
    folder = pants.survey_pants_folder(root, structure_names)
    existing = set(db.scalars(select(Scan.case_id).where(Scan.project_id == project.id)))
    report = DatasetImportReport()
    report.failed += [CaseFailure(p.case_id, p.file, p.reason) for p in folder.problems]
    report.failed += [
        CaseFailure(case_id, folder.metadata_file, f"the metadata sheet has a row for {case_id} but no case folder")
        for case_id in folder.orphan_rows
    ]
    for index, case in enumerate(folder.cases):
        if case.case_id in existing:
            report.skipped.append(case.case_id)
        else:
            try:
                with db.begin_nested():
                    import_pants_case(
                        db, blobs, project, actor, case, prepare_pants_case(blobs, case, root=folder.root)
                    )
            except DomainError as exc:
                report.failed.append(CaseFailure(case.case_id, exc.details.get("file"), exc.message))
            else:
                report.imported.append(case.case_id)
                if case.missing_structures:
                    report.missing_structures[case.case_id] = list(case.missing_structures)
                if case.unknown_files:
                    report.unknown_files[case.case_id] = list(case.unknown_files)
            if commit is not None:
                commit()
        if progress is not None:
            progress(index + 1, len(folder.cases), case.case_id)
    return report


def get_scan(db: Session, scan_id: int) -> Scan:
    """A scan by id."""
    return get_or_404(db, Scan, scan_id, "scan")


def _filtered(query: Select[Any], project_id: int, flt: ScanFilter) -> Select[Any]:
    query = query.where(Scan.project_id == project_id)
    if flt.site:
        query = query.where(Scan.site == flt.site)
    if flt.phase:
        query = query.where(Scan.phase == flt.phase)
    if flt.sex:
        query = query.where(Scan.sex == flt.sex)
    if flt.tumor is not None:
        query = query.where(Scan.tumor == flt.tumor)
    if flt.manufacturer:
        query = query.where(Scan.manufacturer == flt.manufacturer)
    if flt.split:
        query = query.where(Scan.split == flt.split)
    if flt.age_min is not None:
        query = query.where(Scan.age >= flt.age_min)
    if flt.age_max is not None:
        query = query.where(Scan.age <= flt.age_max)
    if flt.search:
        escaped = flt.search.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        # ilike: case-insensitive on PostgreSQL too (SQLite's LIKE already is), so both databases agree.
        query = query.where(Scan.case_id.ilike(f"%{escaped}%", escape="\\"))
    return query


def list_scans(db: Session, project_id: int, flt: ScanFilter, offset: int, limit: int) -> tuple[list[Scan], int]:
    """One page of a project's scans (by case id) and the total matching the filter."""
    total = db.scalar(_filtered(select(func.count(Scan.id)), project_id, flt)) or 0
    rows = db.scalars(_filtered(select(Scan), project_id, flt).order_by(Scan.case_id).offset(offset).limit(limit))
    return list(rows), int(total)


def _facet_key(value: object) -> str:
    if value is None:
        return "unknown"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def facets(db: Session, project_id: int) -> dict[str, dict[str, int]]:
    """Counts of scans per site, phase, sex, manufacturer and tumour flag (for filter menus)."""
    out: dict[str, dict[str, int]] = {}
    for name, column in (
        ("site", Scan.site),
        ("phase", Scan.phase),
        ("sex", Scan.sex),
        ("manufacturer", Scan.manufacturer),
        ("tumor", Scan.tumor),
        ("split", Scan.split),
    ):
        rows = db.execute(select(column, func.count()).where(Scan.project_id == project_id).group_by(column)).all()
        # Keys are the stored values (so each works as a filter value); booleans as "true"/"false".
        out[name] = {_facet_key(value): int(count) for value, count in rows}
    return out


def scan_ids_matching(db: Session, project_id: int, flt: ScanFilter) -> list[int]:
    """Ids of every scan of a project matching a filter, by case id."""
    return [int(i) for i in db.scalars(_filtered(select(Scan.id), project_id, flt).order_by(Scan.case_id))]


def scan_ids_by_case(db: Session, project_id: int, case_ids: Sequence[str]) -> dict[str, int]:
    """The ids of a project's scans with these case ids, by case id (unknown case ids are absent)."""
    rows = db.execute(select(Scan.id, Scan.case_id).where(Scan.project_id == project_id, Scan.case_id.in_(case_ids)))
    return {case_id: int(scan_id) for scan_id, case_id in rows}
