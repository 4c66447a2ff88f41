"""Column helpers shared by the ORM tables."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy.orm import mapped_column
from sqlalchemy.orm.properties import MappedColumn

from backend.core.db import UTCDateTime


def utcnow() -> datetime:
    """Timezone-aware current time in UTC."""
    return datetime.now(UTC)


def created_at_column() -> MappedColumn[datetime]:
    """A non-null creation timestamp filled in by Python (same on SQLite and PostgreSQL)."""
    return mapped_column(UTCDateTime(), default=utcnow, nullable=False)
