"""Fusion of a reader set: plan (rows only), compute (no database) and store as the scan's new head."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.core.errors import Conflict, InvalidInput
from backend.imaging import chunks
from backend.imaging import fusion as mask_fusion
from backend.labels import service as labels
from backend.models import LabelVersion, ReaderSet, Scan, User
from backend.projects import service as projects
from backend.quality.service.qa import run_qa
from backend.quality.service.readers import members_of, require_lead

FUSION_METHODS = ("majority", "staple")


@dataclass(frozen=True)
class FusionPlan:
    """What a fusion of a reader set needs, as plain data (a worker computes it outside any transaction).

    ``inputs`` maps each structure to fuse to the manifest digests of the inputs that have it (one digest: the
    mask is taken as is); structures every input left identical to the first input are inherited and absent.
    """

    reader_set_id: int
    scan_id: int
    method: str
    version_ids: list[int]
    missing: list[str]
    inputs: dict[str, list[str]]


@dataclass
class FusionResult:
    """The fused masks and, for STAPLE, each input's estimated sensitivity per structure."""

    masks: dict[str, np.ndarray]
    sensitivity: dict[str, list[float | None]]


def check_fusion(db: Session, reader_set: ReaderSet, actor: User, method: str) -> None:
    """Refuse a fusion that cannot run: not a lead, unknown method, set still open or already fused."""
    require_lead(db, actor, reader_set.project_id, "fuse a reader set")
    if method not in FUSION_METHODS:
        raise InvalidInput(f"unknown fusion method {method!r}; use one of {list(FUSION_METHODS)}")
    if reader_set.status == "fused":
        raise Conflict(f"reader set {reader_set.id} is already fused (version {reader_set.fusion_version_id})")
    if reader_set.status == "open":
        raise Conflict(f"reader set {reader_set.id} is still open: not every reader has submitted")


def plan_fusion(db: Session, reader_set: ReaderSet, actor: User, method: str) -> FusionPlan:
    """Check the fusion and decide, per structure, what to fuse (reads only rows, decodes nothing).

    Structures missing in every input stay missing; otherwise the inputs that have the structure are fused
    (one input, or identical inputs, are taken as is; identical to the first input: inherited).
    """
    check_fusion(db, reader_set, actor, method)
    members = members_of(db, reader_set)
    versions = [labels.get_version(db, m.version_id) for m in members if m.version_id is not None]
    structures = projects.structures_of(db, reader_set.project_id)
    first_entries = {e.structure_id: e for e in versions[0].structures}
    missing: list[str] = []
    inputs: dict[str, list[str]] = {}
    for structure in structures:
        entries = [e for v in versions for e in v.structures if e.structure_id == structure.id]
        present = [e for e in entries if e.status == "present" and e.manifest_digest]
        first = first_entries.get(structure.id)
        if not present:
            missing.append(structure.name)
            continue
        digests = {e.manifest_digest for e in present}
        if len(digests) == 1 and first is not None and first.status == "present" and first.manifest_digest in digests:
            continue  # the parent (first input) already holds the fused mask: inherited, nothing decoded
        if len(present) == 1 or len(digests) == 1:
            # One input, or every reader left the mask identical: any fusion returns it unchanged.
            inputs[structure.name] = [str(present[0].manifest_digest)]
            continue
        inputs[structure.name] = [str(e.manifest_digest) for e in present]
    return FusionPlan(
        reader_set_id=reader_set.id,
        scan_id=reader_set.scan_id,
        method=method,
        version_ids=[v.id for v in versions],
        missing=missing,
        inputs=inputs,
    )


def compute_fusion(
    blobs: BlobStore, plan: FusionPlan, progress: Callable[[int, int, str], None] | None = None
) -> FusionResult:
    """Decode and fuse each planned structure (no database); `progress(done, total, structure)` after each."""
    result = FusionResult(masks={}, sensitivity={})
    total = len(plan.inputs)
    for done, (name, digests) in enumerate(plan.inputs.items(), start=1):
        masks = [chunks.assemble_mask(labels.load_manifest(blobs, d), blobs.get_bytes) for d in digests]
        if len(masks) == 1:
            result.masks[name] = masks[0]
        elif plan.method == "majority":
            result.masks[name] = mask_fusion.majority_vote(masks)
        else:
            stapled = mask_fusion.staple(masks)
            result.masks[name] = stapled.mask
            result.sensitivity[name] = stapled.sensitivity
        if progress is not None:
            progress(done, total, name)
    return result


