"""PACS over DICOMweb: pacs_sources, pacs_identities, pacs_series; scans.source_study_uid/source_series_uid; job
kind 'pacs' (WADO-RS retrieval and STOW-RS of a SEG)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-08 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_KINDS_BEFORE = "kind IN ('preannotate', 'attention', 'train', 'import', 'export', 'evaluate', 'fuse')"
_KINDS_AFTER = "kind IN ('preannotate', 'attention', 'train', 'import', 'export', 'evaluate', 'fuse', 'pacs')"


def _replace_kind_check(condition: str) -> None:
    # SQLite cannot alter a CHECK constraint in place: batch mode copies the table (env.py renders as batch there).
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_kind_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_kind_known"), condition)


def upgrade() -> None:
    """Create the PACS tables, the scans' source UID columns and the 'pacs' job kind."""
    op.create_table(
        "pacs_sources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("base_url", sa.String(length=1000), nullable=False),
        sa.Column("username", sa.String(length=200), nullable=True),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("deidentify", sa.Boolean(), nullable=False),
        sa.Column("salt", sa.String(length=64), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_pacs_sources_project_id_projects", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name="fk_pacs_sources_created_by_users", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_pacs_sources"),
        sa.UniqueConstraint("project_id", name="uq_pacs_sources_project_id"),
    )
    op.create_table(
        "pacs_identities",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("original", sa.String(length=200), nullable=False),
        sa.Column("research", sa.String(length=200), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('patient', 'study', 'series')", name="ck_pacs_identities_kind_known"),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_pacs_identities_project_id_projects", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_pacs_identities"),
        sa.UniqueConstraint("project_id", "kind", "original", name="uq_pacs_identities_project_kind_original"),
    )
    op.create_index("ix_pacs_identities_project_research", "pacs_identities", ["project_id", "research"])
    op.create_table(
        "pacs_series",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("study_uid", sa.String(length=64), nullable=False),
        sa.Column("series_uid", sa.String(length=64), nullable=False),
        sa.Column("instances", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_pacs_series_project_id_projects", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name="fk_pacs_series_scan_id_scans", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_pacs_series_job_id_jobs", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_pacs_series"),
        sa.UniqueConstraint("project_id", "series_uid", name="uq_pacs_series_project_series"),
        sa.UniqueConstraint("scan_id", name="uq_pacs_series_scan_id"),
    )
    # Plain ADD COLUMN (no batch copy on SQLite): the dashboard triggers on scans stay as they are.
    op.add_column("scans", sa.Column("source_study_uid", sa.String(length=64), nullable=True))
    op.add_column("scans", sa.Column("source_series_uid", sa.String(length=64), nullable=True))
    op.create_index("ix_scans_project_source_series", "scans", ["project_id", "source_series_uid"])
    _replace_kind_check(_KINDS_AFTER)


def downgrade() -> None:
    """Drop the PACS tables and columns (PACS jobs are deleted: the older schema has no kind for them)."""
    op.execute("DELETE FROM jobs WHERE kind = 'pacs'")
    _replace_kind_check(_KINDS_BEFORE)
    op.drop_index("ix_scans_project_source_series", table_name="scans")
    with op.batch_alter_table("scans", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("source_series_uid")
        batch_op.drop_column("source_study_uid")
    op.drop_table("pacs_series")
    op.drop_index("ix_pacs_identities_project_research", table_name="pacs_identities")
    op.drop_table("pacs_identities")
    op.drop_table("pacs_sources")
