"""Writing label versions and scans: saves (patch, whole masks, combined map), imports with their QA, drafts.

Each flow is one transaction: services flush, the flow commits at its end. The saves keep the hardening's fault
handling: the idempotency key makes a retried save return the stored version (labels.service, with a savepoint
around the insert), a connection lost during this commit answers 503 with `stored=unknown` (core.db.get_session),
and the caller reads the answer back with `core.db.read_after_commit`.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from pathlib import Path

import numpy as np
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput
from backend.imaging import dicom_seg_read
from backend.imaging.nifti import MaskValues
from backend.labels import service as labels
from backend.labels.service import seg_import
from backend.models import LabelDraft, LabelVersion, Project, Scan, User
from backend.quality import service as quality
from backend.scans import service as scans

# Version kinds a client may upload ('fusion' and the others are made by the server itself).
UPLOAD_KINDS = ("human", "import", "model")


def upload_kind(actor: User, kind: str) -> str:
    """The kind of an uploaded version, refused unless a client may upload it (a 'model' one: service accounts)."""
    if kind not in UPLOAD_KINDS:
        raise InvalidInput(f"kind {kind!r} cannot be uploaded; use 'human', 'import' or 'model'")
    if kind == "model" and not actor.is_service:
        raise InvalidInput("only a model worker's service account may upload a 'model' version")
    return kind


def save_masks(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    masks: Mapping[str, np.ndarray],
    *,
    kind: str,
    message: str = "",
    base_version_id: int | None = None,
    missing: Collection[str] = (),
    idempotency_key: str | None = None,
    mask_values: Mapping[str, MaskValues] | None = None,
    actor: User,
    builders: Mapping[str, labels.MaskBuilder] | None = None,
) -> LabelVersion:
    """Save a version from whole per-structure masks (others kept from the base); an import is QA-checked at once.

    `builders`: masks decoded straight into stored chunks (e.g. from the uploaded files) once the save's checks
    have passed."""
    kind = upload_kind(actor, kind)
    version = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=actor.id),
        kind=kind,
        message=message,
        base_version_id=base_version_id,
        masks=masks,
        missing=missing,
        idempotency_key=idempotency_key,
        builders=builders,
    )
    if kind == "import":
        # The mask values tell QA about float masks off {0, 1}; a QA refusal refuses the import with it.
        quality.run_qa(db, blobs, scan, version, mask_values=mask_values, actor=actor)
    db.commit()
    return version


def save_label_map(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    label_map: np.ndarray,
    *,
    kind: str,
    message: str = "",
    base_version_id: int | None = None,
    idempotency_key: str | None = None,
    actor: User,
) -> LabelVersion:
    """Save a version from a combined label map (every schema structure gets its mask); an import is QA-checked."""
    kind = upload_kind(actor, kind)
    version = labels.create_version_from_label_map(
        db,
        blobs,
        scan,
        label_map,
        author=labels.Author(user_id=actor.id),
        kind=kind,
        message=message,
        base_version_id=base_version_id,
        idempotency_key=idempotency_key,
    )
    if kind == "import":
        quality.run_qa(db, blobs, scan, version, actor=actor)
    db.commit()
    return version


def save_patch(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    patches: Sequence[labels.BoxPatch],
    *,
    base_version_id: int | None,
    message: str = "",
    branch: bool = False,
    idempotency_key: str | None = None,
    actor: User,
) -> LabelVersion:
    """Save an edit as a child of its base from the changed boxes only (409 if the head moved on)."""
    version = labels.save_patch(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=actor.id),
        base_version_id=base_version_id,
        patches=patches,
        message=message,
        branch=branch,
        idempotency_key=idempotency_key,
    )
    db.commit()
    return version


def save_draft(
    db: Session, blobs: BlobStore, scan: Scan, base_version_id: int | None, payload: bytes, *, actor: User
) -> LabelDraft:
    """Autosave the actor's unsaved edit of a scan, replacing their previous draft."""
    draft = labels.save_draft(db, blobs, scan, actor, base_version_id, payload)
    db.commit()
    return draft


