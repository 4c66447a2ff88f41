"""Structures: per structure, the scans whose head (or approved) version has it present and non-empty, their mean
and median volume, and the open findings on it.

The only view that depends on the label versions (about a million chosen structure rows at PanTS scale) reads
shared aggregates instead (`backend/models/dashboard.py`, kept by triggers in the writing transaction): count and
volume sum per structure and volume bin from `dashboard_totals` (a few hundred rows), then each median by walking
the index of `dashboard_volumes` from the start of the bin that holds it (about a tenth of the structure's volumes
at PanTS scale). So the first request of any API process costs what every other one does. Each process
remembers the medians it computed with the totals' revision they belong to and walks again only for structures
whose revision moved (`cached` in the answer). `fresh=True` computes the same figures from the version rows
themselves (the reference the aggregates must agree with).
"""

from __future__ import annotations

import threading
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from sqlalchemy import bindparam, func, select, text
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.orm import Session
from sqlalchemy.types import BigInteger, DateTime, Integer

from backend.core.errors import InvalidInput
from backend.dashboard.service.common import engine_key, is_pg, now
from backend.dashboard.service.results import Structures, StructureStats
from backend.models import LabelSchema, LabelVersionStructure, Project, QAFinding, Scan, ScanTask, Structure
from backend.models.dashboard import BASES, CHOSEN_SCANS, DashboardTotal, DashboardVolume

_MEMO_SIZE = 256  # (database, project, basis) keys remembered per process before starting over


@dataclass(frozen=True)
class _Volumes:
    """Scans present, mean and median volume (mL) of one structure."""

    count: int
    mean: float | None
    median: float | None


@dataclass(frozen=True)
class _Median:
    """A median and the totals stamp (revision sum, last change) it was computed at."""

    revision: int
    changed_at: datetime
    value: float | None


_medians: dict[tuple[str, int, str], dict[int, _Median]] = {}
_medians_lock = threading.Lock()


def clear_memo() -> None:
    """Forget the medians this process remembered (they are re-read from the shared aggregates)."""
    with _medians_lock:
        _medians.clear()


# One statement, so the totals and the index walks see the same snapshot. Per structure: the volume bin that holds
# the lower middle value (rank (n - 1) / 2) and how many volumes lie in the bins before it, then a walk of the index
# from that bin's start; a structure whose stamp the caller already knows skips its walk (a one-time filter).
_PG_TOTALS_AND_MEDIANS = text(
    """
    WITH cells AS (
        SELECT structure_id, bin, sum(scans)::bigint AS n, sum(volume_sum) AS total,
               sum(revision)::bigint AS revision, max(changed_at) AS changed_at
        FROM dashboard_totals WHERE project_id = :project_id AND basis = :basis
        GROUP BY structure_id, bin
    ), totals AS (
        SELECT structure_id, sum(n)::bigint AS n, sum(total) AS total, sum(revision)::bigint AS revision,
               max(changed_at) AS changed_at
        FROM cells GROUP BY structure_id
    ), middle_bins AS (
        SELECT DISTINCT ON (r.structure_id) r.structure_id, r.bin, r.upto - r.n AS below
        FROM (SELECT structure_id, bin, n, sum(n) OVER (PARTITION BY structure_id ORDER BY bin) AS upto
              FROM cells) AS r
        JOIN totals t ON t.structure_id = r.structure_id
        WHERE r.upto > (t.n - 1) / 2
        ORDER BY r.structure_id, r.bin
    ), known AS (
        SELECT * FROM unnest(CAST(:known_ids AS integer[]), CAST(:known_revisions AS bigint[]),
                             CAST(:known_at AS timestamptz[])) AS k(structure_id, revision, changed_at)
    )
    SELECT t.structure_id, t.n, t.total, t.revision, t.changed_at, middle.lo, middle.hi
    FROM totals t
    LEFT JOIN middle_bins mb ON mb.structure_id = t.structure_id
    LEFT JOIN LATERAL (
        SELECT min(m.volume_ml) AS lo, max(m.volume_ml) AS hi FROM (
            SELECT d.volume_ml FROM dashboard_volumes d
            WHERE d.structure_id = t.structure_id AND d.basis = :basis AND d.bin >= mb.bin
              AND t.structure_id <> 0 AND t.n > 0
              AND NOT EXISTS (SELECT 1 FROM known k WHERE k.structure_id = t.structure_id
                              AND k.revision = t.revision AND k.changed_at = t.changed_at)
            ORDER BY d.bin, d.volume_ml OFFSET (t.n - 1) / 2 - mb.below LIMIT 2 - t.n % 2
        ) AS m
    ) AS middle ON true
    """
).bindparams(
    bindparam("known_ids", type_=ARRAY(Integer)),
    bindparam("known_revisions", type_=ARRAY(BigInteger)),
    bindparam("known_at", type_=ARRAY(DateTime(timezone=True))),
)


