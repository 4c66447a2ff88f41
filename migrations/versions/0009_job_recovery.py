"""job recovery (reaper, redelivery, force-fail): jobs.sent_at, when a job's message last went to the broker

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 00:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision (existing jobs count as sent when they were created)."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("sent_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE jobs SET sent_at = created_at WHERE status = 'queued'")


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("sent_at")
