"""a loop that proves itself: checked weights (job kind 'check_weights', model_versions.weights_status), the
promotion gate of a training round, promotion/rollback decisions, and the AI-vs-final Dice written at approval

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-09 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")

_KINDS_BEFORE = "kind IN ('preannotate', 'attention', 'train', 'import', 'export', 'evaluate', 'fuse', 'pacs')"
_KINDS_AFTER = (
    "kind IN ('preannotate', 'attention', 'train', 'import', 'export', 'evaluate', 'fuse', 'pacs', 'check_weights')"
)


def _replace_kind_check(condition: str) -> None:
    # SQLite cannot alter a CHECK constraint in place: batch mode copies the table (env.py renders as batch there).
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_jobs_kind_known"), type_="check")
        batch_op.create_check_constraint(op.f("ck_jobs_kind_known"), condition)


def upgrade() -> None:
    """Add the weights check, the promotion gate and decisions, and the approval-time AI-vs-final Dice."""
    _replace_kind_check(_KINDS_AFTER)
    # Versions stored before this revision were promoted and used as they were: they count as valid. The defaults
    # stay on the columns (the ORM names them only when set).
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("weights_status", sa.String(length=16), server_default="valid", nullable=False))
        batch_op.add_column(sa.Column("weights_check", JSON, server_default=sa.text("'{}'"), nullable=False))
        batch_op.create_check_constraint(
            op.f("ck_model_versions_weights_status_known"), "weights_status IN ('pending', 'valid', 'invalid')"
        )
    with op.batch_alter_table("training_rounds", schema=None) as batch_op:
        batch_op.add_column(sa.Column("gate", JSON, server_default=sa.text("'{}'"), nullable=False))
    op.create_table(
        "model_decisions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("from_version_id", sa.Integer(), nullable=True),
        sa.Column("to_version_id", sa.Integer(), nullable=True),
        sa.Column("training_round_id", sa.Integer(), nullable=True),
        sa.Column("actor_user_id", sa.Integer(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("gate", JSON, nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.CheckConstraint("kind IN ('promote', 'rollback')", name=op.f("ck_model_decisions_kind_known")),
        sa.ForeignKeyConstraint(
            ["model_id"], ["models.id"], name=op.f("fk_model_decisions_model_id_models"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["from_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_decisions_from_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["to_version_id"],
            ["model_versions.id"],
            name=op.f("fk_model_decisions_to_version_id_model_versions"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["training_round_id"],
            ["training_rounds.id"],
            name=op.f("fk_model_decisions_training_round_id_training_rounds"),
            ondelete="SET NULL",
        ),
        sa.ForeignKeyConstraint(
            ["actor_user_id"], ["users.id"], name=op.f("fk_model_decisions_actor_user_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_decisions")),
    )
    op.create_index("ix_model_decisions_model_id", "model_decisions", ["model_id", "id"])
    op.create_table(
        "approval_dice",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("project_id", sa.Integer(), nullable=False),
        sa.Column("scan_id", sa.Integer(), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("structure_id", sa.Integer(), nullable=False),
        sa.Column("draft_version_id", sa.Integer(), nullable=False),
        sa.Column("final_version_id", sa.Integer(), nullable=False),
        sa.Column("dice", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_approval_dice_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["scan_id"], ["scans.id"], name=op.f("fk_approval_dice_scan_id_scans"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["model_version_id"],
            ["model_versions.id"],
            name=op.f("fk_approval_dice_model_version_id_model_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["structure_id"],
            ["structures.id"],
            name=op.f("fk_approval_dice_structure_id_structures"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["draft_version_id"],
            ["label_versions.id"],
            name=op.f("fk_approval_dice_draft_version_id_label_versions"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["final_version_id"],
            ["label_versions.id"],
            name=op.f("fk_approval_dice_final_version_id_label_versions"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_dice")),
        sa.UniqueConstraint(
            "scan_id", "model_version_id", "structure_id", name="uq_approval_dice_scan_version_structure"
        ),
    )
    op.create_index("ix_approval_dice_model_version", "approval_dice", ["model_version_id", "structure_id"])
    op.create_index("ix_approval_dice_project", "approval_dice", ["project_id"])


def downgrade() -> None:
    """Drop them again (weight-check jobs are deleted: the older schema has no kind for them)."""
    op.drop_index("ix_approval_dice_project", table_name="approval_dice")
    op.drop_index("ix_approval_dice_model_version", table_name="approval_dice")
    op.drop_table("approval_dice")
    op.drop_index("ix_model_decisions_model_id", table_name="model_decisions")
    op.drop_table("model_decisions")
    with op.batch_alter_table("training_rounds", schema=None) as batch_op:
        batch_op.drop_column("gate")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_constraint(op.f("ck_model_versions_weights_status_known"), type_="check")
        batch_op.drop_column("weights_check")
        batch_op.drop_column("weights_status")
    op.execute("DELETE FROM jobs WHERE kind = 'check_weights'")
    _replace_kind_check(_KINDS_BEFORE)
