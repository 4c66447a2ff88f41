"""`maskloop backup`, `restore` and `erase`: the database and blob store together; a case removed on request."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from backend.auth import service as auth
from backend.cli.common import console, fail, mib, refuse
from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.flows import erasure as erasure_flows
from backend.projects import service as projects
from backend.scans import service as scans
from backend.storage import backup as backups


def backup(out: Annotated[Path, typer.Argument(help="a new (or empty) folder for the backup")]) -> None:
    """Back up the database and every blob its rows reference, at one consistent point."""
    try:
        report = backups.backup(get_settings().resolved_database_url, get_blob_store(), out)
    except DomainError as exc:
        fail(exc)
    counts = ", ".join(f"{n:,} {table}" for table, n in report.counts.items())
    console.print(
        f"backed up the {report.database} database at revision {report.revision} ({counts}) and "
        f"{report.blobs:,} blobs ({mib(report.blob_bytes)}) into {out} in {report.seconds:.1f} s"
    )


def restore(folder: Annotated[Path, typer.Argument(help="a folder written by `maskloop backup`")]) -> None:
    """Restore a backup into this instance's empty database and its blob store (blobs first, then rows)."""
    settings = get_settings()
    try:
        report = backups.restore(settings.resolved_database_url, get_blob_store(), folder)
        counts = backups.counts_of(settings.resolved_database_url)
    except DomainError as exc:
        fail(exc)
    if counts != report.counts:
        refuse(f"restored row counts {counts} differ from the backup's {report.counts}")
    console.print(
        f"restored {report.blobs:,} blobs and the {report.database} database (revision {report.revision}, "
        f"backed up {report.created_at}); run `maskloop migrate` if this maskloop is newer"
    )


def erase(
    project: Annotated[str, typer.Option(help="project slug")],
    case_id: Annotated[str, typer.Option(help="the case to erase")],
    as_user: Annotated[str | None, typer.Option("--as", help="e-mail recorded as the one who erased it")] = None,
    grace_hours: Annotated[
        float,
        typer.Option(
            help="blobs written or reused within this time stay for the next gc (a writer may be reusing them now)"
        ),
    ] = 2.0,
    yes: Annotated[bool, typer.Option("--yes", help="erase without asking")] = False,
) -> None:
    """Erase a case on request: its scan, versions, predictions, drafts and the exports that may hold it, and
    the blobs no other row uses. Cannot be undone; the audit log keeps ids and counts only."""
    if not yes:
        typer.confirm(f"erase case {case_id!r} of project {project!r} for good?", abort=True)
    blobs = get_blob_store()
    try:
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            found = scans.scan_ids_by_case(db, proj.id, [case_id])
            if case_id not in found:
                refuse(f"project {project!r} has no case {case_id!r}")
            actor = auth.get_user_by_email(db, as_user) if as_user else None
            scan = scans.get_scan(db, found[case_id])
            result = erasure_flows.erase_scan(db, blobs, scan, actor=actor, grace_s=grace_hours * 3600)
    except DomainError as exc:
        fail(exc)
    rows, swept = result.contents, result.blobs
    console.print(
        f"erased case {case_id!r}: {rows.versions} versions, {rows.drafts} drafts, {rows.predictions} predictions, "
        f"{rows.jobs} job results and {rows.export_archives} export archives; removed {swept.removed} blobs "
        f"({mib(swept.removed_bytes)}), {swept.still_used} still used by other cases, {swept.kept_young} recent "
        "ones left for gc"
    )