def _middle(values: Sequence[float]) -> float | None:
    """The median of the one or two middle values an index walk returned."""
    return (float(min(values)) + float(max(values))) / 2 if values else None


def _walk(db: Session, structure_id: int, basis: str, cells: list[tuple[int, int]]) -> float | None:
    """The median of one structure from its (bin, count) cells: a walk of the index from the middle bin's start."""
    n = sum(count for _, count in cells)
    rank, below = (n - 1) // 2, 0
    for bin_, count in sorted(cells):
        if below + count > rank:
            v = DashboardVolume
            middle = db.scalars(
                select(v.volume_ml)
                .where(v.structure_id == structure_id, v.basis == basis, v.bin >= bin_)
                .order_by(v.bin, v.volume_ml)
                .offset(rank - below)
                .limit(2 - n % 2)
            ).all()
            return _middle(middle)
        below += count
    return None


def _aggregate_rows(
    db: Session, project_id: int, basis: str, known: dict[int, _Median]
) -> list[tuple[int, int, float, int, datetime, float | None]]:
    """(structure, count, volume sum, revision, changed at, median or None when `known` holds it) per structure."""
    if is_pg(db):
        # A few dozen short index walks: JIT compilation (the planner sees large row estimates) would cost far more
        # than it saves (this transaction only).
        db.execute(text("SET LOCAL jit = off"))
        params = {
            "project_id": project_id,
            "basis": basis,
            "known_ids": list(known),
            "known_revisions": [m.revision for m in known.values()],
            "known_at": [m.changed_at for m in known.values()],
        }
        return [
            (int(sid), int(n), float(total), int(rev), at, _middle([lo, hi]) if lo is not None else None)
            for sid, n, total, rev, at, lo, hi in db.execute(_PG_TOTALS_AND_MEDIANS, params)
        ]
    # Elsewhere (SQLite) the session's transaction is one snapshot: the cells, then one walk per structure.
    t = DashboardTotal
    rows = db.execute(
        select(
            t.structure_id,
            t.bin,
            func.sum(t.scans),
            func.sum(t.volume_sum),
            func.sum(t.revision),
            func.max(t.changed_at),
        )
        .where(t.project_id == project_id, t.basis == basis)
        .group_by(t.structure_id, t.bin)
    ).all()
    cells: dict[int, list[tuple[int, int, float, int, datetime]]] = defaultdict(list)
    for sid, bin_, n, total, rev, at in rows:
        cells[int(sid)].append((int(bin_), int(n), float(total or 0.0), int(rev), at))
    out = []
    for sid, parts in cells.items():
        n = sum(p[1] for p in parts)
        revision, changed_at = sum(p[3] for p in parts), max(p[4] for p in parts)
        stamp = known.get(sid)
        median = None
        if (
            sid != CHOSEN_SCANS
            and n > 0
            and (stamp is None or (stamp.revision, stamp.changed_at) != (revision, changed_at))
        ):
            median = _walk(db, sid, basis, [(p[0], p[1]) for p in parts])
        out.append((sid, n, sum(p[2] for p in parts), revision, changed_at, median))
    return out


