"""fusion of a reader set as a queued job: job kind 'fuse'

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 03:15:00.000000
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BEFORE = "kind IN ('preannotate', 'attention', 'train', 'import', 'export', 'evaluate')"
_AFTER = "kind IN ('preannotate', 'attention', 'train', 'import', 'export', 'evaluate', 'fuse')"


def _replace_kind_check(condition: str) -> None:
    # SQLite cannot alter a CHECK constraint in place: batch mode copies the table (env.py renders as batch there).
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_kind_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_kind_known"), condition)


def upgrade() -> None:
    """Apply this revision."""
    _replace_kind_check(_AFTER)


def downgrade() -> None:
    """Revert this revision (fusion jobs are deleted: the older schema has no kind for them)."""
    op.execute("DELETE FROM jobs WHERE kind = 'fuse'")
    _replace_kind_check(_BEFORE)
