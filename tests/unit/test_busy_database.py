"""An SQLite write that loses to another writer's commit answers 503 + Retry-After, not a bare 500."""

from __future__ import annotations

from pathlib import Path

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import text

from backend.api import install
from backend.core.config import Settings
from backend.core.db import make_engine


def _stale_snapshot_write(path: Path) -> None:
    """Read in one transaction, let another connection commit a write, then try to write: SQLite refuses."""
    engine = make_engine(f"sqlite:///{path}")
    with engine.begin() as setup:
        setup.execute(text("CREATE TABLE IF NOT EXISTS counter (n INTEGER)"))
        setup.execute(text("INSERT INTO counter VALUES (0)"))
    with engine.connect() as reader:
        reader.execute(text("SELECT n FROM counter")).all()
        with engine.begin() as writer:
            writer.execute(text("UPDATE counter SET n = n + 1"))
        reader.execute(text("UPDATE counter SET n = n + 10"))


def test_stale_sqlite_snapshot_write_is_a_503_with_retry_after(tmp_path: Path) -> None:
    app = FastAPI()
    install(app, Settings(data_dir=tmp_path))

    @app.post("/write")
    def write() -> dict[str, str]:
        _stale_snapshot_write(tmp_path / "busy.db")
        return {"status": "written"}

    response = TestClient(app, raise_server_exceptions=False).post("/write")
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == "1"
    assert response.json()["error"] == "busy"


def test_other_database_errors_stay_server_errors(tmp_path: Path) -> None:
    app = FastAPI()
    install(app, Settings(data_dir=tmp_path))

    @app.get("/broken")
    def broken() -> dict[str, str]:
        with make_engine(f"sqlite:///{tmp_path / 'x.db'}").connect() as conn:
            conn.execute(text("SELECT * FROM no_such_table"))
        return {}

    response = TestClient(app, raise_server_exceptions=False).get("/broken")
    assert response.status_code == 500
