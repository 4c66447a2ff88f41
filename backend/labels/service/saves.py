"""Saving label versions: whole masks, a combined label map or box patches, with optimistic concurrency."""

from __future__ import annotations

import os
from collections.abc import Callable, Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
from sqlalchemy import event, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, SessionTransaction
from sqlalchemy.orm.attributes import set_committed_value

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.core.blobstore_batch import blob_batch
from backend.core.errors import Conflict, InvalidInput
from backend.imaging import chunks
from backend.imaging.chunks import MaskManifest
from backend.labels.service.masks import entries_by_structure, load_manifest, scan_shape, volume_ml
from backend.models import LabelVersion, LabelVersionStructure, Scan, User
from backend.models.labels import VERSION_KINDS
from backend.projects import service as projects
from backend.workflow import service as workflow


@dataclass(frozen=True)
class Author:
    """Who made a version: a user, a model version (run by a service user), or the import."""

    user_id: int | None
    model_version_id: int | None = None


@dataclass(frozen=True)
class BoxPatch:
    """New voxels for a box of one structure: origin (i, j, k) and a boolean box that replaces them."""

    structure: str
    origin: tuple[int, int, int]
    box: np.ndarray


class _TrackingPut:
    """Hands a save's blobs to one batch of the store and counts the bytes not already stored (the version's
    storage cost).

    The digest is returned at once; the store writes the blobs on I/O threads while the masks are still being
    encoded (a whole mask is ~60 chunks: 60 fsyncs or S3 PUTs one after another cost more than its decoding).
    `wait()`, or `durable_before_commit()` before the rows are written, makes them durable before a row names them.
    """

    def __init__(self, blobs: BlobStore) -> None:
        self.blobs = blobs
        self._batch = blob_batch(blobs)

    @property
    def new_bytes(self) -> int:
        """Bytes of the blobs this save stored that were not stored before."""
        return self._batch.new_bytes

    def __call__(self, data: bytes) -> str:
        return self._batch.put(data)

    def reader(self, get: Callable[[str], bytes]) -> Callable[[str], bytes]:
        """`get`, which also finds the blobs handed over here and not yet stored."""

        def read(digest: str) -> bytes:
            data = self._batch.pending(digest)
            return data if data is not None else get(digest)

        return read

    def durable_before_commit(self, db: Session) -> None:
        """Wait until every blob handed over is stored (the first failure is raised here), and make the session's
        next commit wait until they are durable: the rest of that (the folders' fsyncs) runs while the version's
        rows are inserted, and a failure of it fails the commit, so no committed row names a blob not durable."""
        _wait_before_commit(db, self._batch.start_commit())

    def wait(self, *, raise_errors: bool = True) -> None:
        """Make every blob handed over durable (the first failure is raised); with `raise_errors=False` (the caller
        is already failing and its own error stays the one reported) the batch is given up instead."""
        if raise_errors:
            self._batch.commit()
        else:
            self._batch.abort()


# Session.info key: the waits (blob folder fsyncs) that the session's commit must pass before the database's COMMIT.
_BLOB_WAITS = "maskloop.blob_waits"


def _wait_before_commit(db: Session, wait: Callable[[], None]) -> None:
    """Make the session's next commit (or savepoint release) call `wait` first; a failure of it fails that commit.

    Two listeners per session, not per save (a bulk import saves thousands of versions on one session). A wait is
    kept until it passed, so a commit retried after a failure fails again; a rollback drops it with its rows."""
    waits: list[Callable[[], None]] | None = db.info.get(_BLOB_WAITS)
    if waits is None:
        waits = db.info[_BLOB_WAITS] = []
        event.listen(db, "before_commit", _run_waits)
        event.listen(db, "after_transaction_end", _drop_waits)
    waits.append(wait)


def _run_waits(session: Session) -> None:
    """before_commit: every blob the transaction's rows name is durable before they commit (raises otherwise)."""
    waits: list[Callable[[], None]] = session.info.get(_BLOB_WAITS, [])
    for wait in list(waits):
        wait()
    waits.clear()


def _drop_waits(session: Session, transaction: SessionTransaction) -> None:
    """after_transaction_end: the session's own transaction ended (commit, rollback, close): its waits go with it."""
    if transaction.parent is None:
        session.info.get(_BLOB_WAITS, []).clear()


def _check_base(db: Session, scan: Scan, base_version_id: int | None, *, branch: bool) -> LabelVersion | None:
    """Load the base version and refuse a stale one early (the conditional UPDATE stays the authority)."""
    base = None
    if base_version_id is not None:
        base = db.get(LabelVersion, base_version_id)
        if base is None or base.scan_id != scan.id:
            raise InvalidInput(f"base version {base_version_id} is not a version of scan {scan.id}")
    if not branch and scan.head_version_id != base_version_id:
        raise _conflict(db, scan, base_version_id)
    return base


