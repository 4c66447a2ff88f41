"""Agreement: the histogram of per-structure mean pairwise Dice over the project's multi-reader sets."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.dashboard.service.common import is_pg
from backend.dashboard.service.results import Agreement, HistogramBin, StructureAgreement
from backend.models import Project, ReaderSet, ScanTask
from backend.models.workflow import READER_SET_STATUSES


def _dice_of(entry: Any) -> float | None:
    """The mean pairwise Dice of one agreement entry ({"dice": x, ...} or a bare number)."""
    value = entry.get("dice") if isinstance(entry, dict) else entry
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(float(value)):
        return None
    return min(1.0, max(0.0, float(value)))


_AGREEMENT_SQL = text(
    """
    WITH entries AS (
        SELECT rs.id AS set_id, x.key AS name,
               CASE WHEN jsonb_typeof(x.value) = 'number' THEN x.value ELSE x.value -> 'dice' END AS dice_json,
               CASE WHEN jsonb_typeof(x.value) = 'object' THEN x.value -> 'below_threshold' END AS below_json
        FROM reader_sets rs
        CROSS JOIN LATERAL jsonb_each(
            CASE WHEN jsonb_typeof(rs.agreement) = 'object' THEN rs.agreement ELSE '{}'::jsonb END
        ) AS x
        WHERE rs.project_id = :project_id
    ), measured AS (
        SELECT set_id, name, LEAST(GREATEST((dice_json #>> '{}')::float8, 0.0), 1.0) AS dice,
               coalesce(below_json = 'true'::jsonb, false) AS below
        FROM entries WHERE jsonb_typeof(dice_json) = 'number'
    )
    SELECT name, LEAST(floor(dice * :bins)::int, :bins - 1) AS bucket, count(*), sum(dice),
           count(*) FILTER (WHERE below), (SELECT count(DISTINCT set_id) FROM measured)
    FROM measured GROUP BY 1, 2
    """
)


def _agreement_cells(
    db: Session, project_id: int, bins: int
) -> tuple[int, dict[tuple[str, int], tuple[int, float, int]]]:
    """(reader sets with any agreement, (structure, bin) -> (entries, sum of Dice, below threshold))."""
    cells: dict[tuple[str, int], tuple[int, float, int]] = {}
    if is_pg(db):  # unnest the JSON in the database: no per-entry Python work
        measured = 0
        for name, bucket, n, total, below, sets in db.execute(_AGREEMENT_SQL, {"project_id": project_id, "bins": bins}):
            cells[(str(name), int(bucket))] = (int(n), float(total), int(below))
            measured = int(sets)
        return measured, cells
    acc: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0, 0.0, 0])
    measured = 0
    for (data,) in db.execute(select(ReaderSet.agreement).where(ReaderSet.project_id == project_id)):
        if not isinstance(data, dict):
            continue
        any_value = False
        for name, entry in data.items():
            dice = _dice_of(entry)
            if dice is None:
                continue
            any_value = True
            cell = acc[(str(name), min(bins - 1, max(0, math.floor(dice * bins))))]
            cell[0] += 1
            cell[1] += dice
            cell[2] += int(isinstance(entry, dict) and entry.get("below_threshold") is True)
        measured += int(any_value)
    return measured, {k: (int(v[0]), float(v[1]), int(v[2])) for k, v in acc.items()}


def _bins(counts: dict[int, int], bins: int) -> list[HistogramBin]:
    return [HistogramBin(lo=i / bins, hi=(i + 1) / bins, count=counts.get(i, 0)) for i in range(bins)]


def agreement(db: Session, project: Project, bins: int = 10) -> Agreement:
    """Histogram of per-structure agreement (mean pairwise Dice) over the project's reader sets."""
    if not 2 <= bins <= 50:
        raise InvalidInput("bins must be between 2 and 50")
    status_counts = dict(
        db.execute(
            select(ReaderSet.status, func.count()).where(ReaderSet.project_id == project.id).group_by(ReaderSet.status)
        ).all()
    )
    measured, cells = _agreement_cells(db, project.id, bins)
    in_adjudication = int(
        db.scalar(select(func.count()).where(ScanTask.project_id == project.id, ScanTask.state == "adjudication")) or 0
    )
    pooled: dict[int, int] = defaultdict(int)
    per_structure: dict[str, dict[int, int]] = defaultdict(dict)
    sums: dict[str, list[float]] = defaultdict(lambda: [0, 0.0, 0])
    for (name, bucket), (n, total, below) in cells.items():
        pooled[bucket] += n
        per_structure[name][bucket] = n
        acc = sums[name]
        acc[0] += n
        acc[1] += total
        acc[2] += below
    return Agreement(
        project_id=project.id,
        reader_sets=measured,
        sets_by_status={s: int(status_counts.get(s, 0)) for s in READER_SET_STATUSES},
        in_adjudication=in_adjudication,
        histogram=_bins(pooled, bins),
        structures=[
            StructureAgreement(
                name=name,
                sets=int(sums[name][0]),
                mean_dice=sums[name][1] / sums[name][0] if sums[name][0] else None,
                below_threshold=int(sums[name][2]),
                histogram=_bins(counts, bins),
            )
            for name, counts in sorted(per_structure.items())
        ],
    )
