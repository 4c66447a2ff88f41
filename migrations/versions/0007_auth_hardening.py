"""logins throttled, token lifetimes, refresh sessions, revocation

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-06 00:30:00.000000
"""

import os
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _max_days(variable: str, default: int) -> int:
    # Revisions never import app code; the environment variable is the setting's (Settings reads the same name).
    try:
        return max(1, int(os.environ.get(variable, default)))
    except ValueError:
        return default


def upgrade() -> None:
    """Apply this revision: sessions and throttle tables; API tokens without expiry get one."""
    op.create_table(
        "auth_sessions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("refresh_sha256", sa.String(length=64), nullable=False),
        sa.Column("csrf_sha256", sa.String(length=64), nullable=False),
        sa.Column("user_agent", sa.String(length=300), nullable=False),
        sa.Column("client_address", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_auth_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_sessions")),
        sa.UniqueConstraint("refresh_sha256", name=op.f("uq_auth_sessions_refresh_sha256")),
    )
    op.create_index(op.f("ix_auth_sessions_user_id"), "auth_sessions", ["user_id"], unique=False)
    op.create_table(
        "login_throttle",
        sa.Column("key_sha256", sa.String(length=64), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("last_failure_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("key_sha256", name=op.f("pk_login_throttle")),
    )
    # Tokens made before lifetimes existed expire at migration time plus the (configured) maximum lifetime.
    now = datetime.now(UTC)
    tokens = sa.table(
        "api_tokens",
        sa.column("user_id", sa.Integer()),
        sa.column("expires_at", sa.DateTime(timezone=True)),
    )
    users = sa.table("users", sa.column("id", sa.Integer()), sa.column("is_service", sa.Boolean()))
    service_ids = sa.select(users.c.id).where(users.c.is_service.is_(True))
    for is_service, days in (
        (True, _max_days("MASKLOOP_SERVICE_TOKEN_MAX_DAYS", 365)),
        (False, _max_days("MASKLOOP_PERSONAL_TOKEN_MAX_DAYS", 30)),
    ):
        owner = tokens.c.user_id.in_(service_ids) if is_service else tokens.c.user_id.not_in(service_ids)
        op.execute(
            tokens.update()
            .where(tokens.c.expires_at.is_(None), owner)
            .values(expires_at=sa.bindparam("until", now + timedelta(days=days), type_=sa.DateTime(timezone=True)))
        )


def downgrade() -> None:
    """Revert this revision (expiry dates given to old tokens stay: they are valid values there too)."""
    op.drop_table("login_throttle")
    op.drop_index(op.f("ix_auth_sessions_user_id"), table_name="auth_sessions")
    op.drop_table("auth_sessions")
