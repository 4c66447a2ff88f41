"""Quality: multi-reader sets (blinding, agreement, adjudication, fusion) and QA rules on label versions.

Settings (in ``project.settings["workflow"]``, validated by `validate_settings`):

- ``multi_reader``: ``{"agreement_threshold": 0.8 | {"default": 0.8, "<structure>": x}, "nsd_tolerance_mm": 1.0}``;
  the default per-structure threshold is 0.8, and 0.2 for ``pancreatic_lesion`` (PanTS: tumour Dice < 20 %
  goes to senior review).
- ``qa``: ``{"small_lesion_voxels": 50, "pancreas_parts_ratio": 1.5, "outside_parent_fraction": 0.01,
  "expected_orientation": "RAS" | null, "non_contrast_max_hu": 120, "contrast_min_hu": {"arterial": 100,
  "venous": 100, "delay": 70}, "disabled_rules": [...]}``.
- ``plausible_volume_ml``: ``{"<structure>": [min | null, max | null]}``, merged over the PanTS defaults.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.core.errors import Conflict, InvalidInput, NotFound, PermissionDenied
from backend.evaluation import metrics
from backend.imaging import chunks, fusion, nifti, qa_rules
from backend.imaging.nifti import MaskValues
from backend.labels import service as labels
from backend.models import (
    LabelVersion,
    LabelVersionStructure,
    Project,
    QAFinding,
    ReaderSet,
    ReaderSetMember,
    Scan,
    ScanTask,
    Structure,
    User,
)
from backend.models.workflow import FINDING_STATUSES
from backend.projects import service as projects
from backend.workflow import service as workflow

DEFAULT_AGREEMENT_THRESHOLD = 0.8
DEFAULT_STRUCTURE_THRESHOLDS: dict[str, float] = {"pancreatic_lesion": 0.2}
LEAD_ROLES = frozenset({"lead", "admin"})
READER_ROLES = frozenset({"annotator", "reviewer", "lead", "admin"})
# Sets whose readers are still blinded from each other.
BLINDED_STATUSES = ("open",)
FUSION_METHODS = ("majority", "staple")

_MULTI_READER_KEYS = {"agreement_threshold", "nsd_tolerance_mm", "sample_fraction", "readers", "seed"}
_QA_NUMBER_KEYS = {
    "small_lesion_voxels": (1.0, 1e9),
    "pancreas_parts_ratio": (1.0, 1e6),
    "outside_parent_fraction": (0.0, 1.0),
    "non_contrast_max_hu": (-1024.0, 4000.0),
}
_QA_KEYS = {*_QA_NUMBER_KEYS, "expected_orientation", "contrast_min_hu", "disabled_rules"}


# ---------------------------------------------------------------------------------------------------- settings


def _number(value: Any, where: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not np.isfinite(value):
        raise InvalidInput(f"{where} must be a number")
    if not low <= float(value) <= high:
        raise InvalidInput(f"{where} must be within [{low:g}, {high:g}], got {value}")
    return float(value)


def _validate_multi_reader(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput("multi_reader must be an object")
    unknown = set(value) - _MULTI_READER_KEYS
    if unknown:
        raise InvalidInput(f"unknown multi_reader settings {sorted(unknown)}; known: {sorted(_MULTI_READER_KEYS)}")
    out: dict[str, Any] = {}
    if "agreement_threshold" in value:
        threshold = value["agreement_threshold"]
        if isinstance(threshold, dict):
            if not threshold:
                raise InvalidInput("multi_reader.agreement_threshold must not be an empty object")
            out["agreement_threshold"] = {
                str(k): _number(v, f"multi_reader.agreement_threshold.{k}", 0.0, 1.0) for k, v in threshold.items()
            }
        else:
            out["agreement_threshold"] = _number(threshold, "multi_reader.agreement_threshold", 0.0, 1.0)
    if "nsd_tolerance_mm" in value:
        out["nsd_tolerance_mm"] = _number(value["nsd_tolerance_mm"], "multi_reader.nsd_tolerance_mm", 0.0, 100.0)
    if "sample_fraction" in value:
        fraction = _number(value["sample_fraction"], "multi_reader.sample_fraction", 0.0, 1.0)
        if fraction == 0:
            raise InvalidInput("multi_reader.sample_fraction must be above 0")
        out["sample_fraction"] = fraction
    for key, low, high in (("readers", 2, 20), ("seed", 0, 2**31 - 1)):
        if key in value:
            number = value[key]
            if isinstance(number, bool) or not isinstance(number, int) or not low <= number <= high:
                raise InvalidInput(f"multi_reader.{key} must be a whole number within [{low}, {high}]")
            out[key] = number
    return out


def _validate_qa(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise InvalidInput("qa must be an object")
    unknown = set(value) - _QA_KEYS
    if unknown:
        raise InvalidInput(f"unknown qa settings {sorted(unknown)}; known: {sorted(_QA_KEYS)}")
    out: dict[str, Any] = {}
    for key, (low, high) in _QA_NUMBER_KEYS.items():
        if key in value:
            number = _number(value[key], f"qa.{key}", low, high)
            if key == "small_lesion_voxels" and not number.is_integer():
                raise InvalidInput("qa.small_lesion_voxels must be a whole number")
            out[key] = int(number) if key == "small_lesion_voxels" else number
    if "expected_orientation" in value:
        code = value["expected_orientation"]
        if code is not None:
            letters = code.upper() if isinstance(code, str) else ""
            axes = sorted("x" if c in "RL" else "y" if c in "AP" else "z" if c in "SI" else "?" for c in letters)
            if axes != ["x", "y", "z"]:
                raise InvalidInput(
                    "qa.expected_orientation must be a 3-letter axis code naming each axis once "
                    "(R/L, A/P, S/I), such as 'RAS', or null"
                )
            code = letters
        out["expected_orientation"] = code
    if "contrast_min_hu" in value:
        phases = value["contrast_min_hu"]
        known = set(qa_rules.DEFAULT_CONTRAST_MIN_HU)
        if not isinstance(phases, dict) or set(phases) - known:
            raise InvalidInput(f"qa.contrast_min_hu maps phases {sorted(known)} to HU")
        out["contrast_min_hu"] = {k: _number(v, f"qa.contrast_min_hu.{k}", -1024, 4000) for k, v in phases.items()}
    if "disabled_rules" in value:
        rules = value["disabled_rules"]
        if not isinstance(rules, list) or any(r not in qa_rules.RULES for r in rules):
            raise InvalidInput(f"qa.disabled_rules is a list of rule ids from {list(qa_rules.RULES)}")
        out["disabled_rules"] = sorted(set(rules))
    return out


def _validate_volumes(value: Any) -> dict[str, list[float | None]]:
    if not isinstance(value, dict):
        raise InvalidInput("plausible_volume_ml must be an object of structure -> [min_ml|null, max_ml|null]")
    out: dict[str, list[float | None]] = {}
    for name, bounds in value.items():
        where = f"plausible_volume_ml.{name}"
        if not isinstance(bounds, list | tuple) or len(bounds) != 2:
            raise InvalidInput(f"{where} must be [min_ml|null, max_ml|null]")
        low, high = (None if b is None else _number(b, where, 0.0, 1e7) for b in bounds)
        if low is not None and high is not None and low > high:
            raise InvalidInput(f"{where}: the minimum {low:g} exceeds the maximum {high:g}")
        out[str(name)] = [low, high]
    return out


def validate_settings(settings: dict[str, Any]) -> dict[str, Any]:
    """Validate and normalise the `multi_reader`, `qa` and `plausible_volume_ml` keys (others pass through).

    Raises InvalidInput (422) with a message naming the offending key.
    """
    if not isinstance(settings, dict):
        raise InvalidInput("workflow settings must be an object")
    out = dict(settings)
    if "multi_reader" in settings:
        out["multi_reader"] = _validate_multi_reader(settings["multi_reader"])
    if "qa" in settings:
        out["qa"] = _validate_qa(settings["qa"])
    if "plausible_volume_ml" in settings:
        out["plausible_volume_ml"] = _validate_volumes(settings["plausible_volume_ml"])
    return out


def _quality_settings(project: Project) -> dict[str, Any]:
    """The project's quality settings, from its `settings["workflow"]` section."""
    raw = (project.settings or {}).get("workflow")
    section: dict[str, Any] = raw if isinstance(raw, dict) else {}
    keys = ("multi_reader", "qa", "plausible_volume_ml")
    merged: dict[str, Any] = {key: section[key] for key in keys if key in section}
    # Settings stored before validation existed (or written directly) must not break QA: a bad section is
    # ignored and its defaults apply.
    valid: dict[str, Any] = {}
    for key, value in merged.items():
        try:
            valid.update(validate_settings({key: value}))
        except InvalidInput:
            continue
    return valid


