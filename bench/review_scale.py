"""Review-workflow scale benchmark: worklist, next-task and every lead dashboard endpoint on a PanTS-sized project.

Set-up: a fresh PostgreSQL database migrated with Alembic to revision 0009 (before the shared dashboard
aggregates); a lead, 10 annotators, 3 reviewers and a platform admin created through the services; then a bulk
seed at PanTS scale (36,390 scans by default) written with COPY and server-side `INSERT ... SELECT` (triggers off
for the session, `ANALYZE` after; on a database already at head `dashboard_rebuild()` then refills the aggregates
the triggers would have kept):

* scans with realistic sites (8, skewed), contrast phases (arterial/venous/delayed/non-contrast), sex, age,
  tumour flag, manufacturer, 512×512×N geometry and a fake image digest (no real volumes or masks);
* three label versions per scan (model pre-annotation, then two human saves; the last is the head) and one
  `label_version_structures` row per version and structure (28 → about 3 million rows, fake manifest digests,
  plausible voxel counts/volumes, prostate only in men, the lesion only in tumour scans);
* one task per scan with a state drawn from a plausible mid-project mix, attention priorities, assignees,
  a few live leases, active seconds; the transitions that lead to that state (with timestamps over the last
  180 days), reviews for every decision, daily activity rows (saves, active seconds), about 10 audit events
  per scan, QA findings on about 6 % of the scans, 300 reader sets with per-structure agreement, and one model
  with 4 training rounds of AI-vs-final Dice.

Then `alembic upgrade head` runs on the seeded database and is timed (`migration_36k_s`: the aggregate tables are
created and filled from the rows; `VACUUM ANALYZE` after it, untimed, as autovacuum would within a minute). A real
uvicorn server runs the app on that database and each endpoint is called sequentially over loopback (after
warm-up requests): p50/p95 client-side wall time over `REQUESTS` calls. The worklist is called
with several filter combinations, next-task alternately by the annotators (kind annotate, the lease released
after each call, unmeasured) and the reviewers (kind review); both are skipped (NaN) while the workflow
endpoints do not exist. The structures endpoint is measured as served, after a simulated human save (raw SQL)
before every request (a new version with one structure's volume changed, the head moved to it: the triggers move
the aggregates, the process re-reads one median), and, for context, with `fresh=true` (`..._recomputed`: the same
figures computed from every head version's structure rows). Last, `FRESH_PROCESSES` API processes are started in
turn and the first request of each is the structures one (`dashboard_structures_fresh_p95_ms`, with an API token,
so nothing else warms the process first).

Scale: `MASKLOOP_BENCH_REVIEW_SCANS` (default 36390); `python -m bench.review_scale --quick` seeds 2,000
scans and prints the table without touching results.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg

from bench import NO_GOAL, Row, percentile

FULL_SCANS = 36_390
QUICK_SCANS = 2_000
PASSWORD = "bench-password-0123"
REQUESTS = 40
WARMUP = 3
GOAL_MS = 100.0
MIGRATION_GOAL_S = 60.0
FRESH_PROCESSES = 7
# The last revision before the shared dashboard aggregates: the seed loads there, then the upgrade is timed.
BEFORE_AGGREGATES = "0009"
SEED = 20250
HISTORY_DAYS = 180

SITES: list[tuple[str | None, int]] = [
    ("site_a", 30),
    ("site_b", 20),
    ("site_c", 15),
    ("site_d", 10),
    ("site_e", 10),
    ("site_f", 8),
]
SITES += [("site_g", 5), (None, 2)]
PHASES = [("venous", 45), ("arterial", 30), ("delayed", 10), ("non_contrast", 12), (None, 3)]
MANUFACTURERS = ["SIEMENS", "GE MEDICAL SYSTEMS", "PHILIPS", "TOSHIBA"]
STATES = [
    ("new", 14),
    ("pre_annotated", 30),
    ("annotating", 9),
    ("submitted", 6),
    ("in_review", 4),
    ("changes_requested", 3),
    ("approved", 32),
    ("adjudication", 2),
]
QA_RULES = [
    ("structure_missing", "warning"),
    ("small_lesion", "info"),
    ("pancreas_parts_mismatch", "error"),
    ("pancreas_volume_implausible", "warning"),
    ("outside_parent", "warning"),
    ("volume_out_of_range", "warning"),
    ("phase_mismatch", "info"),
]
DASHBOARD = ["summary", "sites", "phases", "structures", "throughput", "editing-time", "turnaround"]
DASHBOARD += ["agreement", "model-rounds", "qa"]


def _log(message: str) -> None:
    """A progress line on stderr."""
    print(f"  [review_scale] {message}", file=sys.stderr, flush=True)


def _pick(rng: random.Random, weighted: list[tuple[Any, int]]) -> Any:
    """One value of a weighted list."""
    return rng.choices([v for v, _ in weighted], weights=[w for _, w in weighted])[0]


def _hex(rng: random.Random) -> str:
    """A fake sha256 digest."""
    return f"{rng.getrandbits(256):064x}"


@dataclass
class Seeded:
    """What the seed created: the project, the people (role -> [(user id, e-mail)]) and the scale."""

    project_id: int
    people: dict[str, list[tuple[int, str]]]
    scans: int
    sites: list[str]
    phases: list[str]
    counts: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0


def _pg_conninfo(url: str) -> str:
    """A libpq URL from an SQLAlchemy one."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def _create_people(url: str) -> tuple[int, dict[str, list[tuple[int, str]]], list[int], int]:
    """Admin, lead, annotators and reviewers, the PanTS project and a model: (project id, people, structure ids, mv)."""
    from sqlalchemy.orm import Session

    from backend.auth import service as auth
    from backend.core.db import make_engine
    from backend.models import Model, ModelVersion
    from backend.projects import service as projects

    engine = make_engine(url)
    people: dict[str, list[tuple[int, str]]] = {"admin": [], "lead": [], "annotator": [], "reviewer": []}
    try:
        with Session(engine) as db:
            admin = auth.create_user(db, "admin@bench.local", PASSWORD, "Admin", is_admin=True)
            project = projects.create_project(db, "pants-scale", "PanTS at scale", admin)
            project.settings = {"workflow": {"review_levels": ["review"], "lease_minutes": 20}}
            people["admin"].append((admin.id, admin.email))
            roles = [("lead", 1), ("annotator", 10), ("reviewer", 3)]
            for role, n in roles:
                for i in range(n):
                    user = auth.create_user(db, f"{role}{i + 1}@bench.local", PASSWORD, f"{role.title()} {i + 1}")
                    projects.set_membership(db, project.id, user, role, admin)
                    people[role].append((user.id, user.email))
            structure_ids = [s.id for s in projects.structures_of(db, project.id)]
            names = [s.name for s in projects.structures_of(db, project.id)]
            model = Model(project_id=project.id, name="pants-unet", architecture="unet", structures=names)
            db.add(model)
            db.flush()
            versions = [ModelVersion(model_id=model.id, number=n, is_promoted=n == 5) for n in range(1, 6)]
            db.add_all(versions)
            db.flush()
            _training_rounds(db, model.id, [v.id for v in versions], names)
            db.commit()
            return project.id, people, structure_ids, versions[-1].id
    finally:
        engine.dispose()


