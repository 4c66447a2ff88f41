"""`maskloop gc` and `fsck`: sweep unreferenced blobs and stale state, check that referenced blobs are intact."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from backend.cli.common import console, mib
from backend.core.blobstore import BlobInfo, get_blob_store
from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.flows import accounts as account_flows
from backend.storage import service as storage
from backend.storage.temp import sweep_temp


def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be deleted, delete nothing")] = False,
    grace_hours: Annotated[
        float | None, typer.Option(help="keep unreferenced blobs younger than this (default: MASKLOOP_GC_GRACE_HOURS)")
    ] = None,
) -> None:
    """Delete blobs no row references (chunks inside manifests count) older than a grace period; stale temp files,
    stale sign-in throttle rows and long-ended login sessions too."""
    settings = get_settings()
    blobs = get_blob_store()
    grace = settings.gc_grace_hours if grace_hours is None else grace_hours

    def listed(info: BlobInfo) -> None:
        if dry_run:
            age_h = (time.time() - info.mtime) / 3600
            console.print(f"would delete {info.digest} {info.size:>12,} B  {age_h:,.1f} h old")

    try:
        with session_scope() as db:
            report = storage.collect_garbage(db, blobs, grace_s=grace * 3600, dry_run=dry_run, on_sweep=listed)
    except DomainError as exc:
        console.print(f"[red]error:[/red] {exc.message}")
        for digest in exc.details.get("manifests", []):
            console.print(f"  unreadable manifest {digest}")
        raise typer.Exit(code=1) from None
    verb = "would delete" if dry_run else "deleted"
    console.print(
        f"{report.referenced:,} referenced digests ({report.manifests:,} manifests); {report.scanned:,} stored blobs "
        f"({mib(report.scanned_bytes)}); kept {report.kept_young:,} unreferenced within the {grace:g} h grace "
        f"period ({mib(report.kept_young_bytes)}); {verb} {report.swept:,} blobs ({report.swept_bytes:,} bytes, "
        f"{mib(report.swept_bytes)}) in {report.seconds:.1f} s"
    )
    if not dry_run:
        swept = sweep_temp(settings)
        console.print(f"removed {swept.files} stale temp files ({mib(swept.bytes)})")
        if settings.blob_backend != "local":
            # Object stores keep the parts of killed multipart uploads (the local store's tmp/ files) until aborted.
            try:
                uploads, size = blobs.remove_stale_temp(settings.temp_max_age_hours * 3600)
            except DomainError as exc:
                console.print(f"[red]error:[/red] {exc.message}")
                raise typer.Exit(code=1) from None
            console.print(f"aborted {uploads} stale multipart uploads ({mib(size)})")
        with session_scope() as db:
            throttles, ended = account_flows.prune_auth_state(db, settings)
        console.print(f"pruned {throttles} stale sign-in throttle rows and {ended} long-ended login sessions")


def fsck(
    quick: Annotated[bool, typer.Option("--quick", help="check that blobs exist, without hashing them")] = False,
) -> None:
    """Check that every referenced blob exists and hashes to its name; exit 1 and name the rows when not."""
    with session_scope() as db:
        report = storage.check_blobs(db, get_blob_store(), quick=quick)
    for problem in report.problems:
        via = f" (a chunk of {len(problem.via_manifests)} manifests)" if problem.via_manifests else ""
        console.print(f"[red]{problem.state}[/red] {problem.digest}{via}")
        for row in problem.rows:
            console.print(f"  referenced by {row}")
    what = "present" if quick else "present and intact"
    console.print(
        f"checked {report.checked:,} referenced blobs ({report.manifests:,} manifests, {mib(report.checked_bytes)}) "
        f"in {report.seconds:.1f} s: " + ("all " + what if report.ok else f"[red]{len(report.problems)} problems[/red]")
    )
    if not report.ok:
        raise typer.Exit(code=1)
