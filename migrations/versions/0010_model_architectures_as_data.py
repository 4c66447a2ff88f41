"""model architectures are data (the predictor registry), not a CHECK constraint

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 03:00:00.000000

The API checks a model's architecture against the shared catalogue (``backend.core.inference_rules``, which a
predictor registration extends), so a new architecture is one worker module and no migration. Only the CHECK goes:
no row changes. PostgreSQL drops it in its catalogue (no table rewrite, no scan). SQLite cannot drop a constraint,
and batch mode's copy-and-drop of ``models`` would fire ``ON DELETE CASCADE`` on every model version (the embedded
database enforces foreign keys, and a pragma cannot turn them off inside the migration's transaction), so the table's
stored definition is edited instead: SQLite documents this for removing CHECK constraints, which leaves the stored
rows valid as they are.
"""

import re
from collections.abc import Callable, Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_NAME = "ck_models_architecture_known"
_BUNDLED = ("unet", "segresnet", "classical")
_CONDITION = "architecture IN ('unet', 'segresnet', 'classical')"
_SQLITE_CHECK = re.compile(r",\s*CONSTRAINT " + _NAME + r" CHECK \(architecture IN \([^)]*\)\)")


def _edit_sqlite_table(table: str, edit: Callable[[str], str]) -> None:
    """Rewrite a table's stored CREATE statement in place (https://sqlite.org/lang_altertable.html, section 7)."""
    bind = op.get_bind()
    sql = bind.exec_driver_sql("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).scalar_one()
    version = int(bind.exec_driver_sql("PRAGMA schema_version").scalar_one())
    bind.exec_driver_sql("PRAGMA writable_schema = ON")
    bind.exec_driver_sql("UPDATE sqlite_master SET sql = ? WHERE type = 'table' AND name = ?", (edit(sql), table))
    # A new schema version makes every connection re-read the definition.
    bind.exec_driver_sql(f"PRAGMA schema_version = {version + 1}")
    bind.exec_driver_sql("PRAGMA writable_schema = OFF")


def _without_check(sql: str) -> str:
    edited, count = _SQLITE_CHECK.subn("", sql)
    if count != 1:
        raise RuntimeError(f"expected one {_NAME} constraint in the models table, found {count}")
    return edited


def _with_check(sql: str) -> str:
    end = sql.rindex(")")
    return f"{sql[:end].rstrip()}, \n\tCONSTRAINT {_NAME} CHECK ({_CONDITION})\n{sql[end:]}"


def upgrade() -> None:
    """Apply this revision."""
    if op.get_bind().dialect.name == "sqlite":
        _edit_sqlite_table("models", _without_check)
    else:
        op.drop_constraint(op.f(_NAME), "models", type_="check")


def downgrade() -> None:
    """Revert this revision; refused while a model uses an architecture the older schema does not list."""
    others = op.get_bind().execute(
        sa.text("SELECT DISTINCT architecture FROM models WHERE architecture NOT IN ('unet', 'segresnet', 'classical')")
    )
    names = sorted(str(row[0]) for row in others)
    if names:
        raise RuntimeError(
            f"models of the architectures {names} exist; the schema before 0010 allows only {list(_BUNDLED)}: "
            "delete those models before downgrading"
        )
    if op.get_bind().dialect.name == "sqlite":
        _edit_sqlite_table("models", _with_check)  # every row passes: checked above
    else:
        op.create_check_constraint(op.f(_NAME), "models", _CONDITION)
