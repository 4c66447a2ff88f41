"""MONAI Label reads: scans by case id, datastore pages, model and label descriptions, label decoding."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from sqlalchemy import Table, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput, NotFound
from backend.imaging import monailabel_io, monailabel_write, nifti
from backend.labels import service as labels
from backend.models import LabelVersion, Model, MonaiLabelClient, Project, Scan, ScanTask, Structure, User
from backend.models._common import utcnow
from backend.projects import service as projects
from backend.scans import service as scans

DATASTORE_PAGE = 1000


def scan_by_case_id(db: Session, project: Project, case_id: str) -> Scan:
    """A scan of the project by its case id (MONAI Label's image id); 404 otherwise."""
    scan = db.scalar(select(Scan).where(Scan.project_id == project.id, Scan.case_id == case_id))
    if scan is None:
        raise NotFound(f"image {case_id!r} not found")
    return scan


def structures(db: Session, project: Project) -> list[Structure]:
    """The project's structures in label-value order."""
    return sorted(projects.structures_of(db, project.id), key=lambda s: s.label_value)


def models_of(db: Session, project: Project) -> list[Model]:
    """The project's registered models."""
    return list(db.scalars(select(Model).where(Model.project_id == project.id).order_by(Model.name)))


def datastore_counts(db: Session, project: Project) -> tuple[int, int]:
    """(total scans, scans with a label version)."""
    total = db.scalar(select(func.count()).select_from(Scan).where(Scan.project_id == project.id)) or 0
    done = (
        db.scalar(
            select(func.count())
            .select_from(Scan)
            .where(Scan.project_id == project.id, Scan.head_version_id.is_not(None))
        )
        or 0
    )
    return int(total), int(done)


def approved_count(db: Session, project: Project) -> int:
    """How many scans of the project are approved."""
    query = select(func.count()).select_from(ScanTask).where(ScanTask.project_id == project.id)
    return int(db.scalar(query.where(ScanTask.state == "approved")) or 0)


def datastore_page(db: Session, project: Project, limit: int = DATASTORE_PAGE) -> list[Scan]:
    """The first `limit` scans of the project by id."""
    query = select(Scan).where(Scan.project_id == project.id).order_by(Scan.id).limit(limit)
    return list(db.scalars(query))


@dataclass(frozen=True)
class DecodedLabel:
    """An uploaded label: a combined map with the structure each value names (.nii.gz; `declared` when the client
    named them in label_info), or whole masks per structure (.seg.nrrd, whose segments may overlap)."""

    filename: str
    label_map: np.ndarray | None = None
    names: Mapping[int, str] | None = None
    declared: bool = False
    masks: dict[str, np.ndarray] | None = None


def decode_label(
    filename: str,
    data: bytes,
    scan: Scan,
    schema: Sequence[Structure],
    label_info: Sequence[tuple[str, int]] | None,
) -> DecodedLabel:
    """Decode an uploaded label file on the scan's grid (combined .nii.gz map, or .seg.nrrd through the codecs)."""
    geometry = scans.geometry_of(scan)
    indices: Mapping[str, int] = {s.name: s.label_value for s in schema}
    shape = tuple(int(v) for v in geometry.shape)
    name = monailabel_io.base_name(filename)
    if not data:
        raise InvalidInput(f"{name}: the label file is empty", file=name)
    if monailabel_io.label_format(name, data) == "nifti":
        label_map, names = monailabel_io.read_combined_upload(
            name, data, shape=shape, affine=geometry.affine, label_info=label_info, schema_indices=indices
        )
        return DecodedLabel(name, label_map=label_map, names=names, declared=label_info is not None)
    parents = {s.name: s.inside for s in schema if s.inside}
    masks = monailabel_io.read_label_upload(
        name,
        data,
        shape=shape,
        affine=geometry.affine,
        label_info=label_info,
        schema_indices=indices,
        parents=parents,
    )
    return DecodedLabel(name, masks=masks)


@dataclass(frozen=True)
class LabelFile:
    """A version written as a label file, and the structures it holds (for the read log)."""

    filename: str
    data: bytes
    structures: list[str]


def label_file(db: Session, blobs: BlobStore, scan: Scan, version: LabelVersion, extension: str) -> LabelFile:
    """A version as a label file: a combined .nii.gz map, or a .seg.nrrd keeping overlaps (extension '.nrrd')."""
    affine = scans.geometry_of(scan).affine
    if extension.lower() not in (".nrrd", ".seg.nrrd"):
        label_map, painted = labels.combined_map(db, blobs, version)
        data = nifti.to_nifti_gz(label_map, affine)
        return LabelFile(f"{scan.case_id}.nii.gz", data, [s.name for s in painted])
    schema = {s.id: s for s in projects.structures_of(db, scan.project_id)}
    masks: dict[str, np.ndarray] = {}
    for structure_id, entry in labels.entries_by_structure(version).items():
        if structure_id in schema and entry.status == "present":
            masks[schema[structure_id].name] = labels.read_mask(blobs, scan, entry)
    indices = {s.name: s.label_value for s in schema.values()}
    colours = {s.name: s.color for s in schema.values()}
    data = monailabel_write.write_seg_nrrd(masks, indices, colours, affine)
    return LabelFile(f"{scan.case_id}.seg.nrrd", data, list(masks))


# Strategies other than maskloop's priority pick among the scans still open for annotation.
OPEN_STATES = ("new", "annotating", "changes_requested")


def pick_open_scan(db: Session, project: Project, strategy: str) -> Scan | None:
    """An open scan of the project: the first by id ('first') or a random one ('random'); None when none is open."""
    query = (
        select(Scan)
        .join(ScanTask, ScanTask.scan_id == Scan.id)
        .where(Scan.project_id == project.id, ScanTask.state.in_(OPEN_STATES))
    )
    if strategy == "first":
        return db.scalars(query.order_by(Scan.id).limit(1)).first()
    count = db.scalar(select(func.count()).select_from(query.subquery())) or 0
    if count == 0:
        return None
    return db.scalars(query.order_by(Scan.id).offset(random.randrange(count)).limit(1)).first()


def remembered_base(db: Session, user: User, client_id: str, scan: Scan) -> tuple[bool, int | None]:
    """Whether this client was given the scan, and the head it was given then."""
    # populate_existing: remember_base writes with a plain upsert, which an already loaded row would not show.
    row = db.get(MonaiLabelClient, (user.id, client_id, scan.id), populate_existing=True)
    return (row is not None, row.base_version_id if row is not None else None)


def remember_base(db: Session, user: User, client_id: str, scan: Scan, version_id: int | None) -> None:
    """Note the head a client was given with a scan: the base of its next save (one upsert, race-free)."""
    table = MonaiLabelClient.__table__
    assert isinstance(table, Table)
    insert = pg_insert if db.get_bind().dialect.name == "postgresql" else sqlite_insert
    now = utcnow()
    statement = insert(table).values(
        user_id=user.id, client_id=client_id, scan_id=scan.id, base_version_id=version_id, updated_at=now
    )
    statement = statement.on_conflict_do_update(
        index_elements=["user_id", "client_id", "scan_id"],
        set_={"base_version_id": version_id, "updated_at": now},
    )
    db.execute(statement)