def _from_aggregates(db: Session, project_id: int, basis: str) -> tuple[int, dict[int, _Volumes], datetime, bool]:
    """(scans with a chosen version, figures per structure, last change, whether this process knew some medians)."""
    key = (engine_key(db), project_id, basis)
    with _medians_lock:
        known = dict(_medians.get(key, {}))
        cached = key in _medians
    with_version = 0
    figures: dict[int, _Volumes] = {}
    remembered: dict[int, _Median] = {}
    changed_at: datetime | None = None
    for sid, n, total, revision, at, median in _aggregate_rows(db, project_id, basis, known):
        changed_at = at if changed_at is None or at > changed_at else changed_at
        if sid == CHOSEN_SCANS:
            with_version = n
            continue
        if n <= 0:
            continue
        stamp = known.get(sid)
        if stamp is not None and (stamp.revision, stamp.changed_at) == (revision, at):
            median = stamp.value
        remembered[sid] = _Median(revision, at, median)
        figures[sid] = _Volumes(n, total / n, median)
    with _medians_lock:
        if len(_medians) >= _MEMO_SIZE and key not in _medians:
            _medians.clear()
        _medians[key] = remembered
    return with_version, figures, changed_at or now(), cached


def _chosen_versions(project_id: int, basis: str) -> Any:
    """Subquery (scan_id, version_id) of each scan's head or approved version."""
    if basis == "head":
        return (
            select(Scan.id.label("scan_id"), Scan.head_version_id.label("version_id"))
            .where(Scan.project_id == project_id, Scan.head_version_id.is_not(None))
            .subquery()
        )
    return (
        select(ScanTask.scan_id.label("scan_id"), ScanTask.approved_version_id.label("version_id"))
        .where(ScanTask.project_id == project_id, ScanTask.approved_version_id.is_not(None))
        .subquery()
    )


def _from_versions(db: Session, project_id: int, basis: str) -> tuple[int, dict[int, _Volumes]]:
    """(scans with a chosen version, figures per structure) computed from the chosen versions' structure rows."""
    chosen = _chosen_versions(project_id, basis)
    with_version = int(db.scalar(select(func.count()).select_from(chosen)) or 0)
    lvs = LabelVersionStructure
    joined = (
        select(lvs.structure_id, lvs.volume_ml)
        .join(chosen, lvs.version_id == chosen.c.version_id)
        .where(lvs.status == "present", lvs.voxel_count > 0)
    )
    values: dict[int, Any] = defaultdict(list)
    if is_pg(db):  # one row per structure with an array: no per-row Python objects
        sub = joined.subquery()
        grouped = select(sub.c.structure_id, func.array_agg(sub.c.volume_ml)).group_by(sub.c.structure_id)
        for structure_id, volumes in db.execute(grouped):
            values[int(structure_id)] = volumes
    else:
        for structure_id, ml in db.execute(joined):
            values[int(structure_id)].append(float(ml))
    figures = {}
    for structure_id, volumes in values.items():
        array = np.asarray(volumes, dtype=np.float64)
        if array.size:
            figures[structure_id] = _Volumes(int(array.size), float(array.mean()), float(np.median(array)))
    return with_version, figures


def structures(db: Session, project: Project, basis: str = "head", fresh: bool = False) -> Structures:
    """Per structure: scans whose head/approved version has it present and non-empty, volumes, open findings."""
    if basis not in BASES:
        raise InvalidInput("basis must be 'head' or 'approved'")
    schema_structures = list(
        db.scalars(
            select(Structure)
            .join(LabelSchema, LabelSchema.id == Structure.schema_id)
            .where(LabelSchema.project_id == project.id)
            .order_by(Structure.position)
        )
    )
    if fresh:
        with_version, figures = _from_versions(db, project.id, basis)
        computed_at, cached = now(), False
    else:
        with_version, figures, computed_at, cached = _from_aggregates(db, project.id, basis)
    findings = dict(
        db.execute(
            select(QAFinding.structure_id, func.count())
            .where(QAFinding.project_id == project.id, QAFinding.status == "open")
            .group_by(QAFinding.structure_id)
        ).all()
    )
    out = []
    for s in schema_structures:
        volumes = figures.get(s.id)
        out.append(
            StructureStats(
                structure_id=s.id,
                name=s.name,
                label_value=s.label_value,
                group=s.group,
                scans_present=volumes.count if volumes else 0,
                scans_with_version=with_version,
                mean_volume_ml=volumes.mean if volumes else None,
                median_volume_ml=volumes.median if volumes else None,
                open_findings=int(findings.get(s.id, 0)),
            )
        )
    return Structures(project_id=project.id, basis=basis, structures=out, computed_at=computed_at, cached=cached)