def _training_rounds(db: Any, model_id: int, version_ids: list[int], names: list[str]) -> None:
    """Four retraining rounds whose AI-vs-final Dice climbs."""
    from backend.models import TrainingRound

    rng = random.Random(SEED + 1)
    for r in range(1, len(version_ids)):
        base = 0.70 + 0.05 * r
        dice = {n: round(min(0.99, base + rng.uniform(-0.08, 0.08)), 4) for n in names}
        db.add(
            TrainingRound(
                model_id=model_id,
                new_model_version_id=version_ids[r],
                previous_model_version_id=version_ids[r - 1],
                train_versions=400 * r,
                heldout_versions=100,
                scans_revised=300 * r,
                ai_vs_final_dice=dice,
                heldout_new={"mean_dice": base + 0.03},
                heldout_previous={"mean_dice": base},
                promoted=True,
                decision="better on the held-out set",
            )
        )


@dataclass
class _Rows:
    """Rows to COPY, per table."""

    scans: list[tuple[Any, ...]] = field(default_factory=list)
    versions: list[tuple[Any, ...]] = field(default_factory=list)
    tasks: list[tuple[Any, ...]] = field(default_factory=list)
    transitions: list[tuple[Any, ...]] = field(default_factory=list)
    reviews: list[tuple[Any, ...]] = field(default_factory=list)
    activity: list[tuple[Any, ...]] = field(default_factory=list)
    findings: list[tuple[Any, ...]] = field(default_factory=list)
    reader_sets: list[tuple[Any, ...]] = field(default_factory=list)


_STORY = {
    "new": [],
    "pre_annotated": ["pre_annotate"],
    "annotating": ["pre_annotate", "start"],
    "submitted": ["pre_annotate", "start", "submit"],
    "in_review": ["pre_annotate", "start", "submit", "start_review"],
    "changes_requested": ["pre_annotate", "start", "submit", "start_review", "request_changes"],
    "approved": ["pre_annotate", "start", "submit", "start_review", "approve"],
    "adjudication": ["pre_annotate", "start", "submit", "adjudicate"],
}
_TO = {
    "pre_annotate": ("new", "pre_annotated"),
    "start": ("pre_annotated", "annotating"),
    "submit": ("annotating", "submitted"),
    "start_review": ("submitted", "in_review"),
    "request_changes": ("in_review", "changes_requested"),
    "approve": ("in_review", "approved"),
    "adjudicate": ("submitted", "adjudication"),
}


