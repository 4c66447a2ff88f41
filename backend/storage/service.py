"""Mark-and-sweep garbage collection of unreferenced blobs, and fsck of every referenced one.

Mark: every digest a row names (scan images, drafts, model weights, prediction maps and export archives in JSON
columns) plus every mask manifest (label versions, attention maps) and the chunk digests listed inside each
manifest. Digests are kept as 32-byte `bytes` in one set (about 100 bytes each in CPython: ten million chunk
digests fit in about 1 GiB); manifests are read one at a time and never all at once.

Sweep: a stored blob that is not marked and was written (or reused by a writer) more than the grace period ago
is deleted. The cut-off is taken before the mark starts, so a blob written while gc runs is always young; the
grace period covers an upload whose blob is written but whose row is not committed yet.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import inspect, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from backend.core.blobstore import BlobInfo, BlobStore, without_cache
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.imaging.chunks import MaskManifest
from backend.models import (
    AttentionMap,
    Job,
    LabelDraft,
    LabelVersionStructure,
    ModelVersion,
    Prediction,
    Scan,
)

_DIGEST_RE = re.compile(r"^[0-9a-f]{64}$")
_READ_BLOCK = 1 << 20
_BATCH = 10_000
_ROWS_PER_PROBLEM = 20

# Columns that hold one blob digest each.
_BLOB_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = (
    Scan.image_digest,
    LabelDraft.payload_digest,
    ModelVersion.weights_digest,
)
# Columns that hold a mask manifest digest: the manifest and every chunk it lists are referenced.
_MANIFEST_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = (
    LabelVersionStructure.manifest_digest,
    AttentionMap.manifest_digest,
)
# JSON columns with digests inside: prediction maps ({structure: {"probability": digest, ...}}) and job results
# (an export's "archive_digest"). Every 64-hex string in them counts, so a new key is never missed.
_JSON_COLUMNS: tuple[InstrumentedAttribute[Any], ...] = (Prediction.maps, Job.result)


def _distinct_digests(db: Session, column: InstrumentedAttribute[Any]) -> Iterator[str]:
    """Distinct non-null values of a digest column, streamed (server-side cursor on PostgreSQL)."""
    query = select(column).where(column.is_not(None)).distinct().execution_options(yield_per=_BATCH)
    for (value,) in db.execute(query):
        yield str(value)


def json_digests(value: Any) -> Iterator[str]:
    """Every sha256-looking string anywhere in a JSON value."""
    if isinstance(value, str):
        if _DIGEST_RE.match(value):
            yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from json_digests(item)
    elif isinstance(value, list):
        for item in value:
            yield from json_digests(item)


def _json_rows(db: Session, column: InstrumentedAttribute[Any]) -> Iterator[tuple[str, list[str]]]:
    """(row label, digests) of every row of a JSON column that names at least one digest."""
    pk = inspect(column.class_).primary_key
    query = select(*pk, column).execution_options(yield_per=1000)
    for row in db.execute(query):
        digests = list(json_digests(row[-1]))
        if digests:
            yield _row_label(column, pk, row[:-1]), digests


def _row_label(column: InstrumentedAttribute[Any], pk: Any, values: Any) -> str:
    keys = ",".join(f"{c.name}={v}" for c, v in zip(pk, values, strict=True))
    return f"{column.class_.__tablename__}[{keys}].{column.key}"


def _manifest_chunks(data: bytes) -> list[str]:
    """The chunk digests a manifest lists (ValueError when the bytes are not a manifest)."""
    return [entry.digest for entry in MaskManifest.from_bytes(data).entries]


# --------------------------------------------------------------------------------------------- gc


class UnreadableManifests(Conflict):
    """Referenced manifests could not be read, so the chunks they list are unknown: nothing may be swept."""

    code = "unreadable_manifests"


@dataclass
class GcReport:
    """What a gc run marked, kept and swept (or, in a dry run, would sweep)."""

    dry_run: bool
    grace_s: float
    referenced: int = 0
    manifests: int = 0
    scanned: int = 0
    scanned_bytes: int = 0
    kept_young: int = 0
    kept_young_bytes: int = 0
    swept: int = 0
    swept_bytes: int = 0
    seconds: float = 0.0


def mark(db: Session, blobs: BlobStore) -> tuple[set[bytes], int]:
    """Every referenced digest as 32 bytes (chunks inside manifests included), and the number of manifests."""
    marked: set[bytes] = set()
    for column in _BLOB_COLUMNS:
        marked.update(bytes.fromhex(d) for d in _distinct_digests(db, column) if _DIGEST_RE.match(d))
    for column in _JSON_COLUMNS:
        for _label, digests in _json_rows(db, column):
            marked.update(bytes.fromhex(d) for d in digests)
    manifests: set[bytes] = set()
    unreadable: list[str] = []
    for column in _MANIFEST_COLUMNS:
        for digest in _distinct_digests(db, column):
            if not _DIGEST_RE.match(digest):
                continue
            key = bytes.fromhex(digest)
            if key in manifests:
                continue
            manifests.add(key)
            marked.add(key)
            try:
                marked.update(bytes.fromhex(chunk) for chunk in _manifest_chunks(blobs.get_bytes(digest)))
            except (NotFound, ValueError):
                unreadable.append(digest)
    if unreadable:
        raise UnreadableManifests(
            f"{len(unreadable)} referenced manifests are missing or unreadable, so the chunks they list are "
            "unknown and nothing is swept; run `maskloop fsck`",
            manifests=unreadable[:_ROWS_PER_PROBLEM],
        )
    return marked, len(manifests)


def collect_garbage(
    db: Session,
    blobs: BlobStore,
    *,
    grace_s: float,
    dry_run: bool = False,
    on_sweep: Callable[[BlobInfo], None] | None = None,
) -> GcReport:
    """Delete (or with dry_run only list) stored blobs no row references that are older than grace_s."""
    if grace_s < 0:
        raise InvalidInput("the grace period cannot be negative")
    started = time.time()
    # Taken before the mark: a blob written (or reused) from here on is young and survives this run.
    cutoff = started - grace_s
    report = GcReport(dry_run=dry_run, grace_s=grace_s)
    marked, report.manifests = mark(db, blobs)
    report.referenced = len(marked)
    for info in blobs.iter_blobs():
        report.scanned += 1
        report.scanned_bytes += info.size
        if bytes.fromhex(info.digest) in marked:
            continue
        if info.mtime >= cutoff:
            report.kept_young += 1
            report.kept_young_bytes += info.size
            continue
        # delete() re-checks the age: a writer may have reused the blob since it was listed.
        if dry_run or blobs.delete(info.digest, older_than=cutoff):
            report.swept += 1
            report.swept_bytes += info.size
            if on_sweep is not None:
                on_sweep(info)
    report.seconds = time.time() - started
    return report


# --------------------------------------------------------------------------------------------- fsck


@dataclass
class BlobProblem:
    """A referenced blob that is missing, does not hash to its name, or is a manifest that does not parse."""

    digest: str
    state: str  # "missing" | "corrupt" | "unreadable_manifest" | "malformed_digest"
    via_manifests: set[str] = field(default_factory=set)
    rows: list[str] = field(default_factory=list)


@dataclass
class FsckReport:
    """What fsck checked and what it found wrong."""

    quick: bool
    checked: int = 0
    checked_bytes: int = 0
    manifests: int = 0
    problems: list[BlobProblem] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        """True when every referenced blob is present (and, unless quick, hashes to its name)."""
        return not self.problems


def _hash_state(blobs: BlobStore, digest: str) -> tuple[str | None, int]:
    """(None, size) when the blob hashes to its name, ("missing" | "corrupt", size) otherwise; streamed."""
    hasher = hashlib.sha256()
    size = 0
    try:
        with blobs.open(digest) as handle:
            while block := handle.read(_READ_BLOCK):
                hasher.update(block)
                size += len(block)
    except (NotFound, FileNotFoundError):
        return "missing", 0
    return (None if hasher.hexdigest() == digest else "corrupt"), size


class _Checker:
    """Checks each distinct digest once and remembers the bad ones."""

    def __init__(self, blobs: BlobStore, report: FsckReport) -> None:
        self.blobs = blobs
        self.report = report
        self.seen: set[bytes] = set()
        self.bad: dict[str, BlobProblem] = {}

    def check(self, digest: str) -> bool:
        """Whether the blob is fine (checked once; later calls answer from memory)."""
        if not _DIGEST_RE.match(digest):
            self.bad.setdefault(digest, BlobProblem(digest, "malformed_digest"))
            return False
        key = bytes.fromhex(digest)
        if key in self.seen:
            return digest not in self.bad
        self.seen.add(key)
        self.report.checked += 1
        if self.report.quick:
            try:
                size, state = self.blobs.size(digest), None
            except NotFound:
                size, state = 0, "missing"
        else:
            state, size = _hash_state(self.blobs, digest)
        self.report.checked_bytes += size
        if state is not None:
            self.bad[digest] = BlobProblem(digest, state)
            return False
        return True


def check_blobs(db: Session, blobs: BlobStore, *, quick: bool = False) -> FsckReport:
    """Check every referenced blob (chunks inside manifests included): present and, unless quick, hashing to its
    name; each problem lists the rows that point at it (through its manifest for a chunk)."""
    started = time.time()
    report = FsckReport(quick=quick)
    blobs = without_cache(blobs)  # what the bucket holds, not a host's cached copies
    checker = _Checker(blobs, report)
    for column in _BLOB_COLUMNS:
        for digest in _distinct_digests(db, column):
            checker.check(digest)
    for column in _JSON_COLUMNS:
        for _label, digests in _json_rows(db, column):
            for digest in digests:
                checker.check(digest)
    manifests: set[str] = set()
    for column in _MANIFEST_COLUMNS:
        for digest in _distinct_digests(db, column):
            if digest in manifests:
                continue
            manifests.add(digest)
            if not checker.check(digest):
                continue
            try:
                chunks = _manifest_chunks(blobs.get_bytes(digest))
            except (NotFound, ValueError):
                checker.bad[digest] = BlobProblem(digest, "unreadable_manifest")
                continue
            for chunk in chunks:
                if not checker.check(chunk):
                    checker.bad[chunk].via_manifests.add(digest)
    report.manifests = len(manifests)
    report.problems = sorted(checker.bad.values(), key=lambda p: (p.state, p.digest))
    if report.problems:
        _attach_rows(db, report.problems)
    report.seconds = time.time() - started
    return report


def _attach_rows(db: Session, problems: list[BlobProblem]) -> None:
    """Name the rows behind each problem (a second, targeted pass: only runs when something is wrong)."""
    wanted: dict[str, list[BlobProblem]] = {}
    for problem in problems:
        wanted.setdefault(problem.digest, []).append(problem)
        for manifest in sorted(problem.via_manifests):
            wanted.setdefault(manifest, []).append(problem)

    def add(digest: str, label: str) -> None:
        for problem in wanted.get(digest, []):
            if len(problem.rows) < _ROWS_PER_PROBLEM:
                note = "" if digest == problem.digest else f" (manifest {digest[:12]}…)"
                problem.rows.append(label + note)

    digests = list(wanted)
    for column in _BLOB_COLUMNS + _MANIFEST_COLUMNS:
        pk = inspect(column.class_).primary_key
        for start in range(0, len(digests), 500):
            query = select(*pk, column).where(column.in_(digests[start : start + 500]))
            for row in db.execute(query):
                add(str(row[-1]), _row_label(column, pk, row[:-1]))
    for column in _JSON_COLUMNS:
        for label, found in _json_rows(db, column):
            for digest in found:
                if digest in wanted:
                    add(digest, label)