def delete_draft(db: Session, scan: Scan, *, actor: User) -> None:
    """Discard the actor's draft of a scan (nothing to do when there is none)."""
    labels.delete_draft(db, scan, actor)
    db.commit()


def import_scan_nifti(
    db: Session,
    blobs: BlobStore,
    project: Project,
    data: bytes,
    filename: str,
    *,
    case_id: str | None = None,
    split: str | None = None,
    raw_metadata: Mapping[str, str] | None = None,
    actor: User | None,
) -> Scan:
    """Import one NIfTI volume into a project (the header is kept as is)."""
    scan = scans.import_nifti(
        db, blobs, project, actor, data, filename, case_id=case_id, split=split, raw_metadata=raw_metadata
    )
    db.commit()
    return scan


def import_scan_dicom(
    db: Session,
    blobs: BlobStore,
    project: Project,
    files: Sequence[Path] | Path,
    *,
    case_id: str,
    split: str | None = None,
    raw_metadata: Mapping[str, str] | None = None,
    actor: User | None,
) -> Scan:
    """Import one DICOM series (its files, or their folder) into a project as a RAS volume in HU."""
    scan = scans.import_dicom(db, blobs, project, actor, files, case_id=case_id, split=split, raw_metadata=raw_metadata)
    db.commit()
    return scan


def import_pants_dataset(
    db: Session,
    blobs: BlobStore,
    project: Project,
    root: Path,
    *,
    actor: User | None,
    progress: Callable[[int, int, str], None] | None = None,
) -> scans.DatasetImportReport:
    """Import a PanTS-layout folder (CTs, their masks as `import` versions, QA); cases already there are skipped."""
    # One transaction per case, so an interrupted import keeps what it did and a rerun resumes after it.
    report = scans.import_pants_dataset(db, blobs, project, actor, root, progress=progress, commit=db.commit)
    db.commit()
    return report


def import_dicom_seg(
    db: Session,
    blobs: BlobStore,
    source: Path | bytes,
    *,
    filename: str,
    project: Project | None = None,
    scan: Scan | None = None,
    mapping: Mapping[str, str] | None = None,
    base_version_id: int | None = None,
    message: str = "",
    idempotency_key: str | None = None,
    actor: User | None,
) -> tuple[Scan, LabelVersion]:
    """Import a DICOM SEG as an `import` label version, QA-checked, on the head (or the given base).

    The scan is the given one (a SEG of another series is refused; one without source UIDs is matched by
    geometry: every frame must lie on its voxel grid) or, without one, the `project`'s scan of the series the SEG
    references. Segments become structures by code, then by name, or by `mapping`; unknown ones refuse the import
    with their list. Structures the SEG does not hold are kept from the base. Nothing is stored on a refusal.
    """
    parsed = dicom_seg_read.parse_seg(source, filename)
    if scan is None:
        if project is None:
            raise InvalidInput("a DICOM SEG import needs its project or its scan")
        scan = seg_import.find_scan_by_series(db, project, parsed)
    elif project is not None and scan.project_id != project.id:
        raise InvalidInput(f"scan {scan.case_id} is not a scan of project {project.slug!r}")
    seg_import.check_scan(scan, parsed)
    structures = seg_import.map_segments(db, scan.project_id, parsed, mapping)
    decoded = parsed.masks(scans.geometry_of(scan), set(structures))
    masks: dict[str, np.ndarray] = {}
    for number, name in structures.items():
        masks[name] = masks[name] | decoded[number] if name in masks else decoded[number]
    version = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=actor.id if actor is not None else None),
        kind="import",
        message=message or f"DICOM SEG {filename}"[:2000],
        base_version_id=scan.head_version_id if base_version_id is None else base_version_id,
        masks=masks,
        idempotency_key=idempotency_key,
    )
    quality.run_qa(db, blobs, scan, version, actor=actor)
    db.commit()
    return scan, version