def _generate(
    n_scans: int, project_id: int, people: dict[str, list[tuple[int, str]]], model_version_id: int
) -> tuple[_Rows, datetime]:
    """Every Python-generated row (scans, versions, tasks, history), deterministic for a given scale."""
    rng = random.Random(SEED)
    now = datetime.now(UTC).replace(microsecond=0)
    annotators = [u for u, _ in people["annotator"]]
    reviewers = [u for u, _ in people["reviewer"]]
    lead = people["lead"][0][0]
    rows = _Rows()
    version_id = 0
    live_leases = 0
    for scan_id in range(1, n_scans + 1):
        created = now - timedelta(days=HISTORY_DAYS) + timedelta(seconds=rng.uniform(0, 0.97 * HISTORY_DAYS * 86400))
        slices = rng.randint(80, 1000)
        spacing = [0.78, 0.78, round(rng.choice([0.5, 0.8, 1.0, 1.25, 2.5, 5.0]), 2)]
        tumor = rng.random() < 0.55
        sex = rng.choice("MF")
        rows.scans.append(
            (
                scan_id, project_id, f"PanTS_{scan_id:08d}", "train" if rng.random() < 0.8 else "test", "nifti",
                f"PanTS_{scan_id:08d}/ct.nii.gz", _hex(rng), rng.randint(40, 400) * 1_000_000, "int16",
                json.dumps([512, 512, slices]), json.dumps(spacing),
                json.dumps([[-0.78, 0, 0, 0], [0, -0.78, 0, 0], [0, 0, spacing[2], 0], [0, 0, 0, 1]]), "LPS",
                slices, 0.78 * 0.78 * spacing[2], spacing[2], _pick(rng, SITES), _pick(rng, PHASES), sex,
                rng.randint(25, 90), rng.choice(MANUFACTURERS), tumor, rng.randint(1, 3) if tumor else 0, "{}",
                version_id + 3, people["admin"][0][0], created,
            )
        )  # fmt: skip
        state = _pick(rng, STATES)
        annotator = rng.choice(annotators)
        reviewer = rng.choice(reviewers)
        story = list(_STORY[state])
        if state == "approved" and rng.random() < 0.25:  # one round of changes before the approval
            story = [*story[:4], "request_changes", "start", "submit", "start_review", *story[4:]]
        at = created + timedelta(hours=rng.uniform(1, 48))
        versions_at = []
        submitted_at = approved_at = None
        submitted_v = approved_v = None
        for action in story:
            frm, to = _TO[action]
            if action == "request_changes":
                frm, to = "in_review", "changes_requested"
            if action == "start" and rows.transitions and rows.transitions[-1][2] == "request_changes":
                frm = "changes_requested"
            actor = {"pre_annotate": None, "start": annotator, "submit": annotator}.get(action, reviewer)
            if action == "adjudicate":
                actor = lead
            at = min(now - timedelta(minutes=5), at + timedelta(hours=rng.expovariate(1 / 30.0)))
            level = 1 if action in ("start_review", "approve", "request_changes") else 0
            v = version_id + 3 if action in ("submit", "approve", "request_changes") else None
            rows.transitions.append((project_id, scan_id, action, frm, to, level, actor, v, at))
            if action in ("approve", "request_changes"):
                rows.reviews.append((project_id, scan_id, version_id + 3, reviewer, 1, action, "", at))
            if action == "submit":
                submitted_at, submitted_v = at, version_id + 3
            if action == "approve":
                approved_at, approved_v = at, version_id + 3
            if action in ("start", "submit"):
                versions_at.append(at)
        # Three versions: the model's pre-annotation and two human saves (head = the last).
        t0 = created + timedelta(minutes=10)
        t1 = versions_at[0] if versions_at else t0 + timedelta(hours=1)
        t2 = versions_at[-1] if len(versions_at) > 1 else t1 + timedelta(minutes=20)
        rows.versions.append((version_id + 1, scan_id, None, "model", None, model_version_id, "pre-annotation", t0))
        rows.versions.append((version_id + 2, scan_id, version_id + 1, "human", annotator, None, "edit", t1))
        rows.versions.append((version_id + 3, scan_id, version_id + 2, "human", annotator, None, "fix", t2))
        version_id += 3
        seconds = 0.0
        if state not in ("new", "pre_annotated"):
            days = sorted({t.date() for t in versions_at} or {t1.date()})
            for day in days:
                secs = round(rng.lognormvariate(6.5, 0.6), 1)
                seconds += secs
                rows.activity.append((project_id, scan_id, annotator, day, secs, rng.randint(1, 4)))
            if state in ("in_review", "approved", "changes_requested") and rng.random() < 0.5:
                secs = round(rng.lognormvariate(5.0, 0.5), 1)
                seconds += secs
                rows.activity.append((project_id, scan_id, reviewer, at.date(), secs, 0))
        assignee = annotator if state != "new" and (state != "pre_annotated" or rng.random() < 0.3) else None
        lease_user = lease_exp = None
        if state == "annotating" and live_leases < 25 and rng.random() < 0.02:
            lease_user, lease_exp = annotator, now + timedelta(minutes=15)
            live_leases += 1
        priority = round(rng.expovariate(1 / 3.0), 3) if state != "new" else 0.0
        findings = 0
        if state != "new" and rng.random() < 0.06:
            for _ in range(rng.randint(1, 3)):
                rule, severity = rng.choice(QA_RULES)
                status = "open" if rng.random() < 0.7 else rng.choice(["resolved", "dismissed"])
                findings += status == "open"
                rows.findings.append(
                    (project_id, scan_id, version_id, rule, rng.randrange(28), severity, f"{rule} on scan", "{}",
                     status, at)
                )  # fmt: skip
        rows.tasks.append(
            (
                scan_id, project_id, state, 1 if state == "in_review" else 0, priority, assignee,
                reviewer if state in ("in_review", "approved", "changes_requested") else None, lease_user, lease_exp,
                lease_exp and now, submitted_v, approved_v, submitted_at, approved_at, seconds, findings,
                max(at, created),
            )
        )  # fmt: skip
    return rows, now