def agreement_threshold(project: Project, structure: str) -> float:
    """The agreement (mean pairwise Dice) below which a structure goes to adjudication."""
    configured = _quality_settings(project).get("multi_reader", {}).get("agreement_threshold")
    if isinstance(configured, dict):
        if structure in configured:
            return float(configured[structure])
        if structure in DEFAULT_STRUCTURE_THRESHOLDS:
            return DEFAULT_STRUCTURE_THRESHOLDS[structure]
        return float(configured.get("default", DEFAULT_AGREEMENT_THRESHOLD))
    if isinstance(configured, int | float):
        return float(configured)
    return DEFAULT_STRUCTURE_THRESHOLDS.get(structure, DEFAULT_AGREEMENT_THRESHOLD)


def qa_config(project: Project) -> qa_rules.QAConfig:
    """The QA thresholds of a project (defaults overridden by its settings)."""
    stored = _quality_settings(project)
    qa = stored.get("qa", {}) or {}
    volumes: dict[str, tuple[float | None, float | None]] = dict(qa_rules.DEFAULT_PLAUSIBLE_VOLUME_ML)
    for name, bounds in (stored.get("plausible_volume_ml") or {}).items():
        volumes[name] = (bounds[0], bounds[1])
    contrast = dict(qa_rules.DEFAULT_CONTRAST_MIN_HU)
    contrast.update(qa.get("contrast_min_hu", {}))
    return qa_rules.QAConfig(
        small_lesion_voxels=int(qa.get("small_lesion_voxels", 50)),
        pancreas_parts_ratio=float(qa.get("pancreas_parts_ratio", 1.5)),
        outside_parent_fraction=float(qa.get("outside_parent_fraction", 0.01)),
        expected_orientation=qa.get("expected_orientation"),
        contrast_min_hu=contrast,
        non_contrast_max_hu=float(qa.get("non_contrast_max_hu", qa_rules.DEFAULT_NON_CONTRAST_MAX_HU)),
        plausible_volume_ml=volumes,
        disabled_rules=frozenset(qa.get("disabled_rules", [])),
    )


