"""evaluation runs, per-case-per-structure metrics, per-case tumour detection

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 01:54:34.371439
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Apply this revision."""
    op.create_table(
        "evaluation_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "config", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("job_id", sa.Integer(), nullable=True),
        sa.Column("model_version_id", sa.Integer(), nullable=True),
        sa.Column(
            "summary", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_by", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed')", name=op.f("ck_evaluation_runs_status_known")
        ),
        sa.ForeignKeyConstraint(
            ["created_by"], ["users.id"], name=op.f("fk_evaluation_runs_created_by_users"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name=op.f("fk_evaluation_runs_job_id_jobs"), ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_evaluation_runs_model_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_evaluation_runs_project_id_projects"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_runs")),
    )
    with op.batch_alter_table("evaluation_runs", schema=None) as batch_op:
        batch_op.create_index("ix_evaluation_runs_model_version", ["model_version_id"], unique=False)
        batch_op.create_index("ix_evaluation_runs_project_created", ["project_id", "created_at"], unique=False)

    op.create_table(
        "evaluation_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("structure_id", sa.Integer(), nullable=False),
        sa.Column("gt_version_id", sa.Integer(), nullable=True),
        sa.Column("pred_version_id", sa.Integer(), nullable=True),
        sa.Column("dsc", sa.Float(), nullable=False),
        sa.Column("nsd", sa.Float(), nullable=True),
        sa.Column("hd95", sa.Float(), nullable=True),
        sa.Column("nsd_tolerance_mm", sa.Float(), nullable=False),
        sa.Column("gt_ml", sa.Float(), nullable=False),
        sa.Column("pred_ml", sa.Float(), nullable=False),
        sa.Column("volume_error_ml", sa.Float(), nullable=False),
        sa.Column("volume_error_rel", sa.Float(), nullable=True),
        sa.Column("gt_empty", sa.Boolean(), nullable=False),
        sa.Column("pred_empty", sa.Boolean(), nullable=False),
        sa.Column("surface_status", sa.String(length=16), nullable=False),
        sa.ForeignKeyConstraint(
            ["gt_version_id"],
            ["label_versions.id"],
            name=op.f("fk_evaluation_cases_gt_version_id_label_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["pred_version_id"],
            ["label_versions.id"],
            name=op.f("fk_evaluation_cases_pred_version_id_label_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["evaluation_runs.id"],
            name=op.f("fk_evaluation_cases_run_id_evaluation_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_evaluation_cases_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["structure_id"],
            ["structures.id"],
            name=op.f("fk_evaluation_cases_structure_id_structures"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_cases")),
        sa.UniqueConstraint("run_id", "scan_id", "structure_id", name="uq_evaluation_cases_run_scan_structure"),
    )
    with op.batch_alter_table("evaluation_cases", schema=None) as batch_op:
        batch_op.create_index("ix_evaluation_cases_run_structure", ["run_id", "structure_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_evaluation_cases_scan_id"), ["scan_id"], unique=False)

    op.create_table(
        "evaluation_detections",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("tumour", sa.Boolean(), nullable=False),
        sa.Column("detected", sa.Boolean(), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=False),
        sa.Column("confidence_source", sa.String(length=16), nullable=False),
        sa.Column("predicted_components", sa.Integer(), nullable=False),
        sa.Column("false_positive_components", sa.Integer(), nullable=False),
        sa.Column("predicted_volume_ml", sa.Float(), nullable=False),
        sa.Column(
            "gt_lesions", sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"), nullable=False
        ),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["evaluation_runs.id"],
            name=op.f("fk_evaluation_detections_run_id_evaluation_runs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_evaluation_detections_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evaluation_detections")),
        sa.UniqueConstraint("run_id", "scan_id", name="uq_evaluation_detections_run_scan"),
    )
    with op.batch_alter_table("evaluation_detections", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_evaluation_detections_scan_id"), ["scan_id"], unique=False)


def downgrade() -> None:
    """Revert this revision."""
    with op.batch_alter_table("evaluation_detections", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluation_detections_scan_id"))

    op.drop_table("evaluation_detections")
    with op.batch_alter_table("evaluation_cases", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_evaluation_cases_scan_id"))
        batch_op.drop_index("ix_evaluation_cases_run_structure")

    op.drop_table("evaluation_cases")
    with op.batch_alter_table("evaluation_runs", schema=None) as batch_op:
        batch_op.drop_index("ix_evaluation_runs_project_created")
        batch_op.drop_index("ix_evaluation_runs_model_version")

    op.drop_table("evaluation_runs")
