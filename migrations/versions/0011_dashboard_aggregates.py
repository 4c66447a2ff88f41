"""dashboard aggregates kept in the writing transaction, shared by every API process

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-06 03:00:00.000000

Three tables (`backend/models/dashboard.py`) and the triggers that keep them current in the transaction that
writes the rows they summarise, whoever writes them (the services, the CLI, raw SQL):

* `dashboard_volumes`: per scan, basis (head / approved) and structure, the volume of the chosen version when the
  structure is present and non-empty. Moved by triggers on `scans.head_version_id`, `scan_tasks.approved_version_id`
  and `label_version_structures` (a chosen version's rows written after the pointer moved); a scan's deletion removes
  them by cascade. PostgreSQL rewrites only the rows that changed (`dashboard_choose`).
* `dashboard_totals`: per project, basis, structure and quarter-octave volume bin, count and volume sum in shards
  (structure 0: the scans with a chosen version), maintained by statement triggers on `dashboard_volumes`
  (PostgreSQL; row triggers on SQLite, one bin). A writer adds to the shard of its backend, so concurrent saves in
  one project rarely wait on one row; a reader finds the bin of a median and walks the index from there.
* `dashboard_decisions` (PostgreSQL; SQLite computes turnaround from the transitions): each review decision's
  turnaround seconds, recomputed for a scan's decisions at or after a transition that is inserted, updated or
  deleted.

Upgrading fills them from the existing rows with set-based SQL (`dashboard_rebuild()` on PostgreSQL, which a bulk
load with triggers off calls again), adds the indexes and foreign keys after the load, and vacuums them so the
first median is an index-only walk. A later SQLite batch migration that rebuilds `scans`, `scan_tasks` or
`label_version_structures` drops their triggers: it must create them again (`_SQLITE_TRIGGERS` below).
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# --- PostgreSQL ---

# The turnaround of the decisions of some scans at or after (at, id): per decision one backward probe for the event
# before it and, for an approval, the first submission after the previous approval (ties in time broken by id).
_PG_DECISIONS_SYNC = """
CREATE FUNCTION dashboard_decisions_sync(p_scans integer[], p_ats timestamptz[], p_ids integer[])
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dashboard_decisions dd
    USING unnest(p_scans, p_ats, p_ids) AS s(scan_id, at, id)
    WHERE dd.scan_id = s.scan_id AND (dd.decided_at, dd.transition_id) >= (s.at, s.id);
    INSERT INTO dashboard_decisions
        (transition_id, project_id, scan_id, decided_at, first_review_s, approval_s, revision)
    SELECT d.id, d.project_id, d.scan_id, d.at,
           CASE WHEN last_event.action = 'submit' THEN extract(epoch FROM d.at - last_event.at)::float8 END,
           extract(epoch FROM d.at - cycle.at)::float8,
           nextval('dashboard_decisions_revision_seq')
    FROM unnest(p_scans, p_ats, p_ids) AS s(scan_id, at, id)
    JOIN task_transitions d ON d.scan_id = s.scan_id AND (d.at, d.id) >= (s.at, s.id)
    LEFT JOIN LATERAL (
        SELECT p.action, p.at FROM task_transitions p
        WHERE p.scan_id = d.scan_id AND p.action IN ('submit', 'approve', 'request_changes')
          AND (p.at, p.id) < (d.at, d.id)
        ORDER BY p.at DESC, p.id DESC LIMIT 1
    ) AS last_event ON true
    LEFT JOIN LATERAL (
        SELECT min(c.at) AS at FROM task_transitions c
        WHERE d.to_state = 'approved' AND c.scan_id = d.scan_id AND c.action = 'submit'
          AND (c.at, c.id) < (d.at, d.id)
          AND c.at > coalesce(
              (SELECT max(pa.at) FROM task_transitions pa
               WHERE pa.scan_id = d.scan_id AND pa.to_state = 'approved' AND (pa.at, pa.id) < (d.at, d.id)),
              '-infinity'::timestamptz)
    ) AS cycle ON true
    WHERE d.action IN ('approve', 'request_changes');