# ---------------------------------------------------------------------------------------------------- tasks


def _now() -> datetime:
    return datetime.now(UTC)


def scan_task(db: Session, scan: Scan) -> ScanTask:
    """The scan's workflow task (created when the scan has none yet)."""
    return workflow.ensure_task(db, scan)


def _send_to_adjudication(db: Session, scan: Scan, actor: User | None, reader_set: ReaderSet) -> None:
    """Move the scan's task to 'adjudication' (a transition row and a `task.adjudicate` audit event)."""
    low = below_threshold(reader_set)
    reason = f"reader set {reader_set.id}: agreement below threshold for {', '.join(low)}"
    workflow.adjudicate(db, scan, actor_user_id=actor.id if actor else None, reason=reason)
    db.flush()


# ---------------------------------------------------------------------------------------------------- reader sets


def is_lead(db: Session, user: User, project_id: int) -> bool:
    """True for the project's leads and admins (who see every reader's version)."""
    return projects.role_of(db, user, project_id) in LEAD_ROLES


def require_lead(db: Session, user: User, project_id: int, action: str) -> None:
    """Refuse an action reserved for leads."""
    if not is_lead(db, user, project_id):
        raise PermissionDenied(f"only a project lead may {action}")


def _sample_scans(db: Session, project: Project, fraction: float, seed: int) -> list[Scan]:
    busy = select(ReaderSet.scan_id).where(ReaderSet.project_id == project.id, ReaderSet.status != "fused")
    candidates = list(
        db.scalars(
            select(Scan).where(Scan.project_id == project.id, Scan.id.not_in(busy)).order_by(Scan.case_id, Scan.id)
        )
    )
    if not candidates:
        raise InvalidInput("every scan of the project is already in an unfinished reader set (or there is none)")
    count = max(1, round(fraction * len(candidates)))
    return sorted(random.Random(seed).sample(candidates, count), key=lambda s: s.id)


