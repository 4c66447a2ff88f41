"""dataset imports as jobs: import_runs (one per project and dataset folder) and import_cases (one per case)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Create the import_runs and import_cases tables."""
    op.create_table(
        "import_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("root", sa.String(length=1000), nullable=False),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("launched_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("launches", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name="fk_import_runs_project_id_projects", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name="fk_import_runs_created_by_users", ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_import_runs"),
        sa.UniqueConstraint("project_id", "root", name="uq_import_runs_project_root"),
    )
    op.create_table(
        "import_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(length=200), nullable=False),
        sa.Column("split", sa.String(length=16), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("file", sa.String(length=1000), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("raw_metadata", JSON, nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=True),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("notes", JSON, nullable=False),
        sa.Column("timings", JSON, nullable=False),
        sa.Column("worker", sa.String(length=200), nullable=True),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('pending', 'running', 'imported', 'skipped', 'failed')",
            name="ck_import_cases_status_known",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"], ["import_runs.id"], name="fk_import_cases_run_id_import_runs", ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(["scan_id"], ["scans.id"], name="fk_import_cases_scan_id_scans", ondelete="SET NULL"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], name="fk_import_cases_job_id_jobs", ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id", name="pk_import_cases"),
        sa.UniqueConstraint("run_id", "case_id", name="uq_import_cases_run_case"),
    )
    op.create_index("ix_import_cases_run_status", "import_cases", ["run_id", "status"])
    op.create_index("ix_import_cases_scan_id", "import_cases", ["scan_id"])
    op.create_index("ix_import_cases_job_id", "import_cases", ["job_id"])


def downgrade() -> None:
    """Drop the import tables."""
    op.drop_index("ix_import_cases_job_id", table_name="import_cases")
    op.drop_index("ix_import_cases_scan_id", table_name="import_cases")
    op.drop_index("ix_import_cases_run_status", table_name="import_cases")
    op.drop_table("import_cases")
    op.drop_table("import_runs")
