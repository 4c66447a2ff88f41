"""MONAI Label reads: scans by case id, datastore pages, model and label descriptions, label decoding."""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

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
        # The map stays with this process for the client's save on this version (see labels' map_cache).
        label_map, painted = labels.take_combined_map(db, blobs, version)
        try:
            data = nifti.to_nifti_gz(label_map, affine)
        finally:
            labels.keep_combined_map(db, version, label_map)
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


# --- infer with clicks (an interactive model): the point forms MONAI Label's clients send ---

# The most structures one infer may refine (each is one round trip to the interactive worker).
MAX_CLICK_PROMPTS = 8


@dataclass(frozen=True)
class ClickPrompt:
    """The clicks for one structure: voxel indices (i, j, k) of the image as the client loaded it, i.e. the stored
    NIfTI that `datastore/image` serves, whose array order is maskloop's storage order (checked downstream)."""

    structure: str
    positive: list[list[Any]]
    negative: list[list[Any]]


def _points(value: Any, what: str) -> list[list[Any]]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(p, list) for p in value):
        raise InvalidInput(f"'{what}' must be a list of [i, j, k] voxel indices, got {str(value)[:200]}")
    return [list(p) for p in value]


def _merge(first: list[list[Any]], second: list[list[Any]]) -> list[list[Any]]:
    return first + [p for p in second if p not in first]


def click_prompts(params: Mapping[str, Any], schema: Sequence[Structure], known: Sequence[str]) -> list[ClickPrompt]:
    """The structures to refine and their clicks, from any of the clients' forms.

    * DeepGrow (3D Slicer, OHIF): ``label`` + ``foreground`` / ``background`` point lists.
    * DeepEdit (3D Slicer's multi-label mode, OHIF): point lists keyed by label name, negatives under
      ``background``; Slicer adds the current segment as ``label`` (only it is refined), OHIF does not (every
      label with points is).
    * OHIF's VISTA3D prompts: ``points`` + ``point_labels`` (1 positive, 0 negative, others ignored) +
      ``label_prompt`` (one label value).
    """
    by_name: dict[str, str] = {}
    for s in schema:
        by_name[s.name] = s.name
        for alias in s.aliases:
            by_name.setdefault(alias, s.name)
    by_value = {s.label_value: s.name for s in schema}

    def resolve(name: Any) -> str:
        if not isinstance(name, str) or name not in by_name:
            raise InvalidInput(f"label {str(name)[:100]!r} is not a structure of the project's label schema")
        return by_name[name]

    def only_known(form: str) -> str:
        if len(known) == 1:
            return known[0]
        raise InvalidInput(f"{form} clicks must name their structure ('label')")

    label = params.get("label")
    if "points" in params:
        points = _points(params.get("points"), "points")
        kinds = params.get("point_labels", [1] * len(points))
        if not isinstance(kinds, list) or len(kinds) != len(points) or not all(isinstance(k, int) for k in kinds):
            raise InvalidInput("'point_labels' must hold one integer per point (1 positive, 0 negative)")
        prompt = params.get("label_prompt")
        if prompt:
            if not isinstance(prompt, list) or len(prompt) != 1 or prompt[0] not in by_value:
                raise InvalidInput(f"'label_prompt' must hold one label value of the schema, got {str(prompt)[:100]}")
            name = by_value[prompt[0]]
        else:
            name = resolve(label) if label else only_known("VISTA3D-style")
        positive = [p for p, k in zip(points, kinds, strict=True) if k > 0]
        return [ClickPrompt(name, positive, [p for p, k in zip(points, kinds, strict=True) if k == 0])]
    negative = _points(params.get("background"), "background")
    foreground = _points(params.get("foreground"), "foreground")
    per_label = {
        by_name[key]: _points(value, key)
        for key, value in params.items()
        if key in by_name and key not in ("foreground", "background") and isinstance(value, list)
    }
    if label:
        name = resolve(label)
        return [ClickPrompt(name, _merge(foreground, per_label.get(name, [])), negative)]
    if foreground:
        return [ClickPrompt(only_known("DeepGrow"), foreground, negative)]
    prompts = [ClickPrompt(name, points, negative) for name, points in per_label.items() if points]
    if not prompts:
        if negative and len(known) == 1:
            return [ClickPrompt(known[0], [], negative)]
        raise InvalidInput(
            "an interactive model needs clicks: 'foreground'/'background' with 'label' (DeepGrow), point lists "
            "keyed by label name (DeepEdit), or 'points'/'point_labels'/'label_prompt'"
        )
    if len(prompts) > MAX_CLICK_PROMPTS:
        raise InvalidInput(f"clicks for {len(prompts)} structures; one infer refines at most {MAX_CLICK_PROMPTS}")
    return prompts


def masks_file(scan: Scan, masks: Mapping[str, np.ndarray], schema: Sequence[Structure]) -> LabelFile:
    """Whole masks of some structures as one combined .nii.gz map (parts painted after their parents)."""
    values = {s.name: s.label_value for s in schema}
    order = [s.name for s in labels.default_paint_order(schema) if s.name in masks]
    dtype = np.uint8 if max((values[n] for n in order), default=0) < 256 else np.uint16
    label_map = np.zeros(scans.geometry_of(scan).shape, dtype=dtype)
    for name in order:
        label_map[masks[name]] = values[name]
    data = nifti.to_nifti_gz(label_map, scans.geometry_of(scan).affine)
    return LabelFile(f"{scan.case_id}.nii.gz", data, order)


def model_named(db: Session, project: Project, name: str) -> Model | None:
    """The project's model of that name, if any."""
    return db.scalar(select(Model).where(Model.project_id == project.id, Model.name == name))