def _listed_scans(db: Session, project: Project, scan_ids: Sequence[int]) -> list[Scan]:
    if len(set(scan_ids)) != len(scan_ids):
        raise InvalidInput("a scan is listed twice")
    found = {s.id: s for s in db.scalars(select(Scan).where(Scan.id.in_(scan_ids), Scan.project_id == project.id))}
    unknown = [sid for sid in scan_ids if sid not in found]
    if unknown:
        raise InvalidInput(f"scans {unknown[:20]} are not in project {project.slug!r}", unknown_scan_ids=unknown)
    busy = sorted(
        db.scalars(
            select(ReaderSet.scan_id).where(
                ReaderSet.scan_id.in_(scan_ids), ReaderSet.status.in_(("open", "complete", "adjudication"))
            )
        )
    )
    if busy:
        raise Conflict(f"scans {busy[:20]} already have an unfinished reader set", scan_ids=busy)
    return [found[sid] for sid in scan_ids]


def _eligible_readers(db: Session, project: Project) -> dict[int, tuple[User, str]]:
    return {user.id: (user, role) for user, role in projects.list_members(db, project.id) if role in READER_ROLES}


def create_reader_sets(
    db: Session,
    project: Project,
    actor: User,
    *,
    scan_ids: Sequence[int] | None = None,
    sample_fraction: float | None = None,
    readers: Sequence[int] | None = None,
    n_readers: int | None = None,
    seed: int = 0,
) -> list[ReaderSet]:
    """Open one reader set per chosen scan; readers are the given users or `n_readers` auto-picked annotators.

    Auto-picking spreads the work: for each scan the annotators with the fewest unfinished reader sets are
    taken, ties broken by a `seed`-ed shuffle (reproducible). Each set starts from the scan's head version.
    """
    require_lead(db, actor, project.id, "create reader sets")
    # Whatever the request leaves out comes from the project's multi-reader setting (its study design).
    configured = _quality_settings(project).get("multi_reader", {})
    if scan_ids is None and sample_fraction is None:
        sample_fraction = configured.get("sample_fraction")
        seed = int(configured.get("seed", seed))
        if sample_fraction is None:
            raise InvalidInput(
                "give scan_ids or sample_fraction, or set workflow.multi_reader.sample_fraction in the project settings"
            )
    if readers is None and n_readers is None:
        n_readers = configured.get("readers")
        if n_readers is None:
            raise InvalidInput(
                "give readers or n_readers, or set workflow.multi_reader.readers in the project settings"
            )
    if (scan_ids is None) == (sample_fraction is None):
        raise InvalidInput("give either scan_ids or sample_fraction")
    if (readers is None) == (n_readers is None):
        raise InvalidInput("give either readers (user ids) or n_readers")
    eligible = _eligible_readers(db, project)
    if readers is not None:
        if len(set(readers)) != len(readers) or len(readers) < 2:
            raise InvalidInput("readers must list at least two distinct users")
        strangers = [uid for uid in readers if uid not in eligible]
        if strangers:
            raise InvalidInput(f"users {strangers} are not members of the project who may annotate", user_ids=strangers)
    else:
        assert n_readers is not None
        if n_readers < 2:
            raise InvalidInput("n_readers must be at least 2")
        annotators = sorted(uid for uid, (_, role) in eligible.items() if role == "annotator")
        if len(annotators) < n_readers:
            raise InvalidInput(
                f"the project has {len(annotators)} annotator(s); {n_readers} readers were asked for",
                annotators=len(annotators),
            )
    if scan_ids is not None:
        chosen = _listed_scans(db, project, scan_ids)
    else:
        assert sample_fraction is not None
        if not 0 < sample_fraction <= 1:
            raise InvalidInput("sample_fraction must be within (0, 1]")
        chosen = _sample_scans(db, project, sample_fraction, seed)
    rng = random.Random(seed)
    load: Counter[int] = Counter(
        db.scalars(
            select(ReaderSetMember.user_id)
            .join(ReaderSet, ReaderSet.id == ReaderSetMember.reader_set_id)
            .where(ReaderSet.project_id == project.id, ReaderSet.status.in_(("open", "complete", "adjudication")))
        )
    )
    created = []
    for scan in chosen:
        if readers is not None:
            picked = list(readers)
        else:
            assert n_readers is not None
            order = {uid: rng.random() for uid in annotators}
            picked = sorted(annotators, key=lambda uid: (load[uid], order[uid]))[:n_readers]
        load.update(picked)
        reader_set = ReaderSet(
            project_id=project.id,
            scan_id=scan.id,
            base_version_id=scan.head_version_id,
            status="open",
            agreement={},
            created_by=actor.id,
        )
        db.add(reader_set)
        db.flush()
        for uid in picked:
            db.add(ReaderSetMember(reader_set_id=reader_set.id, user_id=uid))
        audit.record(
            db,
            actor_user_id=actor.id,
            action="reader_set.create",
            entity_type="reader_set",
            entity_id=reader_set.id,
            project_id=project.id,
            scan_id=scan.id,
            details={"readers": picked, "base_version_id": scan.head_version_id, "seed": seed},
        )
        created.append(reader_set)
    db.flush()
    return created


