"""QA runs: gather what the rules look at from a version's rows and chunks, store and supersede findings."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sqlalchemy import delete, func, select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput
from backend.imaging import chunks, nifti, qa_rules
from backend.imaging.nifti import MaskValues
from backend.labels import service as labels
from backend.models import LabelVersion, LabelVersionStructure, Project, QAFinding, Scan, Structure, User
from backend.projects import service as projects
from backend.quality.service.expected import expected_structures
from backend.quality.service.findings import refresh_open_findings
from backend.quality.service.settings import qa_config


def _majority_orientation(db: Session, project_id: int) -> str | None:
    rows = db.execute(
        select(Scan.orientation, func.count()).where(Scan.project_id == project_id).group_by(Scan.orientation)
    ).all()
    if not rows:
        return None
    # Most scans wins; a tie prefers RAS, then the alphabetical first code.
    return str(min(rows, key=lambda r: (-int(r[1]), r[0] != "RAS", r[0]))[0])


def _read_cropped(
    blobs: BlobStore, entry: LabelVersionStructure
) -> tuple[np.ndarray, tuple[slice, slice, slice]] | None:
    """A mask cropped to the box of its non-empty chunks, and that box (None for an empty mask)."""
    if entry.status != "present" or not entry.manifest_digest or entry.voxel_count == 0:
        return None
    manifest = labels.load_manifest(blobs, entry.manifest_digest)
    if not manifest.entries:
        return None
    boxes = [chunks.chunk_slices(e.flat_index, manifest.shape, manifest.chunk) for e in manifest.entries]
    lo = tuple(min(b[axis].start for b in boxes) for axis in range(3))
    hi = tuple(max(b[axis].stop for b in boxes) for axis in range(3))
    origin = (lo[0], lo[1], lo[2])
    size = (hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2])
    region = (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))
    return chunks.read_region(manifest, origin, size, blobs.get_bytes), region


def _aorta_mean_hu(
    blobs: BlobStore, scan: Scan, entry: LabelVersionStructure, volume: np.ndarray | None = None
) -> float | None:
    """Mean HU of the CT inside the aorta mask (the CT is decoded once, unless the caller has it decoded already;
    the mask only where it has voxels)."""
    cropped = _read_cropped(blobs, entry)
    if cropped is None:
        return None
    aorta, region = cropped
    if volume is None:
        volume = nifti.load_nifti_bytes(blobs.get_bytes(scan.image_digest), f"{scan.case_id}.nii.gz").data
    if tuple(volume.shape) != tuple(scan.shape):
        return None
    return qa_rules.mean_inside(volume[region], aorta)


def _outside_counts(
    blobs: BlobStore, entries: Mapping[str, LabelVersionStructure], parents: Mapping[str, str]
) -> dict[str, tuple[int, int]]:
    """(voxels outside the parent, voxels) per present sub-structure, decoding only chunks that differ."""
    out = {}
    for child, parent in parents.items():
        c, p = entries.get(child), entries.get(parent)
        if c is None or p is None or c.status != "present" or p.status != "present" or not c.manifest_digest:
            continue
        if c.voxel_count == 0:
            out[child] = (0, 0)
            continue
        inside = 0
        if p.manifest_digest and p.voxel_count:
            inside = chunks.intersection_count(
                labels.load_manifest(blobs, c.manifest_digest),
                labels.load_manifest(blobs, p.manifest_digest),
                blobs.get_bytes,
            )
        out[child] = (int(c.voxel_count) - inside, int(c.voxel_count))
    return out


def qa_input(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    version: LabelVersion,
    config: qa_rules.QAConfig,
    mask_values: Mapping[str, MaskValues] | None = None,
    volume: np.ndarray | None = None,
) -> qa_rules.QAInput:
    """Gather what the rules look at: counts from the version rows, sub-structure/parent overlaps from the
    chunk manifests, the lesion mask cropped to its chunks, and the mean HU inside the aorta (in `volume`, the
    scan's decoded CT, when the caller has it)."""
    structures = projects.structures_of(db, scan.project_id)
    by_id = {s.id: s for s in structures}
    entries = {by_id[e.structure_id].name: e for e in version.structures if e.structure_id in by_id}
    stats = {
        s.name: qa_rules.StructureStats(
            status=entries[s.name].status if s.name in entries else "missing",
            voxels=int(entries[s.name].voxel_count) if s.name in entries else 0,
            volume_ml=float(entries[s.name].volume_ml) if s.name in entries else 0.0,
        )
        for s in structures
    }
    parents = {s.name: s.inside for s in structures if s.inside and s.inside in stats}
    masks: dict[str, np.ndarray] = {}
    lesion = entries.get(qa_rules.LESION)
    if lesion is not None and "small_lesion" not in config.disabled_rules:
        cropped = _read_cropped(blobs, lesion)
        if cropped is not None:
            masks[qa_rules.LESION] = cropped[0]
    aorta_hu = None
    aorta = entries.get(qa_rules.AORTA)
    if scan.phase and aorta is not None and "phase_mismatch" not in config.disabled_rules:
        aorta_hu = _aorta_mean_hu(blobs, scan, aorta, volume)
    outside = {} if "outside_parent" in config.disabled_rules else _outside_counts(blobs, entries, parents)
    return qa_rules.QAInput(
        structures=stats,
        parents=parents,
        masks=masks,
        tumor=scan.tumor,
        phase=scan.phase,
        orientation=scan.orientation,
        expected_orientation=config.expected_orientation or _majority_orientation(db, scan.project_id),
        aorta_mean_hu=aorta_hu,
        mask_values=mask_values,
        outside_counts=outside,
    )


def _structure_ids(db: Session, project_id: int) -> dict[str, Structure]:
    return {s.name: s for s in projects.structures_of(db, project_id)}


def _ancestor_ids(db: Session, version: LabelVersion, limit: int = 10_000) -> list[int]:
    ids: list[int] = []
    current = version
    while current.parent_id is not None and len(ids) < limit:
        ids.append(current.parent_id)
        parent = db.get(LabelVersion, current.parent_id)
        if parent is None:
            break
        current = parent
    return ids


def run_qa(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    version: LabelVersion,
    *,
    mask_values: Mapping[str, MaskValues] | None = None,
    actor: User | None = None,
    volume: np.ndarray | None = None,
) -> list[QAFinding]:
    """Run the QA rules on a version and store its open findings (idempotent per version).

    A rerun replaces the version's open findings of the rules it evaluated (``non_binary_mask`` is only
    evaluated when the import's `mask_values` are given, so its findings survive a later rerun); a finding a
    person resolved or dismissed is not raised again for the same version. Open findings of the version's
    ancestors are closed as superseded (resolved, ``details.superseded_by``). Returns the version's open
    findings and updates ``ScanTask.open_findings``.
    """
    if version.scan_id != scan.id:
        raise InvalidInput(f"version {version.id} is not a version of scan {scan.id}")
    project = db.get(Project, scan.project_id)
    assert project is not None
    config = qa_config(project)
    # `volume`: the scan's CT already decoded by the caller (an import), so it is not decoded a second time.
    findings = qa_rules.run_rules(qa_input(db, blobs, scan, version, config, mask_values, volume), config)
    if any(f.rule == "structure_missing" for f in findings):
        # "Missing" matters only for a structure the project expects (backend.quality.service.expected).
        expected = expected_structures(db, project)
        findings = [f for f in findings if f.rule != "structure_missing" or f.structure in expected]
    by_name = _structure_ids(db, scan.project_id)
    replaced = delete(QAFinding).where(QAFinding.version_id == version.id, QAFinding.status == "open")
    if mask_values is None:
        replaced = replaced.where(QAFinding.rule != "non_binary_mask")
    db.execute(replaced)
    closed = {
        (rule, structure_id)
        for rule, structure_id in db.execute(
            select(QAFinding.rule, QAFinding.structure_id).where(
                QAFinding.version_id == version.id, QAFinding.status != "open"
            )
        )
    }
    kept_open = {
        (rule, structure_id)
        for rule, structure_id in db.execute(
            select(QAFinding.rule, QAFinding.structure_id).where(
                QAFinding.version_id == version.id, QAFinding.status == "open"
            )
        )
    }
    for finding in findings:
        structure = by_name.get(finding.structure) if finding.structure else None
        key = (finding.rule, structure.id if structure else None)
        if key in closed or key in kept_open:
            continue
        db.add(
            QAFinding(
                project_id=scan.project_id,
                scan_id=scan.id,
                version_id=version.id,
                rule=finding.rule,
                structure_id=structure.id if structure else None,
                severity=finding.severity,
                message=finding.message[:2000],
                details=finding.details,
                status="open",
            )
        )
    db.flush()
    ancestors = _ancestor_ids(db, version)
    if ancestors:
        for old in db.scalars(select(QAFinding).where(QAFinding.version_id.in_(ancestors), QAFinding.status == "open")):
            old.status = "resolved"
            old.details = {**(old.details or {}), "superseded_by": version.id}
    db.flush()
    open_now = list(
        db.scalars(
            select(QAFinding)
            .where(QAFinding.version_id == version.id, QAFinding.status == "open")
            .order_by(QAFinding.id)
        )
    )
    refresh_open_findings(db, scan)
    audit.record(
        db,
        actor_user_id=actor.id if actor else None,
        action="qa.run",
        entity_type="label_version",
        entity_id=version.id,
        project_id=scan.project_id,
        scan_id=scan.id,
        details={"open_findings": len(open_now), "rules": sorted({f.rule for f in open_now})},
    )
    return open_now


def run_qa_head(db: Session, blobs: BlobStore, scan: Scan, version_id: int | None, actor: User) -> list[QAFinding]:
    """Run QA on a given version of the scan, or on its head."""
    target = version_id if version_id is not None else scan.head_version_id
    if target is None:
        raise InvalidInput(f"scan {scan.id} has no label version to check")
    version = db.get(LabelVersion, target)
    if version is None or version.scan_id != scan.id:
        raise InvalidInput(f"version {target} is not a version of scan {scan.id}")
    return run_qa(db, blobs, scan, version, actor=actor)