def _conflict(db: Session, scan: Scan, base_version_id: int | None) -> Conflict:
    head_id = db.scalar(
        select(Scan.head_version_id).where(Scan.id == scan.id).execution_options(populate_existing=True)
    )
    head = db.get(LabelVersion, head_id) if head_id is not None else None
    author = db.get(User, head.author_user_id) if head is not None and head.author_user_id else None
    return Conflict(
        f"scan {scan.id} moved on: your base is version {base_version_id}, the head is version {head_id}",
        base_version_id=base_version_id,
        head_version_id=head_id,
        head_author=author.display_name if author else None,
        head_message=head.message if head is not None else None,
        head_created_at=head.created_at.isoformat() if head is not None else None,
    )


def _persist(
    db: Session,
    scan: Scan,
    base: LabelVersion | None,
    *,
    kind: str,
    author: Author,
    message: str,
    entries: dict[int, tuple[str, str | None, int]],
    new_bytes: int,
    branch: bool,
    idempotency_key: str | None,
) -> LabelVersion:
    """Insert the version and its rows, then move the head only if it is still the base."""
    if kind not in VERSION_KINDS:
        raise InvalidInput(f"unknown version kind {kind!r}")
    parent_entries = entries_by_structure(base)
    version = LabelVersion(
        scan_id=scan.id,
        parent_id=base.id if base else None,
        kind=kind,
        author_user_id=author.user_id,
        author_model_version_id=author.model_version_id,
        message=message[:2000],
        is_branch=branch,
        idempotency_key=idempotency_key,
        new_bytes=new_bytes,
    )
    if idempotency_key:
        # A client retrying while its first try still runs: the unique key refuses the second row (after the first
        # commits), and the retry answers the stored version instead of an error.
        try:
            with db.begin_nested():
                db.add(version)
                db.flush()
        except IntegrityError:
            existing = _existing_for_key(db, scan, idempotency_key)
            if existing is None:
                raise
            return existing
    else:
        db.add(version)
        db.flush()
    rows = []
    for structure_id, (status, digest, voxels) in entries.items():
        parent = parent_entries.get(structure_id)
        changed = parent is None or parent.status != status or parent.manifest_digest != digest
        rows.append(
            LabelVersionStructure(
                version_id=version.id,
                structure_id=structure_id,
                status=status,
                manifest_digest=digest,
                voxel_count=voxels,
                volume_ml=volume_ml(voxels, scan),
                changed=changed,
            )
        )
    db.add_all(rows)
    db.flush()
    # The rows just written are the version's whole collection (no column of theirs is set by the database):
    # set it as loaded instead of reading it back.
    set_committed_value(version, "structures", rows)
    if not branch:
        base_id = base.id if base else None
        condition = Scan.head_version_id.is_(None) if base_id is None else Scan.head_version_id == base_id
        moved = db.execute(update(Scan).where(Scan.id == scan.id, condition).values(head_version_id=version.id))
        if moved.rowcount != 1:  # type: ignore[attr-defined]
            raise _conflict(db, scan, base_id)
        # The conditional UPDATE matched this one row, so the head is this version: no need to read it back.
        set_committed_value(scan, "head_version_id", version.id)
    workflow.on_version_created(db, scan, version)
    audit.record(
        db,
        actor_user_id=author.user_id,
        action="label_version.create",
        entity_type="label_version",
        entity_id=version.id,
        project_id=scan.project_id,
        scan_id=scan.id,
        details={
            "kind": kind,
            "parent_id": version.parent_id,
            "branch": branch,
            "changed": [sid for sid, row in entries_by_structure(version).items() if row.changed],
            "new_bytes": new_bytes,
            "model_version_id": author.model_version_id,
        },
    )
    return version


def _existing_for_key(db: Session, scan: Scan, idempotency_key: str | None) -> LabelVersion | None:
    """The version a retried save already created, if any."""
    if not idempotency_key:
        return None
    existing = db.scalar(select(LabelVersion).where(LabelVersion.idempotency_key == idempotency_key))
    if existing is not None and existing.scan_id != scan.id:
        raise InvalidInput("this idempotency key was used for another scan")
    return existing


def mask_threads(threads: int | None = None) -> int:
    """Threads that encode masks at once: `threads` when given (> 0), else the CPUs this process may run on."""
    if threads:
        return max(1, threads)
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


