"""Sign-in throttling kept in the database (shared by every API process) and a bound on concurrent argon2 hashes.

Each failed sign-in counts against its account (the e-mail, whether or not it exists) and its client address.
After `login_max_failures_per_*` failures within the window, the key is locked for `login_lockout_base_s`,
doubling with every further failure up to `login_lockout_max_s`; a locked key is refused before any password is
hashed, even with the right password. A successful sign-in forgets its account's failures (never its address's:
an attacker could otherwise reset an address by signing into an account of their own).
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import case, delete, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from backend.core.config import Settings
from backend.core.errors import ServiceUnavailable, TooManyRequests
from backend.models import LoginThrottle

ACCOUNT, ADDRESS = "account", "address"


def throttle_key(kind: str, value: str) -> str:
    """The stored key of an account or address: a digest, so typed-in secrets are never kept in clear."""
    return hashlib.sha256(f"{kind}:{value.strip().lower()}".encode()).hexdigest()


def _limit(kind: str, settings: Settings) -> int:
    if kind == ACCOUNT:
        return settings.login_max_failures_per_account
    return settings.login_max_failures_per_address


def check_not_locked(db: Session, keys: Sequence[str], now: datetime) -> None:
    """Raise TooManyRequests (with `retry_after` seconds) when any of the keys is locked out now."""
    rows = db.scalars(select(LoginThrottle.locked_until).where(LoginThrottle.key_sha256.in_(keys)))
    until = max((moment for moment in rows if moment is not None), default=None)
    if until is not None and until > now:
        wait = max(1, math.ceil((until - now).total_seconds()))
        raise TooManyRequests(f"too many failed sign-ins; try again in {wait} s", retry_after=wait)


def lockout_seconds(failures: int, limit: int, settings: Settings) -> float:
    """How long a key with this many recent failures is locked (0 below the limit)."""
    if limit <= 0 or failures < limit:
        return 0.0
    # Cap the exponent first: 2 ** a huge count would overflow a float.
    return float(min(settings.login_lockout_max_s, settings.login_lockout_base_s * 2 ** min(failures - limit, 40)))


def _upsert(db: Session) -> Any:
    return postgresql.insert if db.get_bind().dialect.name == "postgresql" else sqlite.insert


def record_failure(db: Session, kind: str, key: str, settings: Settings, now: datetime) -> int:
    """Count one failed sign-in of a key atomically (one upsert) and lock it when over the limit; the new count.

    The count restarts when the last failure is older than the window. Concurrent failures each get their own
    count from the upsert, and the lock only ever moves later, so processes racing on one key agree.
    """
    if _limit(kind, settings) <= 0:
        return 0
    window_start = now - timedelta(seconds=settings.login_failure_window_s)
    insert = _upsert(db)(LoginThrottle).values(key_sha256=key, kind=kind, failures=1, last_failure_at=now)
    stmt = insert.on_conflict_do_update(
        index_elements=[LoginThrottle.key_sha256],
        set_={
            "failures": case((LoginThrottle.last_failure_at < window_start, 1), else_=LoginThrottle.failures + 1),
            "last_failure_at": now,
        },
    ).returning(LoginThrottle.failures)
    failures = int(db.execute(stmt).scalar_one())
    seconds = lockout_seconds(failures, _limit(kind, settings), settings)
    if seconds > 0:
        until = now + timedelta(seconds=seconds)
        db.execute(
            update(LoginThrottle)
            .where(
                LoginThrottle.key_sha256 == key,
                or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < until),
            )
            .values(locked_until=until)
        )
    return failures


def forget(db: Session, key: str) -> None:
    """Drop a key's failures and lockout (after a successful sign-in)."""
    db.execute(delete(LoginThrottle).where(LoginThrottle.key_sha256 == key))


def prune(db: Session, settings: Settings, now: datetime) -> int:
    """Delete counts older than the window whose lockout is over (they no longer matter); how many."""
    window_start = now - timedelta(seconds=settings.login_failure_window_s)
    result = db.execute(
        delete(LoginThrottle).where(
            LoginThrottle.last_failure_at < window_start,
            or_(LoginThrottle.locked_until.is_(None), LoginThrottle.locked_until < now),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


# One semaphore per configured limit, shared by every app in this process (tests build several apps).
_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _semaphore(limit: int) -> threading.BoundedSemaphore:
    with _slots_lock:
        if limit not in _slots:
            _slots[limit] = threading.BoundedSemaphore(limit)
        return _slots[limit]


@contextmanager
def hash_slot(settings: Settings) -> Iterator[None]:
    """Hold one of the process's password-hashing slots (argon2 takes 64 MiB each); 503 when none frees in time."""
    slots = _semaphore(settings.login_max_concurrent_hashes)
    if not slots.acquire(timeout=settings.login_hash_wait_s):
        raise ServiceUnavailable("too many sign-ins at once; retry in a moment", retry_after=1)
    try:
        yield
    finally:
        slots.release()