def get_reader_set(db: Session, reader_set_id: int) -> ReaderSet:
    """A reader set by id."""
    reader_set = db.get(ReaderSet, reader_set_id)
    if reader_set is None:
        raise NotFound(f"reader set {reader_set_id} not found")
    return reader_set


def members_of(db: Session, reader_set: ReaderSet) -> list[ReaderSetMember]:
    """The readers of a set, in the order they were picked."""
    return list(
        db.scalars(
            select(ReaderSetMember).where(ReaderSetMember.reader_set_id == reader_set.id).order_by(ReaderSetMember.id)
        )
    )


def reader_sets_of_scan(db: Session, scan: Scan) -> list[ReaderSet]:
    """Every reader set of a scan, oldest first."""
    return list(db.scalars(select(ReaderSet).where(ReaderSet.scan_id == scan.id).order_by(ReaderSet.id)))


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


def users_by_id(db: Session, ids: Iterable[int]) -> dict[int, User]:
    """Users by id (for display names)."""
    wanted = set(ids)
    if not wanted:
        return {}
    return {user.id: user for user in db.scalars(select(User).where(User.id.in_(wanted)))}


def is_blinded(reader_set: ReaderSet, reader_ids: Iterable[int], viewer: User, viewer_is_lead: bool) -> bool:
    """Whether the viewer must not see the other readers' work of this set yet.

    While a set is open its readers are blinded from each other, whatever their role: a lead who reads too is a
    reader first (seeing the others' masks would bias the reading the study measures). A lead who does not read
    oversees the set and sees everything.
    """
    if reader_set.status not in BLINDED_STATUSES:
        return False
    return not viewer_is_lead or viewer.id in set(reader_ids)


