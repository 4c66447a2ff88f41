"""Reader sets: who reads which scan, lead-only set management, and readers handing in their versions."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.core.db import get_or_404
from backend.core.errors import Conflict, InvalidInput, PermissionDenied
from backend.models import LabelVersion, Project, ReaderSet, ReaderSetMember, Scan, User
from backend.projects import service as projects
from backend.quality.service.agreement import complete
from backend.quality.service.settings import quality_settings

READER_ROLES = frozenset({"annotator", "reviewer", "lead", "admin"})


def is_lead(db: Session, user: User, project_id: int) -> bool:
    """True for the project's leads and admins (who see every reader's version)."""
    return projects.is_lead(projects.role_of(db, user, project_id))


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
    configured = quality_settings(project).get("multi_reader", {})
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
    return get_or_404(db, ReaderSet, reader_set_id, "reader set")


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


def users_by_id(db: Session, ids: Iterable[int]) -> dict[int, User]:
    """Users by id (for display names)."""
    wanted = set(ids)
    if not wanted:
        return {}
    return {user.id: user for user in db.scalars(select(User).where(User.id.in_(wanted)))}


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
    member.submitted_at = datetime.now(UTC)
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
        complete(db, blobs, reader_set, members, user)
    db.flush()
    return reader_set
