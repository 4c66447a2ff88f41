"""Alembic migrations: a full up/down/up cycle, and no drift between the migrations and the ORM models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from backend.core import migrate
from backend.core.db import make_engine
from backend.models import Base
from tests.conftest import create_pg_database, drop_pg_database


def _assert_no_drift(url: str) -> None:
    engine = make_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_postgresql_upgrade_downgrade_upgrade_without_drift() -> None:
    name = f"maskloop_migrations_{os.getpid()}"
    url = create_pg_database(name)
    try:
        migrate.upgrade(url)
        assert set(Base.metadata.tables) <= _tables(url)
        migrate.downgrade(url, "base")
        assert _tables(url) <= {"alembic_version"}
        migrate.upgrade(url)
        _assert_no_drift(url)
    finally:
        drop_pg_database(name)


@pytest.mark.sqlite
def test_sqlite_upgrade_downgrade_upgrade_without_drift(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    migrate.upgrade(url)
    migrate.downgrade(url, "base")
    assert _tables(url) <= {"alembic_version"}
    migrate.upgrade(url)
    assert set(Base.metadata.tables) <= _tables(url)
    _assert_no_drift(url)