def visible_member_version(member: ReaderSetMember, viewer: User, blinded: bool) -> int | None:
    """A member's submitted version id as the viewer may see it (hidden from other readers while blinded)."""
    if blinded and member.user_id != viewer.id:
        return None
    return member.version_id


def submit(db: Session, blobs: BlobStore, reader_set: ReaderSet, user: User, version_id: int) -> ReaderSet:
    """A reader hands in their version; when every reader has, agreement is computed (maybe → adjudication)."""
    member = db.scalar(
        select(ReaderSetMember).where(
            ReaderSetMember.reader_set_id == reader_set.id, ReaderSetMember.user_id == user.id
        )
    )
    if member is None:
        raise PermissionDenied(f"you are not a reader of reader set {reader_set.id}")
    if reader_set.status != "open":
        raise Conflict(f"reader set {reader_set.id} is {reader_set.status}; submissions are closed")
    version = db.get(LabelVersion, version_id)
    if version is None or version.scan_id != reader_set.scan_id:
        raise InvalidInput(f"version {version_id} is not a version of scan {reader_set.scan_id}")
    if version.author_user_id != user.id:
        raise InvalidInput(f"version {version_id} was not saved by you; submit your own version")
    member.version_id = version.id
    member.submitted_at = _now()
    db.flush()
    audit.record(
        db,
        actor_user_id=user.id,
        action="reader_set.submit",
        entity_type="reader_set",
        entity_id=reader_set.id,
        project_id=reader_set.project_id,
        scan_id=reader_set.scan_id,
        details={"version_id": version.id},
    )
    members = members_of(db, reader_set)
    if all(m.version_id is not None for m in members):
        _complete(db, blobs, reader_set, members, user)
    db.flush()
    return reader_set