def fusion_version_for_key(db: Session, reader_set: ReaderSet, idempotency_key: str) -> LabelVersion | None:
    """The set's fusion version if it was written under this idempotency key (a rerun of the same job)."""
    if reader_set.status != "fused" or reader_set.fusion_version_id is None:
        return None
    version = db.get(LabelVersion, reader_set.fusion_version_id)
    return version if version is not None and version.idempotency_key == idempotency_key else None


def store_fusion(
    db: Session,
    blobs: BlobStore,
    reader_set: ReaderSet,
    actor: User,
    plan: FusionPlan,
    result: FusionResult,
    *,
    idempotency_key: str | None = None,
) -> LabelVersion:
    """Write the fused masks as a `fusion` version that becomes the head (a branch if someone saved meanwhile).

    Its parent is the first reader's version; the message and the set list every input version. With an
    idempotency key, a set already fused under that key returns its version unchanged.
    """
    if idempotency_key is not None:
        existing = fusion_version_for_key(db, reader_set, idempotency_key)
        if existing is not None:
            return existing
    check_fusion(db, reader_set, actor, plan.method)
    current = [m.version_id for m in members_of(db, reader_set) if m.version_id is not None]
    if reader_set.id != plan.reader_set_id or current != plan.version_ids:
        raise Conflict(f"reader set {reader_set.id} changed since its fusion was planned; fuse it again")
    scan = db.get(Scan, reader_set.scan_id)
    assert scan is not None
    method = plan.method
    ids = ", ".join(str(v) for v in plan.version_ids)
    head_before = scan.head_version_id
    version = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=actor.id),
        kind="fusion",
        message=f"fusion ({method}) of reader set {reader_set.id}: versions {ids}",
        base_version_id=plan.version_ids[0],
        masks=result.masks,
        missing=plan.missing,
        branch=True,
        idempotency_key=idempotency_key,
    )
    _make_head(db, scan, version, head_before)
    reader_set.status = "fused"
    reader_set.fusion_method = method
    reader_set.fusion_version_id = version.id
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="reader_set.fuse",
        entity_type="reader_set",
        entity_id=reader_set.id,
        project_id=reader_set.project_id,
        scan_id=reader_set.scan_id,
        details={
            "method": method,
            "version_id": version.id,
            "input_version_ids": list(plan.version_ids),
            "staple_sensitivity": result.sensitivity,
        },
    )
    run_qa(db, blobs, scan, version, actor=actor)
    return version


def fuse(db: Session, blobs: BlobStore, reader_set: ReaderSet, actor: User, method: str) -> LabelVersion:
    """Fuse the readers' masks (majority vote or STAPLE) into a `fusion` version that becomes the head, here and
    now (the API queues a `fuse` job on the cpu queue instead; its worker runs these same three steps)."""
    plan = plan_fusion(db, reader_set, actor, method)
    return store_fusion(db, blobs, reader_set, actor, plan, compute_fusion(blobs, plan))


def _make_head(db: Session, scan: Scan, version: LabelVersion, expected_head: int | None) -> None:
    """Move the scan's head to the fused version unless someone saved meanwhile (then it stays a branch)."""
    condition = Scan.head_version_id.is_(None) if expected_head is None else Scan.head_version_id == expected_head
    moved = db.execute(update(Scan).where(Scan.id == scan.id, condition).values(head_version_id=version.id))
    if moved.rowcount == 1:  # type: ignore[attr-defined]
        version.is_branch = False
        db.flush()
    db.refresh(scan, attribute_names=["head_version_id"])


def fusion_inputs(db: Session, version_ids: Iterable[int]) -> dict[int, list[int]]:
    """For each of these versions that fused a reader set: every reader version it fused, in the readers' order.

    A version has one ``parent_id`` (the first input); this gives a fusion's whole lineage.
    """
    wanted = set(version_ids)
    if not wanted:
        return {}
    fused = db.scalars(select(ReaderSet).where(ReaderSet.fusion_version_id.in_(wanted)))
    return {
        int(s.fusion_version_id): [m.version_id for m in members_of(db, s) if m.version_id is not None]
        for s in fused
        if s.fusion_version_id is not None
    }