def _copy(cur: psycopg.Cursor[Any], table: str, columns: str, rows: list[tuple[Any, ...]]) -> None:
    """COPY rows into a table."""
    with cur.copy(f"COPY {table} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def seed(url: str, n_scans: int = FULL_SCANS) -> Seeded:
    """Create the people and bulk-load a project of `n_scans` scans with history into a migrated database."""
    started = time.perf_counter()
    project_id, people, structure_ids, model_version_id = _create_people(url)
    rows, now = _generate(n_scans, project_id, people, model_version_id)
    _log(f"generated {n_scans:,} scans of rows in {time.perf_counter() - started:.1f} s")
    with psycopg.connect(_pg_conninfo(url)) as conn, conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")  # no FK triggers for the bulk load (superuser)
        _copy(
            cur,
            "scans",
            "id, project_id, case_id, split, source_format, source_name, image_digest, image_bytes, source_dtype, "
            "shape, spacing, affine, orientation, slice_count, voxel_volume_mm3, slice_thickness, site, phase, sex, "
            "age, manufacturer, tumor, lesion_instances, raw_metadata, head_version_id, created_by, created_at",
            rows.scans,
        )
        _copy(
            cur,
            "label_versions",
            "id, scan_id, parent_id, kind, author_user_id, author_model_version_id, message, created_at, is_branch, "
            "new_bytes",
            [(*v, False, 1_000_000 + v[0] % 5000) for v in rows.versions],
        )
        t = time.perf_counter()
        _seed_structures(cur, structure_ids)
        _log(f"label_version_structures written in {time.perf_counter() - t:.1f} s")
        _copy(
            cur,
            "scan_tasks",
            "scan_id, project_id, state, review_level, priority, assignee_user_id, reviewer_user_id, lease_user_id, "
            "lease_expires_at, lease_heartbeat_at, submitted_version_id, approved_version_id, submitted_at, "
            "approved_at, active_seconds, open_findings, updated_at",
            rows.tasks,
        )
        _copy(
            cur,
            "task_transitions",
            "project_id, scan_id, action, from_state, to_state, review_level, actor_user_id, version_id, at",
            rows.transitions,
        )
        _copy(
            cur,
            "reviews",
            "project_id, scan_id, version_id, reviewer_user_id, review_level, decision, message, created_at",
            rows.reviews,
        )
        _copy(cur, "activity_daily", "project_id, scan_id, user_id, day, active_seconds, saves", _merge(rows.activity))
        findings = [(*f[:4], structure_ids[f[4]], *f[5:]) for f in rows.findings]
        _copy(
            cur,
            "qa_findings",
            "project_id, scan_id, version_id, rule, structure_id, severity, message, details, status, created_at",
            findings,
        )
        _seed_reader_sets(cur, project_id, n_scans, people, now)
        t = time.perf_counter()
        _seed_audit(cur, project_id, people)
        _log(f"audit events written in {time.perf_counter() - t:.1f} s")
        for table in ("scans", "label_versions"):
            cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT max(id) FROM {table}))")
        cur.execute("SET session_replication_role = origin")
        conn.commit()
    with psycopg.connect(_pg_conninfo(url), autocommit=True) as conn:
        rebuild = conn.execute("SELECT to_regproc('dashboard_rebuild')").fetchone()
        if rebuild is not None and rebuild[0] is not None:  # at head: the bulk load bypassed the aggregates' triggers
            conn.execute("SELECT dashboard_rebuild()")
        conn.execute("VACUUM ANALYZE")
        counts = {
            table: int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])  # type: ignore[index]
            for table in (
                "scans", "label_versions", "label_version_structures", "scan_tasks", "task_transitions",
                "reviews", "activity_daily", "audit_events", "qa_findings", "reader_sets",
            )
        }  # fmt: skip
    sites = sorted({s for s, _ in SITES if s})
    phases = sorted({p for p, _ in PHASES if p})
    seconds = time.perf_counter() - started
    return Seeded(project_id, people, n_scans, sites, phases, counts, seconds)