def _nsd_metric(tolerance_mm: float) -> fusion.SurfaceMetric:
    """Area-weighted NSD (backend.evaluation.metrics, Nikolov et al.) at a tolerance."""

    def nsd(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> float | None:
        if not a.any() or not b.any():
            return None
        box = metrics.union_box(a, b)
        assert box is not None
        lo, hi = box
        region = (slice(lo[0], hi[0] + 1), slice(lo[1], hi[1] + 1), slice(lo[2], hi[2] + 1))
        return metrics.normalized_surface_dice(metrics.surface_distances(a[region], b[region], spacing), tolerance_mm)

    return nsd


def compute_agreement(
    db: Session, blobs: BlobStore, scan: Scan, version_ids: Sequence[int], project: Project
) -> dict[str, Any]:
    """Per structure: mean pairwise Dice and area-weighted NSD of the versions, and whether it is below threshold.

    Structures missing from any version are reported with dice null. Structures whose masks are identical in
    every version (same manifest digest) get Dice 1 without decoding.
    """
    versions = [labels.get_version(db, vid) for vid in version_ids]
    structures = projects.structures_of(db, scan.project_id)
    tolerance = float(
        _quality_settings(project).get("multi_reader", {}).get("nsd_tolerance_mm", metrics.DEFAULT_NSD_TOLERANCE_MM)
    )
    nsd = _nsd_metric(tolerance)
    spacing = (float(scan.spacing[0]), float(scan.spacing[1]), float(scan.spacing[2]))
    rows = [{e.structure_id: e for e in v.structures} for v in versions]
    out: dict[str, Any] = {}
    for structure in structures:
        threshold = agreement_threshold(project, structure.name)
        entries = [row.get(structure.id) for row in rows]
        if any(e is None or e.status != "present" for e in entries):
            out[structure.name] = {
                "dice": None,
                "nsd": None,
                "pairs": [],
                "threshold": threshold,
                "below_threshold": False,
                "note": "missing in at least one reader's version",
            }
            continue
        present = [e for e in entries if e is not None]
        if len({e.manifest_digest for e in present}) == 1:
            identical = present[0].voxel_count > 0
            pair_rows = [
                {"a": a.id, "b": b.id, "dice": 1.0, "nsd": 1.0 if identical else None}
                for i, a in enumerate(versions)
                for b in versions[i + 1 :]
            ]
            mean_dice, mean_nsd = 1.0, (1.0 if identical else None)
        else:
            masks = [labels.read_mask(blobs, scan, e) for e in present]
            result = fusion.pairwise_agreement(masks, spacing, nsd=nsd)
            pair_rows = [
                {"a": versions[p.i].id, "b": versions[p.j].id, "dice": p.dice, "nsd": p.nsd} for p in result.pairs
            ]
            mean_dice, mean_nsd = result.mean_dice, result.mean_nsd
        out[structure.name] = {
            "dice": mean_dice,
            "nsd": mean_nsd,
            "nsd_tolerance_mm": tolerance,
            "nsd_definition": metrics.NSD_DEFINITION,
            "pairs": pair_rows,
            "threshold": threshold,
            "below_threshold": mean_dice < threshold,
        }
    return out


def below_threshold(reader_set: ReaderSet) -> list[str]:
    """Structures of a set whose agreement is below the project's threshold."""
    return sorted(name for name, row in (reader_set.agreement or {}).items() if row.get("below_threshold"))


def _complete(
    db: Session, blobs: BlobStore, reader_set: ReaderSet, members: Sequence[ReaderSetMember], actor: User
) -> None:
    scan = db.get(Scan, reader_set.scan_id)
    project = db.get(Project, reader_set.project_id)
    assert scan is not None and project is not None
    version_ids = [m.version_id for m in members if m.version_id is not None]
    reader_set.agreement = compute_agreement(db, blobs, scan, version_ids, project)
    reader_set.completed_at = _now()
    low = below_threshold(reader_set)
    reader_set.status = "adjudication" if low else "complete"
    db.flush()
    audit.record(
        db,
        actor_user_id=actor.id,
        action="reader_set.complete",
        entity_type="reader_set",
        entity_id=reader_set.id,
        project_id=reader_set.project_id,
        scan_id=reader_set.scan_id,
        details={"status": reader_set.status, "below_threshold": low, "version_ids": version_ids},
    )
    if low:
        _send_to_adjudication(db, scan, actor, reader_set)


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
            result.masks[name] = fusion.majority_vote(masks)
        else:
            stapled = fusion.staple(masks)
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


def hidden_version_ids(db: Session, scan_id: int, user: User) -> set[int]:
    """Versions of a scan the user may not see: other readers' versions while a set on the scan is open.

    A reader's versions are those they saved on the scan after the set's base version. Leads and admins who do not
    read in a set see everything of it; everyone else (a reading lead included) sees only their own reading until
    the set is complete.
    """
    open_sets = list(
        db.scalars(select(ReaderSet).where(ReaderSet.scan_id == scan_id, ReaderSet.status.in_(BLINDED_STATUSES)))
    )
    if not open_sets:
        return set()
    lead = is_lead(db, user, open_sets[0].project_id)
    hidden: set[int] = set()
    for reader_set in open_sets:
        readers = list(
            db.scalars(select(ReaderSetMember.user_id).where(ReaderSetMember.reader_set_id == reader_set.id))
        )
        if not is_blinded(reader_set, readers, user, lead):
            continue
        others = [uid for uid in readers if uid != user.id]
        if not others:
            continue
        query = select(LabelVersion.id).where(LabelVersion.scan_id == scan_id, LabelVersion.author_user_id.in_(others))
        if reader_set.base_version_id is not None:
            query = query.where(LabelVersion.id > reader_set.base_version_id)
        hidden.update(db.scalars(query))
    return hidden


# ---------------------------------------------------------------------------------------------------- QA


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


def _aorta_mean_hu(blobs: BlobStore, scan: Scan, entry: LabelVersionStructure) -> float | None:
    """Mean HU of the CT inside the aorta mask (the CT is decoded once; the mask only where it has voxels)."""
    cropped = _read_cropped(blobs, entry)
    if cropped is None:
        return None
    aorta, region = cropped
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
) -> qa_rules.QAInput:
    """Gather what the rules look at: counts from the version rows, sub-structure/parent overlaps from the
    chunk manifests, the lesion mask cropped to its chunks, and the mean HU inside the aorta."""
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
        aorta_hu = _aorta_mean_hu(blobs, scan, aorta)
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