END $$
"""

# Quarter-octave bins: the top 14 bits of the IEEE 754 double (sign, exponent, two mantissa bits) grow with the
# volume, exactly; volumes below 2**-20 mL (none in practice) share bin -1.
_PG_BIN = """
CREATE FUNCTION dashboard_volume_bin(v float8) RETURNS smallint LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT (CASE WHEN v < 9.5367431640625e-07 THEN -1
                 ELSE (get_byte(float8send(v), 0) << 6) | (get_byte(float8send(v), 1) >> 2) END)::smallint
$$
"""

# Make one scan's rows of one basis mirror a version's present, non-empty structures (NULL: none), touching only
# the rows that change (the totals triggers then lock only the changed structures' shards).
_PG_CHOOSE = """
CREATE FUNCTION dashboard_choose(p_scan integer, p_project integer, p_basis text, p_version integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dashboard_volumes d
    WHERE d.scan_id = p_scan AND d.basis = p_basis
      AND NOT EXISTS (
          SELECT 1 FROM label_version_structures l
          WHERE l.version_id = p_version AND l.structure_id = d.structure_id
            AND l.status = 'present' AND l.voxel_count > 0);
    IF p_version IS NULL THEN
        RETURN;
    END IF;
    UPDATE dashboard_volumes d
    SET version_id = p_version, bin = dashboard_volume_bin(l.volume_ml), volume_ml = l.volume_ml
    FROM label_version_structures l
    WHERE d.scan_id = p_scan AND d.basis = p_basis AND l.version_id = p_version
      AND l.structure_id = d.structure_id AND (d.version_id <> p_version OR d.volume_ml <> l.volume_ml);
    INSERT INTO dashboard_volumes (scan_id, basis, structure_id, project_id, version_id, bin, volume_ml)
    SELECT p_scan, p_basis, l.structure_id, p_project, p_version, dashboard_volume_bin(l.volume_ml), l.volume_ml
    FROM label_version_structures l
    WHERE l.version_id = p_version AND l.status = 'present' AND l.voxel_count > 0
    ORDER BY l.structure_id
    ON CONFLICT (scan_id, basis, structure_id) DO NOTHING;
END $$
"""

# Add to the count of scans with a chosen version (skipped while the project itself is being deleted).
_PG_COUNT = """
CREATE FUNCTION dashboard_count(p_project integer, p_basis text, p_delta integer)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    IF p_delta = 0 OR NOT EXISTS (SELECT 1 FROM projects WHERE id = p_project) THEN
        RETURN;
    END IF;
    INSERT INTO dashboard_totals AS t
        (project_id, basis, structure_id, bin, shard, scans, volume_sum, revision, changed_at)
    VALUES (p_project, p_basis, 0, 0, pg_backend_pid() % 4, p_delta, 0, 1, now())
    ON CONFLICT (project_id, basis, structure_id, bin, shard) DO UPDATE
    SET scans = t.scans + excluded.scans, revision = t.revision + 1, changed_at = excluded.changed_at;
END $$
"""

# Which pointer a trigger on scans / scan_tasks follows: (function, table, pointer column, scan id column, basis).
_PG_POINTERS = [
    ("dashboard_scan_head", "scans", "head_version_id", "id", "head"),
    ("dashboard_task_approved", "scan_tasks", "approved_version_id", "scan_id", "approved"),
]
_PG_POINTER = """
CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.{column} IS NOT NULL THEN
            PERFORM dashboard_choose(NEW.{scan}, NEW.project_id, '{basis}', NEW.{column});
            PERFORM dashboard_count(NEW.project_id, '{basis}', 1);
        END IF;
    ELSIF TG_OP = 'UPDATE' THEN
        IF NEW.{column} IS DISTINCT FROM OLD.{column} THEN
            PERFORM dashboard_choose(NEW.{scan}, NEW.project_id, '{basis}', NEW.{column});
            PERFORM dashboard_count(
                NEW.project_id, '{basis}', (NEW.{column} IS NOT NULL)::int - (OLD.{column} IS NOT NULL)::int);
        END IF;
    ELSIF OLD.{column} IS NOT NULL THEN
        -- a deleted task leaves its scan (and the scan's rows of the other basis)
        PERFORM dashboard_choose(OLD.{scan}, OLD.project_id, '{basis}', NULL);
        PERFORM dashboard_count(OLD.project_id, '{basis}', -1);
    END IF;
    RETURN NULL;
END $$
"""

# A chosen version's structure rows written (or rewritten) after its pointer moved.
_PG_STRUCTURES_CHANGED = """
CREATE FUNCTION dashboard_structures_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    chosen record;
BEGIN
    FOR chosen IN
        SELECT s.id AS scan_id, s.project_id, 'head' AS basis, s.head_version_id AS version_id
        FROM (SELECT DISTINCT version_id FROM changed) c
        JOIN label_versions v ON v.id = c.version_id
        JOIN scans s ON s.id = v.scan_id AND s.head_version_id = c.version_id
        UNION ALL
        SELECT t.scan_id, t.project_id, 'approved', t.approved_version_id
        FROM (SELECT DISTINCT version_id FROM changed) c
        JOIN label_versions v ON v.id = c.version_id
        JOIN scan_tasks t ON t.scan_id = v.scan_id AND t.approved_version_id = c.version_id
    LOOP
        PERFORM dashboard_choose(chosen.scan_id, chosen.project_id, chosen.basis, chosen.version_id);
    END LOOP;
    RETURN NULL;
END $$
"""

# Totals follow the volume rows, whatever moved them (dashboard_choose, a cascade); one statement, one upsert per
# structure, in a fixed order (no deadlock between two writers that share a shard).
_PG_TOTALS_UPSERT = """
    INSERT INTO dashboard_totals AS t
        (project_id, basis, structure_id, bin, shard, scans, volume_sum, revision, changed_at)
    SELECT x.project_id, x.basis, x.structure_id, x.bin, pg_backend_pid() % 4, x.scans, x.volume_sum, 1, now()
    FROM ({delta}) AS x
    WHERE EXISTS (SELECT 1 FROM projects p WHERE p.id = x.project_id)
    ORDER BY x.project_id, x.basis, x.structure_id, x.bin
    ON CONFLICT (project_id, basis, structure_id, bin, shard) DO UPDATE
    SET scans = t.scans + excluded.scans, volume_sum = t.volume_sum + excluded.volume_sum,
        revision = t.revision + 1, changed_at = excluded.changed_at;
"""
# A changed volume leaves its old bin and enters its new one (the same bin: the count stays, the sum moves).
_PG_DELTAS = {
    "INSERT": "SELECT project_id, basis, structure_id, bin, count(*) AS scans, "
    "sum(volume_ml::numeric) AS volume_sum FROM added GROUP BY 1, 2, 3, 4",
    "DELETE": "SELECT project_id, basis, structure_id, bin, -count(*) AS scans, "
    "-sum(volume_ml::numeric) AS volume_sum FROM removed GROUP BY 1, 2, 3, 4",
    "UPDATE": "SELECT m.project_id, m.basis, m.structure_id, side.bin, sum(side.scans) AS scans, "
    "sum(side.volume_sum) AS volume_sum "
    "FROM (SELECT n.project_id, n.basis, n.structure_id, n.bin AS new_bin, n.volume_ml AS new_volume, "
    "o.bin AS old_bin, o.volume_ml AS old_volume "
    "FROM added n JOIN removed o USING (scan_id, basis, structure_id) WHERE n.volume_ml <> o.volume_ml) AS m "
    "CROSS JOIN LATERAL (VALUES (m.new_bin, 1, m.new_volume::numeric), (m.old_bin, -1, -m.old_volume::numeric)) "
    "AS side(bin, scans, volume_sum) GROUP BY 1, 2, 3, 4",
}
_PG_VOLUMES_CHANGED = f"""
CREATE FUNCTION dashboard_volumes_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF current_setting('maskloop.dashboard_rebuild', true) = 'on' THEN
        RETURN NULL;  -- dashboard_rebuild() recounts the totals itself
    END IF;
    IF TG_OP = 'INSERT' THEN
{_PG_TOTALS_UPSERT.format(delta=_PG_DELTAS["INSERT"])}
    ELSIF TG_OP = 'DELETE' THEN
{_PG_TOTALS_UPSERT.format(delta=_PG_DELTAS["DELETE"])}
    ELSE
{_PG_TOTALS_UPSERT.format(delta=_PG_DELTAS["UPDATE"])}
    END IF;
    RETURN NULL;
END $$
"""

# A transition moves the turnaround of its scan's decisions from its moment on (the common case: only itself).
_PG_TRANSITIONS_CHANGED = """
CREATE FUNCTION dashboard_transitions_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    scan_ids integer[];
    ats timestamptz[];
    ids integer[];
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(scan_id), array_agg(at), array_agg(id) INTO scan_ids, ats, ids FROM (
            SELECT DISTINCT ON (scan_id) scan_id, at, id FROM added
            WHERE action IN ('submit', 'approve', 'request_changes') OR to_state = 'approved'
            ORDER BY scan_id, at, id) AS x;
    ELSIF TG_OP = 'DELETE' THEN
        -- skipped for scans being deleted (their decisions go by cascade)
        SELECT array_agg(scan_id), array_agg(at), array_agg(id) INTO scan_ids, ats, ids FROM (
            SELECT DISTINCT ON (r.scan_id) r.scan_id, r.at, r.id FROM removed r
            WHERE EXISTS (SELECT 1 FROM scans s WHERE s.id = r.scan_id)
            ORDER BY r.scan_id, r.at, r.id) AS x;
    ELSE
        SELECT array_agg(scan_id), array_agg(at), array_agg(id) INTO scan_ids, ats, ids FROM (
            SELECT DISTINCT ON (scan_id) scan_id, at, id
            FROM (SELECT scan_id, at, id FROM removed UNION ALL SELECT scan_id, at, id FROM added) AS moved
            ORDER BY scan_id, at, id) AS x;
    END IF;
    IF scan_ids IS NOT NULL THEN
        PERFORM dashboard_decisions_sync(scan_ids, ats, ids);
    END IF;
    RETURN NULL;
END $$
"""

# Everything from the rows (the upgrade's backfill; again after a bulk load with triggers off).
_PG_REBUILD = """
CREATE FUNCTION dashboard_rebuild() RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('maskloop.dashboard_rebuild', 'on', true);
    TRUNCATE dashboard_volumes, dashboard_totals, dashboard_decisions;
    INSERT INTO dashboard_volumes (scan_id, basis, structure_id, project_id, version_id, bin, volume_ml)
    SELECT s.id, 'head', l.structure_id, s.project_id, l.version_id, dashboard_volume_bin(l.volume_ml), l.volume_ml
    FROM scans s JOIN label_version_structures l ON l.version_id = s.head_version_id
    WHERE l.status = 'present' AND l.voxel_count > 0
    UNION ALL
    SELECT t.scan_id, 'approved', l.structure_id, t.project_id, l.version_id, dashboard_volume_bin(l.volume_ml),
           l.volume_ml
    FROM scan_tasks t JOIN label_version_structures l ON l.version_id = t.approved_version_id
    WHERE l.status = 'present' AND l.voxel_count > 0;
    INSERT INTO dashboard_totals
        (project_id, basis, structure_id, bin, shard, scans, volume_sum, revision, changed_at)
    SELECT project_id, basis, structure_id, bin, 0, count(*), sum(volume_ml::numeric), 1, now()
    FROM dashboard_volumes GROUP BY project_id, basis, structure_id, bin
    UNION ALL
    SELECT project_id, 'head', 0, 0, 0, count(*), 0, 1, now()
    FROM scans WHERE head_version_id IS NOT NULL GROUP BY project_id
    UNION ALL
    SELECT project_id, 'approved', 0, 0, 0, count(*), 0, 1, now()
    FROM scan_tasks WHERE approved_version_id IS NOT NULL GROUP BY project_id;
    PERFORM dashboard_decisions_sync(
        array_agg(scan_id), array_agg('-infinity'::timestamptz), array_agg(0))
    FROM (SELECT DISTINCT scan_id FROM task_transitions WHERE action IN ('approve', 'request_changes')) AS decided;
    PERFORM set_config('maskloop.dashboard_rebuild', 'off', true);
END $$
"""

_PG_TRIGGERS = [
    "CREATE TRIGGER dashboard_scans_head AFTER INSERT OR DELETE OR UPDATE OF head_version_id ON scans "
    "FOR EACH ROW EXECUTE FUNCTION dashboard_scan_head()",
    "CREATE TRIGGER dashboard_tasks_approved AFTER INSERT OR DELETE OR UPDATE OF approved_version_id ON scan_tasks "
    "FOR EACH ROW EXECUTE FUNCTION dashboard_task_approved()",
    "CREATE TRIGGER dashboard_structures_inserted AFTER INSERT ON label_version_structures "
    "REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION dashboard_structures_changed()",
    "CREATE TRIGGER dashboard_structures_updated AFTER UPDATE ON label_version_structures "
    "REFERENCING NEW TABLE AS changed FOR EACH STATEMENT EXECUTE FUNCTION dashboard_structures_changed()",
    "CREATE TRIGGER dashboard_volumes_inserted AFTER INSERT ON dashboard_volumes "
    "REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION dashboard_volumes_changed()",
    "CREATE TRIGGER dashboard_volumes_deleted AFTER DELETE ON dashboard_volumes "
    "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION dashboard_volumes_changed()",
    "CREATE TRIGGER dashboard_volumes_updated AFTER UPDATE ON dashboard_volumes "
    "REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT "
    "EXECUTE FUNCTION dashboard_volumes_changed()",
    "CREATE TRIGGER dashboard_transitions_inserted AFTER INSERT ON task_transitions "
    "REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION dashboard_transitions_changed()",
    "CREATE TRIGGER dashboard_transitions_deleted AFTER DELETE ON task_transitions "
    "REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION dashboard_transitions_changed()",
    "CREATE TRIGGER dashboard_transitions_updated AFTER UPDATE ON task_transitions "
    "REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION "
    "dashboard_transitions_changed()",
]
_PG_TRIGGER_TABLES = [
    ("dashboard_scans_head", "scans"),
    ("dashboard_tasks_approved", "scan_tasks"),
    ("dashboard_structures_inserted", "label_version_structures"),
    ("dashboard_structures_updated", "label_version_structures"),
    ("dashboard_transitions_inserted", "task_transitions"),
    ("dashboard_transitions_deleted", "task_transitions"),
    ("dashboard_transitions_updated", "task_transitions"),
]
_PG_FUNCTIONS = [
    "dashboard_rebuild()",
    "dashboard_transitions_changed()",
    "dashboard_volumes_changed()",
    "dashboard_structures_changed()",
    "dashboard_task_approved()",
    "dashboard_scan_head()",
    "dashboard_count(integer, text, integer)",
    "dashboard_choose(integer, integer, text, integer)",
    "dashboard_decisions_sync(integer[], timestamptz[], integer[])",
    "dashboard_volume_bin(float8)",
]

# --- SQLite (one writer at a time: row triggers, whole-scan rewrites, one shard) ---

_SQLITE_NOW = "strftime('%Y-%m-%d %H:%M:%f000', 'now')"
# The chosen version's present, non-empty structures of one scan ({scan}, {project}, {version}: NEW.* columns).
_SQLITE_FILL = """
    INSERT INTO dashboard_volumes (scan_id, basis, structure_id, project_id, version_id, bin, volume_ml)
    SELECT {scan}, '{basis}', l.structure_id, {project}, l.version_id, 0, l.volume_ml
    FROM label_version_structures l
    WHERE l.version_id = {version} AND l.status = 'present' AND l.voxel_count > 0;"""
_SQLITE_COUNT = f"""
    INSERT INTO dashboard_totals
        (project_id, basis, structure_id, bin, shard, scans, volume_sum, revision, changed_at)
    VALUES ({{project}}, '{{basis}}', 0, 0, 0, {{delta}}, 0, 1, {_SQLITE_NOW})
    ON CONFLICT (project_id, basis, structure_id, bin, shard) DO UPDATE
    SET scans = scans + excluded.scans, revision = revision + 1, changed_at = excluded.changed_at;"""
_SQLITE_UNCOUNT = f"""
    UPDATE dashboard_totals SET scans = scans - 1, revision = revision + 1, changed_at = {_SQLITE_NOW}
    WHERE project_id = OLD.project_id AND basis = '{{basis}}' AND structure_id = 0 AND bin = 0 AND shard = 0;"""


def _sqlite_pointer_triggers(name: str, table: str, column: str, scan: str, basis: str) -> list[str]:
    """Insert, update and delete triggers of one version pointer (scans.head_version_id, ...)."""
    fill = _SQLITE_FILL.format(scan=f"NEW.{scan}", basis=basis, project="NEW.project_id", version=f"NEW.{column}")
    return [
        f"CREATE TRIGGER {name}_inserted AFTER INSERT ON {table} WHEN NEW.{column} IS NOT NULL BEGIN"
        + fill
        + _SQLITE_COUNT.format(project="NEW.project_id", basis=basis, delta="1")
        + "\nEND",
        f"CREATE TRIGGER {name}_updated AFTER UPDATE OF {column} ON {table} "
        f"WHEN OLD.{column} IS NOT NEW.{column} BEGIN"
        f"\n    DELETE FROM dashboard_volumes WHERE scan_id = NEW.{scan} AND basis = '{basis}';"
        + fill
        + _SQLITE_COUNT.format(
            project="NEW.project_id",
            basis=basis,
            delta=f"(NEW.{column} IS NOT NULL) - (OLD.{column} IS NOT NULL)",
        )
        + "\nEND",
        f"CREATE TRIGGER {name}_deleted AFTER DELETE ON {table} WHEN OLD.{column} IS NOT NULL BEGIN"
        f"\n    DELETE FROM dashboard_volumes WHERE scan_id = OLD.{scan} AND basis = '{basis}';"
        + _SQLITE_UNCOUNT.format(basis=basis)
        + "\nEND",
    ]


# A structure row of a chosen version, written after the pointer moved (inserted, or rewritten).
_SQLITE_CHOSEN_ROW = """
    INSERT INTO dashboard_volumes (scan_id, basis, structure_id, project_id, version_id, bin, volume_ml)
    SELECT s.id, 'head', NEW.structure_id, s.project_id, NEW.version_id, 0, NEW.volume_ml
    FROM label_versions v JOIN scans s ON s.id = v.scan_id
    WHERE v.id = NEW.version_id AND s.head_version_id = NEW.version_id
      AND NEW.status = 'present' AND NEW.voxel_count > 0
    UNION ALL
    SELECT t.scan_id, 'approved', NEW.structure_id, t.project_id, NEW.version_id, 0, NEW.volume_ml
    FROM label_versions v JOIN scan_tasks t ON t.scan_id = v.scan_id
    WHERE v.id = NEW.version_id AND t.approved_version_id = NEW.version_id
      AND NEW.status = 'present' AND NEW.voxel_count > 0;"""

_SQLITE_TRIGGERS = [
    *_sqlite_pointer_triggers("dashboard_scans_head", "scans", "head_version_id", "id", "head"),
    *_sqlite_pointer_triggers("dashboard_tasks_approved", "scan_tasks", "approved_version_id", "scan_id", "approved"),
    f"CREATE TRIGGER dashboard_structures_inserted AFTER INSERT ON label_version_structures BEGIN"
    f"{_SQLITE_CHOSEN_ROW}\nEND",
    "CREATE TRIGGER dashboard_structures_updated AFTER UPDATE ON label_version_structures BEGIN"
    "\n    DELETE FROM dashboard_volumes WHERE version_id = OLD.version_id AND structure_id = OLD.structure_id"
    "\n      AND scan_id = (SELECT scan_id FROM label_versions WHERE id = OLD.version_id);"
    f"{_SQLITE_CHOSEN_ROW}\nEND",
    f"""CREATE TRIGGER dashboard_volumes_inserted AFTER INSERT ON dashboard_volumes BEGIN
    INSERT INTO dashboard_totals
        (project_id, basis, structure_id, bin, shard, scans, volume_sum, revision, changed_at)
    VALUES (NEW.project_id, NEW.basis, NEW.structure_id, NEW.bin, 0, 1, NEW.volume_ml, 1, {_SQLITE_NOW})
    ON CONFLICT (project_id, basis, structure_id, bin, shard) DO UPDATE
    SET scans = scans + 1, volume_sum = volume_sum + excluded.volume_sum, revision = revision + 1,
        changed_at = excluded.changed_at;
END""",
    f"""CREATE TRIGGER dashboard_volumes_deleted AFTER DELETE ON dashboard_volumes BEGIN
    UPDATE dashboard_totals
    SET scans = scans - 1, volume_sum = volume_sum - OLD.volume_ml, revision = revision + 1, changed_at = {_SQLITE_NOW}
    WHERE project_id = OLD.project_id AND basis = OLD.basis AND structure_id = OLD.structure_id AND bin = OLD.bin
      AND shard = 0;
END""",
    f"""CREATE TRIGGER dashboard_volumes_updated AFTER UPDATE OF volume_ml ON dashboard_volumes
WHEN OLD.volume_ml IS NOT NEW.volume_ml BEGIN
    UPDATE dashboard_totals
    SET volume_sum = volume_sum + NEW.volume_ml - OLD.volume_ml, revision = revision + 1, changed_at = {_SQLITE_NOW}
    WHERE project_id = NEW.project_id AND basis = NEW.basis AND structure_id = NEW.structure_id AND bin = NEW.bin
      AND shard = 0;
END""",
]
_SQLITE_BACKFILL = [
    """INSERT INTO dashboard_volumes (scan_id, basis, structure_id, project_id, version_id, bin, volume_ml)
    SELECT s.id, 'head', l.structure_id, s.project_id, l.version_id, 0, l.volume_ml
    FROM scans s JOIN label_version_structures l ON l.version_id = s.head_version_id
    WHERE l.status = 'present' AND l.voxel_count > 0
    UNION ALL
    SELECT t.scan_id, 'approved', l.structure_id, t.project_id, l.version_id, 0, l.volume_ml
    FROM scan_tasks t JOIN label_version_structures l ON l.version_id = t.approved_version_id
    WHERE l.status = 'present' AND l.voxel_count > 0""",
    f"""INSERT INTO dashboard_totals
        (project_id, basis, structure_id, bin, shard, scans, volume_sum, revision, changed_at)
    SELECT project_id, basis, structure_id, 0, 0, count(*), sum(volume_ml), 1, {_SQLITE_NOW}
    FROM dashboard_volumes GROUP BY project_id, basis, structure_id
    UNION ALL
    SELECT project_id, 'head', 0, 0, 0, count(*), 0, 1, {_SQLITE_NOW}
    FROM scans WHERE head_version_id IS NOT NULL GROUP BY project_id
    UNION ALL
    SELECT project_id, 'approved', 0, 0, 0, count(*), 0, 1, {_SQLITE_NOW}
    FROM scan_tasks WHERE approved_version_id IS NOT NULL GROUP BY project_id""",
]


def _volume_columns() -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("basis", sa.String(length=8), nullable=False),
        sa.Column("structure_id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        sa.Column("volume_ml", sa.Float(), nullable=False),
        sa.CheckConstraint("basis IN ('head', 'approved')", name=op.f("ck_dashboard_volumes_basis_known")),
    ]


def _total_columns() -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("basis", sa.String(length=8), nullable=False),
        sa.Column("structure_id", sa.Integer(), nullable=False),
        sa.Column("bin", sa.SmallInteger(), nullable=False),
        sa.Column("shard", sa.SmallInteger(), nullable=False),
        sa.Column("scans", sa.Integer(), nullable=False),
        sa.Column("volume_sum", sa.Numeric(asdecimal=False), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("basis IN ('head', 'approved')", name=op.f("ck_dashboard_totals_basis_known")),
    ]


def _decision_columns() -> list[sa.schema.SchemaItem]:
    return [
        sa.Column("transition_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("first_review_s", sa.Float(), nullable=True),
        sa.Column("approval_s", sa.Float(), nullable=True),
        sa.Column("revision", sa.BigInteger(), nullable=False),
    ]


_FOREIGN_KEYS = [
    ("dashboard_volumes", "scans", ["scan_id"], ["id"]),
    ("dashboard_volumes", "structures", ["structure_id"], ["id"]),
    ("dashboard_totals", "projects", ["project_id"], ["id"]),
    ("dashboard_decisions", "task_transitions", ["transition_id"], ["id"]),
]
_PRIMARY_KEYS = [
    ("dashboard_volumes", ["scan_id", "basis", "structure_id"]),
    ("dashboard_totals", ["project_id", "basis", "structure_id", "bin", "shard"]),
    ("dashboard_decisions", ["transition_id"]),
]


def _create_indexes() -> None:
    op.create_index(
        "ix_dashboard_volumes_structure_basis_bin",
        "dashboard_volumes",
        ["structure_id", "basis", "bin", "volume_ml"],
        unique=False,
    )
    op.create_index(
        "ix_dashboard_decisions_project_at",
        "dashboard_decisions",
        ["project_id", "decided_at"],
        unique=False,
        postgresql_include=["transition_id", "revision"],
    )
    op.create_index(
        "ix_dashboard_decisions_scan_at",
        "dashboard_decisions",
        ["scan_id", "decided_at", "transition_id"],
        unique=False,
    )


def _upgrade_postgresql() -> None:
    # Bare tables first: the backfill loads them without per-row index and foreign-key work.
    op.create_table("dashboard_volumes", *_volume_columns())
    op.create_table("dashboard_totals", *_total_columns())
    op.create_table("dashboard_decisions", *_decision_columns())
    op.execute("CREATE SEQUENCE dashboard_decisions_revision_seq")
    for ddl in (_PG_BIN, _PG_DECISIONS_SYNC, _PG_CHOOSE, _PG_COUNT, _PG_STRUCTURES_CHANGED, _PG_VOLUMES_CHANGED):
        op.execute(ddl)
    for function, _table, column, scan, basis in _PG_POINTERS:
        op.execute(_PG_POINTER.format(function=function, column=column, scan=scan, basis=basis))
    op.execute(_PG_TRANSITIONS_CHANGED)
    op.execute(_PG_REBUILD)
    op.execute("SELECT dashboard_rebuild()")
    for table, columns in _PRIMARY_KEYS:
        op.create_primary_key(op.f(f"pk_{table}"), table, columns)
    for table, target, local, remote in _FOREIGN_KEYS:
        name = op.f(f"fk_{table}_{local[0]}_{target}")
        op.create_foreign_key(name, table, target, local, remote, ondelete="CASCADE")
    _create_indexes()
    for ddl in _PG_TRIGGERS:
        op.execute(ddl)
    op.execute("ANALYZE dashboard_volumes, dashboard_totals, dashboard_decisions")


def _upgrade_sqlite() -> None:
    foreign = {
        table: [
            sa.ForeignKeyConstraint(
                local,
                [f"{target}.{c}" for c in remote],
                name=op.f(f"fk_{table}_{local[0]}_{target}"),
                ondelete="CASCADE",
            )
            for t, target, local, remote in _FOREIGN_KEYS
            if t == table
        ]
        for table, _ in _PRIMARY_KEYS
    }
    columns = {"dashboard_volumes": _volume_columns, "dashboard_totals": _total_columns}
    columns["dashboard_decisions"] = _decision_columns
    for table, keys in _PRIMARY_KEYS:
        op.create_table(
            table, *columns[table](), *foreign[table], sa.PrimaryKeyConstraint(*keys, name=op.f(f"pk_{table}"))
        )
    _create_indexes()
    for statement in _SQLITE_BACKFILL:
        op.execute(statement)
    for ddl in _SQLITE_TRIGGERS:
        op.execute(ddl)


def upgrade() -> None:
    """Create the aggregate tables and their triggers, filled from the existing rows."""
    if op.get_bind().dialect.name == "postgresql":
        _upgrade_postgresql()
    else:
        _upgrade_sqlite()


def downgrade() -> None:
    """Drop the triggers, functions and aggregate tables."""
    if op.get_bind().dialect.name == "postgresql":
        for trigger, table in _PG_TRIGGER_TABLES:
            op.execute(f"DROP TRIGGER IF EXISTS {trigger} ON {table}")
    else:
        for ddl in _SQLITE_TRIGGERS:
            name = ddl.split()[2]
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
    op.drop_index("ix_dashboard_decisions_scan_at", table_name="dashboard_decisions")
    op.drop_index("ix_dashboard_decisions_project_at", table_name="dashboard_decisions")
    op.drop_index("ix_dashboard_volumes_structure_basis_bin", table_name="dashboard_volumes")
    op.drop_table("dashboard_decisions")
    op.drop_table("dashboard_totals")
    op.drop_table("dashboard_volumes")
    if op.get_bind().dialect.name == "postgresql":
        for function in _PG_FUNCTIONS:
            op.execute(f"DROP FUNCTION IF EXISTS {function}")
        op.execute("DROP SEQUENCE IF EXISTS dashboard_decisions_revision_seq")
