"""structure codes: structures.code, the DICOM SEG code of each structure of a label schema (SNOMED CT category,
type, laterality modifier, anatomic region; see backend/imaging/dicom_codes.py)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08 12:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    """Add the nullable structures.code (None: coded from the standard table by name when a SEG is written)."""
    # Plain ADD COLUMN (no batch copy on SQLite).
    op.add_column("structures", sa.Column("code", JSON, nullable=True))


def downgrade() -> None:
    """Drop structures.code."""
    with op.batch_alter_table("structures", schema=None, recreate="never") as batch_op:
        batch_op.drop_column("code")