# Builds one structure's manifest, storing its chunks through the `put` it is given: chunking a decoded mask, or
# decoding a mask file straight into chunks (nifti_masks.mask_manifest, which never holds the whole mask).
MaskBuilder = Callable[[chunks.PutBlob], MaskManifest]
K = TypeVar("K")


def _run_builders(
    builders: Mapping[K, MaskBuilder], put: _TrackingPut, threads: int | None = None
) -> dict[K, MaskManifest]:
    """Run the builders, several structures at once (zlib-ng, zstd and numpy release the GIL); the first error
    is raised once the builders already running have finished, and builders not yet started never run."""
    workers = min(len(builders), mask_threads(threads))
    if workers < 2:
        return {key: build(put) for key, build in builders.items()}
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="masks") as pool:
        futures = {key: pool.submit(build, put) for key, build in builders.items()}
        try:
            return {key: future.result() for key, future in futures.items()}
        except BaseException:
            for future in futures.values():
                future.cancel()
            raise


def _chunking(mask: np.ndarray) -> MaskBuilder:
    return lambda put: chunks.build_manifest(mask, put)


@dataclass(frozen=True)
class PrebuiltMasks:
    """Structure masks already cut into chunks whose blobs are stored, built before the version's transaction."""

    manifests: dict[str, MaskManifest]
    new_bytes: int


def prebuild_masks(
    blobs: BlobStore, loaders: Mapping[str, Callable[[], np.ndarray]], *, threads: int | None = None
) -> PrebuiltMasks:
    """Decode (each loader) and chunk structure masks on threads, storing the chunk blobs; no database work.

    Each mask is dropped as soon as its manifest is built, so a case's masks decode in parallel with only
    `threads` of them in memory at once. Pass the result to `create_version(prebuilt=...)`.
    """

    def builder(loader: Callable[[], np.ndarray]) -> MaskBuilder:
        return lambda put: chunks.build_manifest(loader(), put)

    return prebuild_manifests(blobs, {name: builder(loader) for name, loader in loaders.items()}, threads=threads)


def prebuild_manifests(
    blobs: BlobStore, builders: Mapping[str, MaskBuilder], *, threads: int | None = None
) -> PrebuiltMasks:
    """Run structure mask builders on `threads` threads (default: the CPUs), storing their chunks; no database
    work. Every chunk is stored when this returns; the first error is raised once the running builders ended."""
    put = _TrackingPut(blobs)
    try:
        manifests = _run_builders(builders, put, threads)
    except BaseException:
        put.wait(raise_errors=False)
        raise
    put.wait()
    return PrebuiltMasks(manifests, put.new_bytes)


def create_version(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    *,
    author: Author,
    kind: str,
    message: str = "",
    base_version_id: int | None = None,
    masks: Mapping[str, np.ndarray],
    missing: Collection[str] = (),
    branch: bool = False,
    idempotency_key: str | None = None,
    prebuilt: PrebuiltMasks | None = None,
    builders: Mapping[str, MaskBuilder] | None = None,
) -> LabelVersion:
    """Create a version from whole per-structure masks; structures not given are inherited from the base.

    Without a base, structures that are neither given nor listed as missing are recorded as missing
    (unknown), never as empty. `prebuilt` adds masks already chunked and stored by `prebuild_masks`;
    `builders` adds masks built (decoded, chunked, stored) only once every check of the save has passed.
    """
    existing = _existing_for_key(db, scan, idempotency_key)
    if existing is not None:
        return existing
    workflow.check_can_save(db, scan, author.user_id, kind=kind, branch=branch)
    structures = projects.structures_of(db, scan.project_id)
    base = _check_base(db, scan, base_version_id, branch=branch)
    inherited = entries_by_structure(base)
    shape = scan_shape(scan)
    put = _TrackingPut(blobs)
    entries: dict[int, tuple[str, str | None, int]] = {}
    given: dict[int, MaskBuilder] = {}
    for name, mask in masks.items():
        structure = projects.find_structure(structures, name)
        if structure.id in given:
            raise InvalidInput(f"structure {structure.name!r} was given twice")
        if tuple(mask.shape) != shape:
            raise InvalidInput(f"mask of {name!r} has shape {list(mask.shape)}, the scan has {list(shape)}")
        given[structure.id] = _chunking(mask)
    for name, build in (builders or {}).items():
        structure = projects.find_structure(structures, name)
        if structure.id in given:
            raise InvalidInput(f"structure {structure.name!r} was given twice")
        given[structure.id] = build  # its file's grid is checked against the scan's as it decodes
    ready: dict[int, MaskManifest] = {}
    for name, manifest in (prebuilt.manifests if prebuilt else {}).items():
        structure = projects.find_structure(structures, name)
        if structure.id in given or structure.id in ready:
            raise InvalidInput(f"structure {structure.name!r} was given twice")
        if manifest.shape != shape:
            raise InvalidInput(f"mask of {name!r} has shape {list(manifest.shape)}, the scan has {list(shape)}")
        ready[structure.id] = manifest
    missing_ids = {projects.find_structure(structures, name).id for name in missing}
    try:
        built = _run_builders(given, put) | ready
    except BaseException:
        put.wait(raise_errors=False)
        raise
    for structure in structures:
        if structure.id in built:
            manifest = built[structure.id]
            entries[structure.id] = ("present", put(manifest.to_bytes()), manifest.voxel_count)
        elif structure.id in missing_ids or structure.id not in inherited:
            entries[structure.id] = ("missing", None, 0)
        else:
            row = inherited[structure.id]
            entries[structure.id] = (row.status, row.manifest_digest, row.voxel_count)
    put.durable_before_commit(db)  # every blob is stored before a row names it, and durable before that commits
    return _persist(
        db,
        scan,
        base,
        kind=kind,
        author=author,
        message=message,
        entries=entries,
        new_bytes=put.new_bytes + (prebuilt.new_bytes if prebuilt else 0),
        branch=branch,
        idempotency_key=idempotency_key,
    )


