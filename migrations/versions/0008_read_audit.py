"""append-only read log of volumes, masks and export downloads

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 00:30:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision: the read_events table and its indexes (project, scan, user by time)."""
    op.create_table(
        "read_events",
        # BIGINT on PostgreSQL; SQLite needs INTEGER for its rowid primary key.
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.String(length=200), nullable=False),
        sa.Column("digest", sa.String(length=64), nullable=True),
        sa.Column("client", sa.String(length=64), nullable=True),
        sa.Column("not_modified", sa.Boolean(), nullable=False),
        sa.CheckConstraint(
            "kind IN ('volume', 'mask', 'combined', 'export', 'attention', 'prediction')",
            name=op.f("ck_read_events_kind_known"),
        ),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_read_events_user_id_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_read_events_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_read_events")),
    )
    op.create_index("ix_read_events_project_at", "read_events", ["project_id", "at"], unique=False)
    op.create_index("ix_read_events_scan_at", "read_events", ["scan_id", "at"], unique=False)
    op.create_index("ix_read_events_user_at", "read_events", ["user_id", "at"], unique=False)


def downgrade() -> None:
    """Revert this revision (the read log is dropped)."""
    op.drop_index("ix_read_events_user_at", table_name="read_events")
    op.drop_index("ix_read_events_scan_at", table_name="read_events")
    op.drop_index("ix_read_events_project_at", table_name="read_events")
    op.drop_table("read_events")