def _merge(activity: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """One activity row per (user, scan, day), as the unique constraint wants."""
    merged: dict[tuple[Any, ...], list[Any]] = {}
    for project_id, scan_id, user_id, day, secs, saves in activity:
        key = (user_id, scan_id, day)
        if key in merged:
            merged[key][4] += secs
            merged[key][5] += saves
        else:
            merged[key] = [project_id, scan_id, user_id, day, secs, saves]
    return [tuple(v) for v in merged.values()]


def _seed_structures(cur: psycopg.Cursor[Any], structure_ids: list[int]) -> None:
    """One row per version and structure, generated in the server (28 × versions rows)."""
    cur.execute("SELECT setseed(0.25)")
    cur.execute(
        """
        INSERT INTO label_version_structures
            (version_id, structure_id, status, manifest_digest, voxel_count, volume_ml, changed)
        SELECT q.version_id, q.structure_id, q.status, q.digest, q.voxels, q.voxels * q.voxel_mm3 / 1000.0, q.changed
        FROM (
            SELECT v.id AS version_id, st.id AS structure_id,
                   CASE WHEN r.x < 0.015 THEN 'missing' ELSE 'present' END AS status,
                   md5(v.id::text || ':' || st.id::text) || md5(st.id::text || ':' || v.scan_id::text) AS digest,
                   CASE WHEN r.x < 0.015 THEN 0
                        WHEN st.name = 'prostate' AND s.sex = 'F' THEN 0
                        WHEN st.name = 'pancreatic_lesion' AND NOT coalesce(s.tumor, false) THEN 0
                        ELSE (1000 + (st.label_value * 7919 %% 200000) * (0.5 + r.x))::bigint END AS voxels,
                   s.voxel_volume_mm3 AS voxel_mm3,
                   v.kind <> 'human' OR st.position %% 9 = v.id %% 9 AS changed
            FROM label_versions v
            JOIN scans s ON s.id = v.scan_id
            CROSS JOIN structures st
            CROSS JOIN LATERAL (SELECT random() + 0 * v.id AS x) r
            WHERE st.id = ANY(%s)
        ) q
        """,
        (structure_ids,),
    )


def _seed_reader_sets(
    cur: psycopg.Cursor[Any], project_id: int, n_scans: int, people: dict[str, list[tuple[int, str]]], now: datetime
) -> None:
    """300 (or fewer) multi-reader sets with per-structure agreement, some below threshold."""
    rng = random.Random(SEED + 2)
    names = [r[0] for r in cur.execute("SELECT name FROM structures ORDER BY id").fetchall()]
    rows = []
    for scan_id in rng.sample(range(1, n_scans + 1), min(300, n_scans // 10 or 1)):
        agreement = {}
        for name in names:
            dice = round(min(1.0, max(0.0, rng.gauss(0.35 if name == "pancreatic_lesion" else 0.88, 0.08))), 4)
            threshold = 0.2 if name == "pancreatic_lesion" else 0.8
            agreement[name] = {"dice": dice, "below_threshold": dice < threshold}
        status = "adjudication" if any(v["below_threshold"] for v in agreement.values()) else "fused"
        rows.append((project_id, scan_id, status, json.dumps(agreement), people["lead"][0][0], now))
    _copy(cur, "reader_sets", "project_id, scan_id, status, agreement, created_by, created_at", rows)


def _seed_audit(cur: psycopg.Cursor[Any], project_id: int, people: dict[str, list[tuple[int, str]]]) -> None:
    """About ten audit events per scan, generated in the server."""
    users = [u for role in ("annotator", "reviewer", "lead") for u, _ in people[role]]
    cur.execute(
        """
        INSERT INTO audit_events (at, actor_user_id, project_id, scan_id, action, entity_type, entity_id, details)
        SELECT s.created_at + make_interval(hours => g.n * 3),
               (%s::int[])[1 + (s.id * 7 + g.n) %% cardinality(%s::int[])],
               %s, s.id,
               (ARRAY['label.save','label.save','label.save','task.start','task.submit','lease.acquire',
                      'lease.release','task.start_review','review.approve','comment.add'])[1 + g.n],
               'scan', s.id::text, '{}'::jsonb
        FROM scans s CROSS JOIN generate_series(0, 9) AS g(n)
        WHERE s.project_id = %s
        """,
        (users, users, project_id, project_id),
    )


# --- measuring over HTTP ---


def _timed(
    call: Callable[[], httpx.Response],
    n: int,
    what: str,
    ok: tuple[int, ...] = (200,),
    before: Callable[[], None] | None = None,
) -> list[float]:
    """Wall times (ms) of n calls after the warm-up (`before` runs unmeasured ahead of each); raises when a call
    answers an unexpected status."""
    times: list[float] = []
    for i in range(WARMUP + n):
        if before is not None:
            before()
        started = time.perf_counter()
        response = call()
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status_code not in ok:
            raise RuntimeError(f"{what}: HTTP {response.status_code}: {response.text[:500]}")
        if i >= WARMUP:
            times.append(elapsed)
    return times


def _login(client: httpx.Client, email: str) -> dict[str, str]:
    """Bearer headers of a user."""
    response = client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
    response.raise_for_status()
    return {"Authorization": f"Bearer {response.json()['access_token']}"}


def _cycle(items: list[Any]) -> Iterator[Any]:
    """Round-robin over items forever."""
    while True:
        yield from items


def measure(base: str, url: str, seeded: Seeded, n: int = REQUESTS) -> dict[str, list[float]]:
    """p50/p95 inputs: wall times (ms) per endpoint label; NaN lists when an endpoint is missing."""
    out: dict[str, list[float]] = {}
    with httpx.Client(base_url=base, timeout=httpx.Timeout(120.0)) as client:
        lead = _login(client, seeded.people["lead"][0][1])
        annotators = [_login(client, email) for _, email in seeded.people["annotator"]]
        reviewers = [_login(client, email) for _, email in seeded.people["reviewer"]]
        paths = set(client.get("/openapi.json").json().get("paths", {}))
        pid = seeded.project_id
        if any(p.startswith("/api/projects/") and p.endswith("/worklist") for p in paths):
            filters = [
                {},
                {"state": "pre_annotated", "sort": "priority"},
                {"assignee": "me"},
                {"site": seeded.sites[0], "phase": seeded.phases[0]},
                {"state": "in_review", "sort": "updated"},
                {"q": "PanTS_0000123"},
            ]
            who = _cycle([annotators[0], lead, reviewers[0]])
            flt = _cycle(filters)
            out["worklist"] = _timed(
                lambda: client.get(f"/api/projects/{pid}/worklist", params=next(flt), headers=next(who)),
                max(n, len(filters) * 6),
                "worklist",
            )
            # Deep in the list (row ~30,000 of the priority order): page numbers (OFFSET) against a cursor.
            deep: dict[str, Any] = {"sort": "priority", "page_size": 100}
            page = min(300, max(1, seeded.scans // 100 - 1))
            cursor = client.get(f"/api/projects/{pid}/worklist", params={**deep, "page": page - 1}, headers=lead)
            out["worklist-deep-page"] = _timed(
                lambda: client.get(f"/api/projects/{pid}/worklist", params={**deep, "page": page}, headers=lead),
                n,
                "worklist deep page",
            )
            after = {**deep, "after": cursor.json()["next_cursor"]}
            out["worklist-deep-cursor"] = _timed(
                lambda: client.get(f"/api/projects/{pid}/worklist", params=after, headers=lead),
                n,
                "worklist deep cursor",
            )
        else:
            _log("GET /api/projects/{pid}/worklist is not there yet: skipped")
        if any(p.endswith("/next-task") for p in paths):
            out["next_task"] = _next_task(client, pid, annotators, reviewers, n)
        else:
            _log("POST /api/projects/{pid}/next-task is not there yet: skipped")
        for name in DASHBOARD:
            out[f"dashboard_{name}"] = _timed(
                lambda name=name: client.get(f"/api/projects/{pid}/dashboard/{name}", headers=lead),  # type: ignore[misc]
                n,
                name,
            )
        with psycopg.connect(_pg_conninfo(url), autocommit=True) as conn:
            rng = random.Random(SEED + 3)

            out["dashboard_structures_after_save"] = _timed(
                lambda: client.get(f"/api/projects/{pid}/dashboard/structures", headers=lead),
                n,
                "structures after a save",
                before=lambda: _simulate_save(conn, rng.randint(1, seeded.scans), rng.randrange(28)),
            )
            # The turnaround answer is cached until a review decision arrives: time it after one, every time.
            out["dashboard_turnaround_after_decision"] = _timed(
                lambda: client.get(f"/api/projects/{pid}/dashboard/turnaround", headers=lead),
                n,
                "turnaround after a decision",
                before=lambda: _simulate_decision(conn, pid, rng.randint(1, seeded.scans)),
            )
        out["dashboard_structures_recomputed"] = _timed(
            lambda: client.get(f"/api/projects/{pid}/dashboard/structures", params={"fresh": "true"}, headers=lead),
            max(5, n // 8),
            "structures recomputed from the versions",
        )
    return out


def _api_token(base: str, seeded: Seeded) -> str:
    """An API token of the lead: it works in any API process (a login's token is signed with the process's key)."""
    with httpx.Client(base_url=base, timeout=httpx.Timeout(60.0)) as client:
        lead = _login(client, seeded.people["lead"][0][1])
        response = client.post("/api/auth/tokens", json={"name": "bench fresh processes"}, headers=lead)
        response.raise_for_status()
        return str(response.json()["token"])


def fresh_processes(url: str, workdir: Path, project_id: int, token: str, runs: int) -> list[float]:
    """Wall time (ms) of the first request (structures) of each of `runs` API processes started in turn."""
    from bench.core_spine import uvicorn_process

    times: list[float] = []
    headers = {"Authorization": f"Bearer {token}"}
    for i in range(runs):
        folder = workdir / f"fresh-{i}"
        folder.mkdir()
        with (
            uvicorn_process(url, folder) as (base, _log_path, _process),
            httpx.Client(base_url=base, timeout=httpx.Timeout(120.0)) as client,
        ):
            started = time.perf_counter()
            response = client.get(f"/api/projects/{project_id}/dashboard/structures", headers=headers)
            elapsed = (time.perf_counter() - started) * 1000.0
        if response.status_code != 200 or response.json()["cached"] is not False:
            raise RuntimeError(f"fresh process structures: HTTP {response.status_code}: {response.text[:500]}")
        _log(f"fresh API process {i + 1}/{runs}: first structures request {elapsed:.1f} ms")
        times.append(elapsed)
    return times


def _simulate_decision(conn: psycopg.Connection[Any], project_id: int, scan_id: int) -> None:
    """A review decision as the workflow records it: a `request_changes` transition, now."""
    conn.execute(
        "INSERT INTO task_transitions (project_id, scan_id, action, from_state, to_state, review_level, at) "
        "VALUES (%s, %s, 'request_changes', 'in_review', 'changes_requested', 1, now())",
        (project_id, scan_id),
    )


def _simulate_save(conn: psycopg.Connection[Any], scan_id: int, edited: int) -> None:
    """What a human save does to the tables the structures view reads: a new version (one structure, the
    `edited`-th, painted a little larger) and the head moved to it (the request that follows must see it)."""
    with conn.transaction():
        row = conn.execute(
            "INSERT INTO label_versions (scan_id, parent_id, kind, message, is_branch, new_bytes, created_at) "
            "SELECT id, head_version_id, 'human', 'bench save', false, 1000, now() FROM scans WHERE id = %s "
            "RETURNING id, parent_id",
            (scan_id,),
        ).fetchone()
        assert row is not None
        conn.execute(
            "INSERT INTO label_version_structures "
            "(version_id, structure_id, status, manifest_digest, voxel_count, volume_ml, changed) "
            "WITH pick AS (SELECT structure_id FROM label_version_structures WHERE version_id = %(parent)s "
            "ORDER BY structure_id OFFSET %(edited)s LIMIT 1) "
            "SELECT %(new)s, l.structure_id, l.status, l.manifest_digest, "
            "l.voxel_count + CASE WHEN l.structure_id = pick.structure_id THEN 1000 ELSE 0 END, "
            "l.volume_ml + CASE WHEN l.structure_id = pick.structure_id THEN 1.0 ELSE 0.0 END, "
            "l.structure_id = pick.structure_id "
            "FROM label_version_structures l CROSS JOIN pick WHERE l.version_id = %(parent)s",
            {"new": row[0], "parent": row[1], "edited": edited},
        )
        conn.execute("UPDATE scans SET head_version_id = %s WHERE id = %s", (row[0], scan_id))


def _next_task(
    client: httpx.Client, pid: int, annotators: list[dict[str, str]], reviewers: list[dict[str, str]], n: int
) -> list[float]:
    """next-task calls alternating annotate (annotators) and review (reviewers); each lease released after."""
    times: list[float] = []
    claimed = 0
    people = _cycle([(h, "annotate") for h in annotators[:5]] + [(h, "review") for h in reviewers])
    for i in range(WARMUP + n):
        headers, kind = next(people)
        started = time.perf_counter()
        response = client.post(f"/api/projects/{pid}/next-task", json={"kind": kind}, headers=headers)
        elapsed = (time.perf_counter() - started) * 1000.0
        if response.status_code not in (200, 201, 204):
            raise RuntimeError(f"next-task: HTTP {response.status_code}: {response.text[:500]}")
        if response.status_code != 204:
            claimed += 1
            scan_id = response.json().get("scan_id")
            if scan_id is not None:
                client.delete(f"/api/scans/{scan_id}/lease", headers=headers)
        if i >= WARMUP:
            times.append(elapsed)
    _log(f"next-task: {claimed} of {WARMUP + n} calls claimed a task (the rest answered 204)")
    return times


def rows_of(
    times: dict[str, list[float]], seeded: Seeded, fresh: list[float] | None = None, migration_s: float = math.nan
) -> list[Row]:
    """Result rows: per-endpoint p50/p95, the three headline p95s, the fresh-process structures request and the
    upgrade of the seeded database."""
    rows: list[Row] = [Row("review_scale_scans", "review scale: scans seeded", float(seeded.scans), "scans")]
    rows.append(Row("review_scale_seed_s", "review scale: seeding time", seeded.seconds, "s"))
    rows.append(
        Row("review_scale_load_avg", "review scale: 1-min load average after measuring", os.getloadavg()[0], "")
    )
    rows.append(
        Row(
            "review_scale_structure_rows",
            "review scale: label_version_structures rows",
            float(seeded.counts.get("label_version_structures", 0)),
            "rows",
        )
    )

    def headline(key: str, label: str, values: list[float]) -> Row:
        value = percentile(values, 95)
        met = None if math.isnan(value) else value < GOAL_MS
        return Row(key, label, value, "ms", f"< {GOAL_MS:.0f} ms", met)

    rows.append(headline("worklist_p95_ms", "worklist p95 (filter mix)", times.get("worklist", [])))
    rows.append(headline("next_task_p95_ms", "next-task p95", times.get("next_task", [])))
    dash = {k: v for k, v in times.items() if k.startswith("dashboard_") and not k.endswith("_recomputed")}
    slowest = max(dash, key=lambda k: percentile(dash[k], 95)) if dash else ""
    rows.append(headline("dashboard_p95_ms", f"dashboard p95 (slowest: {slowest})", dash.get(slowest, [])))
    for label, values in times.items():
        key = label.replace("-", "_")
        rows.append(Row(f"{key}_p50_ms", f"{label} p50 ({len(values)} requests)", percentile(values, 50), "ms"))
        if f"{key}_p95_ms" not in {r.key for r in rows}:  # the headline rows already hold these
            rows.append(Row(f"{key}_p95_ms", f"{label} p95", percentile(values, 95), "ms", NO_GOAL))
    fresh = fresh or []
    first = percentile(fresh, 95)
    rows.append(
        Row(
            "dashboard_structures_fresh_p95_ms",
            f"first structures request of a fresh API process p95 ({len(fresh)} processes)",
            first,
            "ms",
            f"≤ {GOAL_MS:.0f} ms",
            None if math.isnan(first) else first <= GOAL_MS,
        )
    )
    rows.append(
        Row("dashboard_structures_fresh_p50_ms", "first structures request of a fresh API process p50",
            percentile(fresh, 50), "ms")
    )  # fmt: skip
    rows.append(
        Row(
            "migration_36k_s",
            f"alembic upgrade {BEFORE_AGGREGATES} → head of the seeded database ({seeded.scans:,} scans)",
            migration_s,
            "s",
            f"≤ {MIGRATION_GOAL_S:.0f} s",
            None if math.isnan(migration_s) else migration_s <= MIGRATION_GOAL_S,
        )
    )
    return rows


@contextmanager
def _database_at(name: str, revision: str) -> Iterator[str]:
    """A fresh PostgreSQL database migrated to `revision`, dropped on exit; yields its SQLAlchemy URL."""
    from backend.core import migrate
    from bench.core_spine import PG_ADMIN_URL

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://", 1)
        url = f"{base}/{name}"
        migrate.upgrade(url, revision)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def upgrade_seeded(url: str) -> float:
    """Seconds `alembic upgrade head` takes on the seeded database (then `VACUUM ANALYZE`, untimed)."""
    from backend.core import migrate

    started = time.perf_counter()
    migrate.upgrade(url)
    seconds = time.perf_counter() - started
    with psycopg.connect(_pg_conninfo(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
    return seconds


def run(n_scans: int | None = None, fresh_runs: int = FRESH_PROCESSES) -> list[Row]:
    """Seed a PanTS-scale project at revision 0009, time the upgrade to head, serve it with uvicorn and time the
    endpoints, then the first request of freshly started API processes."""
    from bench.core_spine import uvicorn_server

    n_scans = n_scans or int(os.environ.get("MASKLOOP_BENCH_REVIEW_SCANS", FULL_SCANS))
    with ExitStack() as stack:
        workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="maskloop-review-")))
        url = stack.enter_context(_database_at(f"maskloop_review_{os.getpid()}", BEFORE_AGGREGATES))
        seeded = seed(url, n_scans)
        _log(f"seeded {n_scans:,} scans in {seeded.seconds:.1f} s: {seeded.counts}")
        migration_s = upgrade_seeded(url)
        _log(f"alembic upgrade {BEFORE_AGGREGATES} -> head: {migration_s:.1f} s")
        base, _log_path = stack.enter_context(uvicorn_server(url, workdir))
        times = measure(base, url, seeded)
        token = _api_token(base, seeded)
        fresh = fresh_processes(url, workdir, seeded.project_id, token, fresh_runs)
    for label, values in times.items():
        _log(f"{label:32s} p50 {percentile(values, 50):8.1f} ms  p95 {percentile(values, 95):8.1f} ms")
    return rows_of(times, seeded, fresh, migration_s)


def main(argv: list[str]) -> int:
    """`python -m bench.review_scale [--quick | --scans N]`: run and print, without writing results.json."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help=f"seed {QUICK_SCANS:,} scans (smoke run)")
    parser.add_argument("--scans", type=int, default=None, help="number of scans to seed")
    args = parser.parse_args(argv)
    rows = run(QUICK_SCANS if args.quick else args.scans, 3 if args.quick else FRESH_PROCESSES)
    for row in rows:
        print(f"{row.key:44s} {row.value:12.1f} {row.unit:6s} {row.goal}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
