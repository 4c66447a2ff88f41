"""Backup and restore of the database and the blob store together, at one consistent point.

A backup is a folder: the database (`database.dump`, pg_dump's custom format, or `database.sqlite`), every blob
the dumped rows reference under `blobs/ab/<digest>` (chunks inside manifests included), and `backup.json`, written
last, so a folder without it is an interrupted backup.

Consistency: on PostgreSQL the dump and the list of referenced blobs are read in one REPEATABLE READ snapshot
(pg_dump joins it through `pg_export_snapshot()`); on SQLite the list is read from the copy itself. Blobs are
immutable and only gc (after its grace period) deletes them, so every listed blob is still there to copy; one that
is not (an erasure and a gc ran meanwhile) fails the backup rather than leaving rows without their blob.

Restore goes into an empty instance: blobs first, each checked against its digest, then the database, so no row
ever names a blob the store lacks.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sqlite3
import subprocess
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore, check_digest
from backend.core.db import make_engine
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.storage.service import mark

MANIFEST = "backup.json"
FORMAT = 1
_COPY_BLOCK = 1 << 20
# Row counts recorded in backup.json (and compared after a restore), so an operator sees what a backup holds.
_COUNTED = ("projects", "users", "scans", "label_versions", "label_version_structures", "model_versions", "jobs")


class BackupFailed(Conflict):
    """A backup or restore could not complete; nothing it wrote may be used."""

    code = "backup_failed"


@dataclass
class BackupReport:
    """What a backup holds: the database kind and revision, row counts and the blobs copied."""

    created_at: str
    database: str
    revision: str
    counts: dict[str, int]
    blobs: int
    blob_bytes: int
    database_file: str
    database_sha256: str
    seconds: float = 0.0
    format: int = FORMAT


def _kind(url: str) -> str:
    """'postgresql' or 'sqlite' (nothing else is supported)."""
    backend = make_url(url).get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise InvalidInput(f"backup supports PostgreSQL and SQLite databases, not {backend!r}")
    return backend


def _libpq_url(url: str) -> str:
    """The SQLAlchemy URL as a libpq connection string for pg_dump / pg_restore."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _sqlite_path(url: str) -> Path:
    database = make_url(url).database
    if not database or database == ":memory:":
        raise InvalidInput("an in-memory SQLite database cannot be backed up or restored")
    return Path(database)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while block := handle.read(_COPY_BLOCK):
            digest.update(block)
    return digest.hexdigest()


def _run(command: list[str], what: str) -> None:
    """Run a PostgreSQL client tool; its stderr becomes the error message."""
    try:
        done = subprocess.run(command, capture_output=True, text=True, check=False)
    except FileNotFoundError as exc:
        raise BackupFailed(f"{what}: {command[0]} is not installed (apt-get install postgresql-client)") from exc
    if done.returncode != 0:
        raise BackupFailed(f"{what} failed: {done.stderr.strip()[-2000:]}")


def _read_state(db: Session, blobs: BlobStore) -> tuple[str, dict[str, int], set[bytes]]:
    """(alembic revision, row counts, referenced digests) as this session sees the database."""
    revision = str(db.execute(text("SELECT version_num FROM alembic_version")).scalar_one())
    counts = {table: int(db.execute(text(f"SELECT count(*) FROM {table}")).scalar_one()) for table in _COUNTED}
    marked, _ = mark(db, blobs)
    return revision, counts, marked


def _dump_postgresql(url: str, blobs: BlobStore, out: Path) -> tuple[str, dict[str, int], set[bytes]]:
    """pg_dump in the same snapshot as the blob list; returns what that snapshot holds."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            conn = conn.execution_options(isolation_level="REPEATABLE READ")
            with conn.begin():
                conn.execute(text("SET TRANSACTION READ ONLY"))
                snapshot = str(conn.execute(text("SELECT pg_export_snapshot()")).scalar_one())
                _run(
                    ["pg_dump", "--format=custom", f"--snapshot={snapshot}", "--file", str(out), _libpq_url(url)],
                    "pg_dump",
                )
                with Session(bind=conn) as db:
                    return _read_state(db, blobs)
    finally:
        engine.dispose()


def _dump_sqlite(url: str, blobs: BlobStore, out: Path) -> tuple[str, dict[str, int], set[bytes]]:
    """SQLite's online backup into `out`; the blob list is read from that copy."""
    source = sqlite3.connect(_sqlite_path(url))
    try:
        target = sqlite3.connect(out)
        with target:
            source.backup(target)
        target.close()
    finally:
        source.close()
    engine = make_engine(f"sqlite:///{out}")
    try:
        with Session(bind=engine) as db:
            return _read_state(db, blobs)
    finally:
        engine.dispose()


def _blob_path(root: Path, digest: str) -> Path:
    return root / digest[:2] / digest