def create_version_from_label_map(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    label_map: np.ndarray,
    *,
    author: Author,
    kind: str,
    message: str = "",
    base_version_id: int | None = None,
    idempotency_key: str | None = None,
) -> LabelVersion:
    """Create a version from a combined integer map: every schema structure gets its mask (maybe empty)."""
    structures = projects.structures_of(db, scan.project_id)
    known = {s.label_value for s in structures}
    values = {int(v) for v in np.unique(label_map)} - {0}
    unknown = sorted(values - known)
    if unknown:
        raise InvalidInput(f"label values {unknown[:20]} are not in the project's schema", unknown_values=unknown[:100])
    masks = {s.name: label_map == s.label_value for s in structures}
    return create_version(
        db,
        blobs,
        scan,
        author=author,
        kind=kind,
        message=message,
        base_version_id=base_version_id,
        masks=masks,
        idempotency_key=idempotency_key,
    )


def save_patch(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    *,
    author: Author,
    base_version_id: int | None,
    patches: Sequence[BoxPatch],
    message: str = "",
    branch: bool = False,
    kind: str = "human",
    idempotency_key: str | None = None,
) -> LabelVersion:
    """Apply boxes of new voxels to a base version and create the child; only touched chunks are stored."""
    existing = _existing_for_key(db, scan, idempotency_key)
    if existing is not None:
        return existing
    if not patches:
        raise InvalidInput("a patch save needs at least one box")
    workflow.check_can_save(db, scan, author.user_id, kind=kind, branch=branch)
    structures = projects.structures_of(db, scan.project_id)
    base = _check_base(db, scan, base_version_id, branch=branch)
    shape = scan_shape(scan)
    put = _TrackingPut(blobs)
    # Without a base (a scan's first version) every structure starts as missing; painted ones become present.
    current: dict[int, tuple[str, str | None, int]] = {s.id: ("missing", None, 0) for s in structures}
    current.update(
        {sid: (row.status, row.manifest_digest, row.voxel_count) for sid, row in entries_by_structure(base).items()}
    )
    # Validate every box before writing any blob, so a refused save leaves nothing behind.
    resolved = []
    for patch in patches:
        structure = projects.find_structure(structures, patch.structure)
        size = (int(patch.box.shape[0]), int(patch.box.shape[1]), int(patch.box.shape[2]))
        chunks.check_box(shape, patch.origin, size)
        resolved.append((structure, patch))
    manifests: dict[int, MaskManifest] = {}
    for structure, patch in resolved:
        manifest = manifests.get(structure.id)
        if manifest is None:
            status, digest, _ = current.get(structure.id, ("missing", None, 0))
            manifest = load_manifest(blobs, digest) if status == "present" and digest else MaskManifest.empty(shape)
        manifests[structure.id] = chunks.apply_box(manifest, patch.origin, patch.box, put.reader(blobs.get_bytes), put)
    for sid, manifest in manifests.items():
        current[sid] = ("present", put(manifest.to_bytes()), manifest.voxel_count)
    put.durable_before_commit(db)  # every blob is stored before a row names it, and durable before that commits
    return _persist(
        db,
        scan,
        base,
        kind=kind,
        author=author,
        message=message,
        entries=current,
        new_bytes=put.new_bytes,
        branch=branch,
        idempotency_key=idempotency_key,
    )
