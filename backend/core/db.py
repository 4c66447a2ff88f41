"""Database engine and sessions: one engine per process, sessions that the request or task commits."""

from __future__ import annotations

import logging
from collections.abc import Callable, Generator, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, TypeVar

import psycopg
from sqlalchemy import JSON, DateTime, Dialect, Engine, MetaData, TypeDecorator, create_engine, event
from sqlalchemy import exc as sa_exc
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Session, configure_mappers, sessionmaker

from backend.core.config import Settings, get_settings
from backend.core.errors import NotFound, ServiceUnavailable

log = logging.getLogger(__name__)
T = TypeVar("T")

# Seconds a client waits before retrying after a database fault (the pool reconnects on the next checkout).
DB_RETRY_AFTER_S = 1
# Connections older than this are replaced at checkout, so a server or proxy idle timeout never hands one out dead.
POOL_RECYCLE_S = 1800

# Deterministic constraint names so Alembic autogenerate and SQLite batch migrations agree.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

JSONType = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware timestamp on every database: SQLite returns naive values, which are UTC here."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Store UTC (naive input is taken as UTC)."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        """Always hand out aware datetimes."""
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value


class Base(DeclarativeBase):
    """Declarative base of every ORM table."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    """Enforce foreign keys and let readers proceed while one writer commits."""
    # Let SQLAlchemy emit BEGIN itself (see _sqlite_begin) so savepoints and rollbacks behave as on PostgreSQL.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


# Execution option naming a transaction that will write: on SQLite it starts with BEGIN IMMEDIATE.
WRITE_INTENT = "maskloop_write_intent"


def _sqlite_begin(connection: Any) -> None:
    """Start a real transaction (pysqlite would otherwise defer it and break SAVEPOINT semantics).

    A transaction that will write takes the write lock at BEGIN (IMMEDIATE), waiting its turn under the busy
    timeout: a deferred one that reads first and then writes fails at once ('database is locked') when another
    connection committed in between, because WAL cannot upgrade its snapshot.
    """
    immediate = connection.get_execution_options().get(WRITE_INTENT, False)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")


def declare_write_intent(session: Session) -> None:
    """Before the first statement of a session that will write: on SQLite its transaction begins IMMEDIATE."""
    if session.in_transaction() or session.get_bind().dialect.name != "sqlite":
        return
    session.connection(execution_options={WRITE_INTENT: True})


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Create an engine for PostgreSQL or SQLite with the settings each needs."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30}, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        event.listen(engine, "begin", _sqlite_begin)
        return engine
    # Pre-ping tests each connection at checkout (a disconnect found there invalidates the whole pool, so the
    # connections a database restart or pg_terminate_backend killed are all replaced, not handed out one by one).
    return create_engine(url, pool_pre_ping=True, pool_recycle=POOL_RECYCLE_S, pool_size=10, max_overflow=20, **kwargs)


@lru_cache
def get_engine() -> Engine:
    """The process-wide engine built from settings."""
    settings = get_settings()
    if settings.resolved_database_url.startswith("sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    return make_engine(settings.resolved_database_url)


# Session.info key: "started" once a commit began, "done" once it finished.
_COMMIT = "maskloop.commit"


class TrackedSession(Session):
    """A session that notes in `info` whether a commit was started and whether it finished.

    A connection lost during COMMIT leaves the outcome unknown; the request's error answer says so.
    """

    def commit(self) -> None:
        """Commit, remembering the phase for the error answer of a connection lost meanwhile."""
        self.info[_COMMIT] = "started"
        super().commit()
        self.info[_COMMIT] = "done"


@lru_cache
def get_session_factory() -> sessionmaker[Session]:
    """Session factory bound to the process-wide engine."""
    return sessionmaker(bind=get_engine(), class_=TrackedSession, expire_on_commit=False)


class DatabaseUnavailable(ServiceUnavailable):
    """The database connection failed during a request (503 + Retry-After); `details.stored` tells the client
    whether its change was stored: "no", "unknown" (lost during COMMIT) or "yes" (lost after the commit)."""

    code = "unavailable"


def connection_fault(exc: BaseException) -> bool:
    """Whether an exception is a connection-level database failure, transient by nature (retrying may succeed).

    A lost or refused PostgreSQL connection, a disconnect SQLAlchemy detected (and invalidated), an exhausted
    pool. SQLite's own OperationalErrors ("no such table") are not: they are bugs, not outages.
    """
    if isinstance(exc, sa_exc.DisconnectionError | sa_exc.TimeoutError):
        return True
    if isinstance(exc, sa_exc.DBAPIError):
        # psycopg's OperationalError covers a terminated backend, a refused connection, lock and statement
        # timeouts and serialisation failures; its InterfaceError a connection already closed.
        return exc.connection_invalidated or isinstance(exc.orig, psycopg.OperationalError | psycopg.InterfaceError)
    return isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError)


def unavailable_for(session: Session, exc: BaseException) -> DatabaseUnavailable:
    """The 503 error for a connection fault in a request, saying whether the change was stored."""
    phase = session.info.get(_COMMIT)
    during_commit = isinstance(exc, sa_exc.DBAPIError) and exc.statement is None
    if phase == "started" and during_commit:
        return DatabaseUnavailable(
            "the database connection was lost while committing; the change may or may not have been stored: "
            "retry with the same idempotency key (a stored save is recognised, not duplicated)",
            stored="unknown",
            retry_after=DB_RETRY_AFTER_S,
        )
    if phase == "done":
        return DatabaseUnavailable(
            "the change was stored, but the database connection was lost before the answer was complete: "
            "retry with the same idempotency key to get it, or reload",
            stored="yes",
            retry_after=DB_RETRY_AFTER_S,
        )
    return DatabaseUnavailable(
        "the database connection was lost; nothing was changed: retry",
        stored="no",
        retry_after=DB_RETRY_AFTER_S,
    )


def release(session: Session) -> None:
    """Roll back and close a session without ever raising: on a dead connection, invalidate it and log.

    Request teardown runs after the response was sent; an error here would reset the client's connection.
    """
    try:
        session.rollback()
    except Exception as exc:  # teardown must not fail; the pool replaces the connection
        log.warning("rollback at session release failed (%s: %s); invalidating the connection", type(exc).__name__, exc)
        try:
            session.invalidate()
        except Exception:
            log.exception("invalidating a failed session's connection failed")
    try:
        session.close()
    except Exception:
        log.exception("closing a session failed")


def get_session() -> Generator[Session, None, None]:
    """Yield a session for one request; the caller commits, anything uncommitted is rolled back.

    A connection fault anywhere in the request becomes `DatabaseUnavailable` (503); releasing the session never
    raises, so a connection killed after the answer was sent cannot break that answer.
    """
    session = get_session_factory()()
    try:
        yield session
    except Exception as exc:
        if connection_fault(exc):
            raise unavailable_for(session, exc) from exc
        raise
    finally:
        release(session)


def read_after_commit(session: Session, read: Callable[[], T], attempts: int = 3) -> T:
    """Run a read that follows the request's commit, retrying on a fresh connection after a connection fault.

    The change is stored by then: answering it with an error would make the client believe it was not.
    """
    for _ in range(attempts - 1):
        try:
            return read()
        except Exception as exc:
            if not connection_fault(exc):
                raise
            log.warning("read after commit lost its connection (%s); reading again", type(exc).__name__)
            # Rolling back drops the invalidated connection; the objects expire and reload on the next checkout.
            release_transaction(session)
    return read()


def release_transaction(session: Session) -> None:
    """Roll back the session's transaction, swallowing the error of a dead connection (already invalidated)."""
    try:
        session.rollback()
    except Exception as exc:
        if not connection_fault(exc):
            raise
        session.rollback()


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error (CLI and worker use)."""
    session = get_session_factory()()
    try:
        yield session
        session.commit()
    except BaseException:
        release(session)
        raise
    finally:
        session.close()


def end_read_snapshot(session: Session) -> None:
    """End a request's read-only transaction so far, so that the write that follows starts a fresh one.

    On SQLite (WAL) a transaction that has read and then writes fails at once with 'database is locked' when
    another connection committed in between (its snapshot cannot be upgraded, and the busy timeout does not apply);
    a transaction whose first statement is the write waits its turn instead. On PostgreSQL this costs one empty
    commit. Used before appending a read event on the viewer's GETs.
    """
    session.commit()


M = TypeVar("M", bound=Base)


def get_or_404(db: Session, model: type[M], ident: int, what: str) -> M:
    """The row of `model` with primary key `ident`, or NotFound naming it ("scan 7 not found")."""
    row = db.get(model, ident)
    if row is None:
        raise NotFound(f"{what} {ident} not found")
    return row


def warm_up(settings: Settings) -> None:
    """Pay the one-off costs at start-up, not in the process's first request: configuring every ORM mapper (~50 ms)
    and opening one pooled connection (with the dialect's first-connect queries); a database that is down is only
    logged (requests then answer 503)."""
    configure_mappers()
    if settings.resolved_database_url != get_settings().resolved_database_url:
        return  # an app built for other settings (tests) does not use the process-wide engine
    try:
        with get_engine().connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except Exception as exc:  # the API still starts; each request then answers 503 while the database is down
        log.warning("the database could not be reached at start-up: %s", exc)