def refresh_open_findings(db: Session, scan: Scan) -> int:
    """Recount the scan's open findings into its task (the worklist shows the number)."""
    count = int(db.scalar(select(func.count()).where(QAFinding.scan_id == scan.id, QAFinding.status == "open")) or 0)
    task = scan_task(db, scan)
    task.open_findings = count
    db.flush()
    return count


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
    findings = qa_rules.run_rules(qa_input(db, blobs, scan, version, config, mask_values), config)
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


def list_findings(
    db: Session,
    *,
    project_id: int | None = None,
    scan_id: int | None = None,
    status: str | None = None,
    rule: str | None = None,
    offset: int = 0,
    limit: int | None = None,
) -> tuple[list[QAFinding], int]:
    """Findings of a project or a scan, newest first, filtered by status and rule, with the total."""
    if status is not None and status not in FINDING_STATUSES:
        raise InvalidInput(f"unknown finding status {status!r}; use one of {list(FINDING_STATUSES)}")
    if rule is not None and rule not in qa_rules.RULES:
        raise InvalidInput(f"unknown rule {rule!r}; use one of {list(qa_rules.RULES)}")
    query = select(QAFinding)
    if project_id is not None:
        query = query.where(QAFinding.project_id == project_id)
    if scan_id is not None:
        query = query.where(QAFinding.scan_id == scan_id)
    if status is not None:
        query = query.where(QAFinding.status == status)
    if rule is not None:
        query = query.where(QAFinding.rule == rule)
    total = int(db.scalar(select(func.count()).select_from(query.subquery())) or 0)
    page = query.order_by(QAFinding.id.desc()).offset(offset)
    if limit is not None:
        page = page.limit(limit)
    return list(db.scalars(page)), total


def get_finding(db: Session, finding_id: int) -> QAFinding:
    """A finding by id."""
    finding = db.get(QAFinding, finding_id)
    if finding is None:
        raise NotFound(f"finding {finding_id} not found")
    return finding


def set_finding_status(db: Session, finding: QAFinding, status: str, actor: User, role: str) -> QAFinding:
    """Resolve (annotators too), dismiss (reviewers and leads) or reopen a finding; the scan's count follows."""
    if status not in FINDING_STATUSES:
        raise InvalidInput(f"unknown finding status {status!r}; use one of {list(FINDING_STATUSES)}")
    if status == "dismissed" and "review" not in projects.PERMISSIONS.get(role, frozenset()):
        raise PermissionDenied("only reviewers and leads may dismiss a finding")
    before = finding.status
    finding.status = status
    finding.resolved_by = None if status == "open" else actor.id
    db.flush()
    scan = db.get(Scan, finding.scan_id)
    assert scan is not None
    refresh_open_findings(db, scan)
    audit.record(
        db,
        actor_user_id=actor.id,
        action=f"qa.finding.{status}",
        entity_type="qa_finding",
        entity_id=finding.id,
        project_id=finding.project_id,
        scan_id=finding.scan_id,
        details={"rule": finding.rule, "from": before, "to": status},
    )
    return finding


def structure_names(db: Session, project_id: int) -> dict[int, str]:
    """Structure names by id (for serialising findings)."""
    return {s.id: s.name for s in projects.structures_of(db, project_id)}


def case_ids(db: Session, scan_ids: Iterable[int]) -> dict[int, str]:
    """Case ids by scan id."""
    wanted = set(scan_ids)
    if not wanted:
        return {}
    return {sid: cid for sid, cid in db.execute(select(Scan.id, Scan.case_id).where(Scan.id.in_(wanted)))}
