"""Login sessions (server-side, revocable) and the login throttle shared by every API process."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import ForeignKey, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from backend.core.db import Base, UTCDateTime
from backend.models._common import created_at_column, utcnow


class AuthSession(Base):
    """One sign-in: its access tokens carry its id (`sid`), so revoking the row kills them at once.

    The refresh cookie and the CSRF token are stored only as sha256; `expires_at` is absolute: no refresh goes
    past it.
    """

    __tablename__ = "auth_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True)
    created_at: Mapped[datetime] = created_at_column()
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    refresh_sha256: Mapped[str] = mapped_column(String(64), unique=True, nullable=False)
    csrf_sha256: Mapped[str] = mapped_column(String(64), nullable=False)
    user_agent: Mapped[str] = mapped_column(String(300), nullable=False, default="")
    client_address: Mapped[str] = mapped_column(String(64), nullable=False, default="")


class LoginThrottle(Base):
    """Recent failed sign-ins of one account (e-mail, known or not) or one client address, and its lockout.

    The key is stored as sha256 (people type passwords into the e-mail field); rows are updated by an atomic
    upsert so every API process sees the same counts.
    """

    __tablename__ = "login_throttle"

    key_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    kind: Mapped[str] = mapped_column(String(16), nullable=False)
    failures: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    last_failure_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    locked_until: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