def _copy_blob(blobs: BlobStore, digest: str, root: Path) -> int:
    """Stream one blob into the backup, checking it hashes to its name; its size."""
    target = _blob_path(root, digest)
    target.parent.mkdir(parents=True, exist_ok=True)
    hasher = hashlib.sha256()
    size = 0
    try:
        with blobs.open(digest) as source, target.open("wb") as sink:
            while block := source.read(_COPY_BLOCK):
                hasher.update(block)
                sink.write(block)
                size += len(block)
    except NotFound as exc:
        raise BackupFailed(
            f"blob {digest} that the database references is missing from the store (run `maskloop fsck`)"
        ) from exc
    if hasher.hexdigest() != digest:
        raise BackupFailed(f"blob {digest} is corrupt in the store (run `maskloop fsck`)")
    return size


def backup(url: str, blobs: BlobStore, out: Path) -> BackupReport:
    """Write a consistent backup of the database at `url` and the blobs its rows reference into `out`."""
    started = time.monotonic()
    kind = _kind(url)
    if out.exists() and any(out.iterdir()):
        raise InvalidInput(f"{out} is not empty; back up into a new folder")
    out.mkdir(parents=True, exist_ok=True)
    database_file = out / ("database.dump" if kind == "postgresql" else "database.sqlite")
    if kind == "postgresql":
        revision, counts, marked = _dump_postgresql(url, blobs, database_file)
    else:
        revision, counts, marked = _dump_sqlite(url, blobs, database_file)
    blob_root = out / "blobs"
    total = 0
    for key in sorted(marked):
        total += _copy_blob(blobs, key.hex(), blob_root)
    report = BackupReport(
        created_at=datetime.now(UTC).isoformat(),
        database=kind,
        revision=revision,
        counts=counts,
        blobs=len(marked),
        blob_bytes=total,
        database_file=database_file.name,
        database_sha256=_sha256_file(database_file),
    )
    report.seconds = time.monotonic() - started
    # Written last: a folder without it is an interrupted backup.
    (out / MANIFEST).write_text(json.dumps(asdict(report), indent=2) + "\n")
    return report


def read_manifest(folder: Path) -> BackupReport:
    """The manifest of a complete backup folder (InvalidInput when it is missing or not a maskloop backup)."""
    path = folder / MANIFEST
    if not path.is_file():
        raise InvalidInput(f"{folder} holds no {MANIFEST}: not a backup, or an interrupted one")
    try:
        data: dict[str, Any] = json.loads(path.read_text())
        report = BackupReport(**data)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(f"{path} is not a maskloop backup manifest ({exc})") from exc
    if report.format != FORMAT:
        raise InvalidInput(f"{path} has backup format {report.format}; this maskloop reads format {FORMAT}")
    return report


def _check_empty(url: str, kind: str) -> None:
    """Refuse to restore over data: the target database must hold no table."""
    if kind == "sqlite" and not _sqlite_path(url).exists():
        return
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            tables = inspect(conn).get_table_names()
    finally:
        engine.dispose()
    if tables:
        raise Conflict(
            f"the target database is not empty ({len(tables)} tables, e.g. {sorted(tables)[:3]}); "
            "restore into a new, empty database"
        )


def restore(url: str, blobs: BlobStore, folder: Path) -> BackupReport:
    """Restore a backup into the empty database at `url` and the blob store: blobs first, then the rows."""
    report = read_manifest(folder)
    kind = _kind(url)
    if kind != report.database:
        raise InvalidInput(f"the backup holds a {report.database} database; the target is {kind}")
    database_file = folder / report.database_file
    if not database_file.is_file() or _sha256_file(database_file) != report.database_sha256:
        raise InvalidInput(f"{database_file} is missing or does not match the checksum in {MANIFEST}")
    _check_empty(url, kind)
    restored = 0
    blob_root = folder / "blobs"
    for path in sorted(blob_root.glob("*/*")) if blob_root.is_dir() else []:
        digest = check_digest(path.name)
        if blobs.put_file(path) != digest:
            raise BackupFailed(f"backup blob {path} does not hash to its name; the backup is damaged")
        restored += 1
    if restored != report.blobs:
        raise BackupFailed(f"the backup should hold {report.blobs} blobs; it holds {restored}")
    if kind == "postgresql":
        _run(
            ["pg_restore", "--no-owner", "--no-privileges", "--exit-on-error", "--dbname", _libpq_url(url),
             str(database_file)],
            "pg_restore",
        )  # fmt: skip
    else:
        target = _sqlite_path(url)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(database_file, target)
    return report


def counts_of(url: str) -> dict[str, int]:
    """The row counts a backup records, read from the database at `url` (to compare after a restore)."""
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in _COUNTED}
    finally:
        engine.dispose()
