"""`maskloop import` and `demo-data`: scans from NIfTI, DICOM or PanTS folders (a run of per-case jobs, imported
here or by the workers); the synthetic demo set-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from backend.auth import service as auth
from backend.cli.common import console, fail, progress_bar, refuse
from backend.cli.jobs import preannotate
from backend.core import migrate as migrations
from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.flows import demo
from backend.flows import imports as import_flows
from backend.flows import labels as label_flows
from backend.imaging import dicom
from backend.imports import service as imports
from backend.projects import service as projects
from backend.scans import service as scans


def _is_pants_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "ImageTr").is_dir() or (path / "ImageTe").is_dir())


def import_data(
    path: Path,
    project: Annotated[str, typer.Option(help="project slug")],
    as_user: Annotated[str | None, typer.Option("--as", help="e-mail recorded as the importer")] = None,
    case_id: Annotated[str | None, typer.Option(help="case id for a single NIfTI file or DICOM folder")] = None,
    here: Annotated[
        bool | None,
        typer.Option(
            "--here/--queue",
            help="PanTS folder: import the cases in this process (--here), or send one job per case to the cpu "
            "queue for the workers (--queue). Default: --here with the embedded SQLite broker, else --queue.",
        ),
    ] = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="with --queue: follow the cases as the workers import them, then report")
    ] = False,
) -> None:
    """Import a NIfTI file, a DICOM series folder or single DICOM file, or a whole PanTS-layout dataset folder.

    A dataset folder becomes an import run with one job per case (each case in its own transaction; a case that
    fails is reported with its file and reason while the others go on). Importing the folder again resumes the
    run: imported cases are skipped, failed ones retried. Exit status 1 when a case failed.
    """
    blobs = get_blob_store()
    try:
        if _is_pants_folder(path):
            embedded = get_settings().resolved_broker_url.startswith("sqla+sqlite")
            _import_dataset(path, project, as_user, here=embedded if here is None else here, wait=wait)
            return
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            actor = auth.get_user_by_email(db, as_user) if as_user else None
            if path.is_dir():
                scan = label_flows.import_scan_dicom(db, blobs, proj, path, case_id=case_id or path.name, actor=actor)
            elif _is_dicom_file(path):
                # One DICOM file is a one-slice series (its thickness must say how deep the slice is).
                scan = label_flows.import_scan_dicom(db, blobs, proj, [path], case_id=case_id or path.stem, actor=actor)
            else:
                scan = label_flows.import_scan_nifti(
                    db, blobs, proj, path.read_bytes(), path.name, case_id=case_id, actor=actor
                )
            console.print(f"imported {scan.case_id} as scan {scan.id} ({scan.orientation}, shape {scan.shape})")
    except DomainError as exc:
        fail(exc)


def _is_dicom_file(path: Path) -> bool:
    """A file to read as DICOM: Part 10 content ('DICM' after the preamble) or a .dcm name."""
    return path.is_file() and (dicom.is_dicom_file(path) or path.suffix.lower() in (".dcm", ".dicom"))


def import_labels(
    path: Path,
    project: Annotated[str, typer.Option(help="project slug")],
    case: Annotated[
        str | None,
        typer.Option(help="case id of the scan (default: the scan of the series the SEG references)"),
    ] = None,
    mapping: Annotated[
        list[str] | None,
        typer.Option("--map", help="'segment label=structure' for a segment whose code and name match nothing"),
    ] = None,
    message: Annotated[str, typer.Option(help="version message")] = "",
    as_user: Annotated[str | None, typer.Option("--as", help="e-mail recorded as the importer")] = None,
) -> None:
    """Import a DICOM SEG file as a label version of a scan (segments by SNOMED CT code or name, overlaps kept)."""
    pairs: dict[str, str] = {}
    for item in mapping or []:
        label, sep, structure = item.partition("=")
        if not sep or not label.strip() or not structure.strip():
            refuse(f"--map {item!r} must look like 'segment label=structure'")
        pairs[label.strip()] = structure.strip()
    if not path.is_file():
        refuse(f"{path}: no such file")
    try:
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            actor = auth.get_user_by_email(db, as_user) if as_user else None
            if actor is not None:
                projects.authorize(db, actor, proj.id, "write_labels")
            scan = None
            if case is not None:
                found = scans.scan_ids_by_case(db, proj.id, [case])
                if case not in found:
                    refuse(f"project {project!r} has no scan {case!r}")
                scan = scans.get_scan(db, found[case])
            scan, version = label_flows.import_dicom_seg(
                db,
                get_blob_store(),
                path,
                filename=path.name,
                project=proj,
                scan=scan,
                mapping=pairs,
                message=message,
                actor=actor,
            )
            names = [row for row in version.structures if row.status == "present"]
            console.print(
                f"imported {path.name} as version {version.id} of scan {scan.case_id} ({len(names)} structures present)"
            )
    except DomainError as exc:
        fail(exc)


def _case_line(line: imports.CaseLine) -> str:
    """One case's outcome as the progress shows it."""
    row = line.row
    if line.status == "imported":
        return f"  [green]ok[/green]     {row.case_id} as scan {row.scan_id} in {row.timings.get('total', 0):.1f} s"
    if line.status == "failed":
        where = f"{row.file}: " if row.file and not (line.reason or "").startswith(row.file) else ""
        return f"  [red]FAILED[/red] {row.case_id}: {escape(where + (line.reason or ''))}"
    return f"  {line.status:<6} {row.case_id}: {escape(line.reason or '')}"


def _import_dataset(path: Path, project: str, as_user: str | None, *, here: bool, wait: bool) -> None:
    """Launch or resume a dataset import; import its cases here, or follow the workers, and print the report."""
    with session_scope() as db:
        proj = projects.get_project_by_slug(db, project)
        actor = auth.get_user_by_email(db, as_user) if as_user else None
        if actor is not None:
            projects.authorize(db, actor, proj.id, "import")
        launched = import_flows.launch_import(db, proj, path, actor=actor, here=here)
        run_id, queued, busy = launched.run.id, len(launched.jobs), launched.in_progress
    action = "resumed" if not launched.created else "started"
    console.print(
        f"run {run_id} {action}: {launched.cases} case folders, {queued} to import, {busy} in progress elsewhere"
    )
    if not here and not wait:
        console.print(f"{queued} jobs sent to the cpu queue; follow with `maskloop import {path} --queue --wait`")
        return
    with progress_bar() as progress:
        task = progress.add_task("importing", total=queued + busy, item="")

        def show(line: imports.CaseLine | None) -> None:
            if line is not None:
                progress.console.print(_case_line(line))
                progress.update(task, advance=1, item=line.row.case_id)

        if here:
            settings = get_settings()
            threads = settings.import_mask_threads or None
            import_flows.import_here(get_blob_store(), run_id, threads=threads, on_case=lambda done: show(done.line))
        if wait or busy:
            import_flows.wait_for_run(run_id, on_case=show)
    _report(run_id)


def _report(run_id: int) -> None:
    """This launch's counts (imported now, skipped as done before, failed) and the failed cases."""
    with session_scope() as db:
        run = imports.get_run(db, run_id)
        counts = imports.launch_counts(db, run)
        imported_now, _ = imports.case_lines(db, run, status="imported", offset=0, limit=100_000)
        failed, _ = imports.case_lines(db, run, status="failed", offset=0, limit=100_000)
        recent = [line for line in imported_now if line.row.finished_at and line.row.finished_at >= run.launched_at]
    missing = {line.row.case_id: line.row.notes.get("missing_structures", []) for line in recent}
    missing = {case: names for case, names in missing.items() if names}
    table = Table("imported", "skipped", "cases with missing structures")
    table.add_row(str(counts.imported), str(counts.skipped), str(len(missing)))
    console.print(table)
    for case, names in missing.items():
        console.print(f"  {case}: missing {', '.join(names)}")
    if counts.unfinished:
        console.print(f"{counts.unfinished} cases are still being imported by workers")
    if failed:
        console.print(f"[red]{len(failed)} cases failed[/red] (the others went on):")
        table = Table("case", "file", "reason")
        for line in failed:
            table.add_row(line.row.case_id, line.row.file or "", escape(line.reason or ""))
        console.print(table)
        console.print("fix them and import the folder again: imported cases are skipped, failed ones retried")
        raise typer.Exit(code=1)


def demo_data(
    cases: Annotated[int, typer.Option(help="number of synthetic phantom scans")] = 4,
    size: Annotated[int, typer.Option(help="in-plane voxels of each phantom")] = 128,
    preannotate_demo: Annotated[
        bool, typer.Option("--preannotate/--no-preannotate", help="queue pre-annotation of the new scans")
    ] = True,
) -> None:
    """Create the demo project, accounts and synthetic phantom scans with ground truth (idempotent)."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    dataset = demo.dataset_dir(settings)
    if not demo.dataset_written(dataset):
        console.print(f"writing {cases} synthetic phantoms to {dataset}")
        demo.write_dataset(dataset, cases, size)
    with session_scope() as db:
        setup = demo.set_up_demo(db, get_blob_store(), dataset)
    table = Table("account", "password", "role", title="demo accounts")
    for email, _display, role in demo.DEMO_USERS:
        table.add_row(email, demo.DEMO_PASSWORD, role)
    console.print(table)
    console.print(
        f"project '{demo.DEMO_PROJECT}': {len(setup.report.imported)} scans imported, "
        f"{len(setup.report.skipped)} already there"
    )
    console.print(f"models: {', '.join(setup.models)}")
    if preannotate_demo and setup.report.imported:
        # The pre-annotators only (the click-guided model answers clicks, it does not pre-annotate).
        for name in (m for m in setup.models if m in demo.DEMO_PREANNOTATORS):
            preannotate(
                project=demo.DEMO_PROJECT,
                model=name,
                case=None,
                all_scans=True,
                site=None,
                phase=None,
                tumor=None,
                as_user=demo.DEMO_ADMIN,
                wait=False,
            )
        # Attention over the pre-annotations (each job waits for its scan's), so overlay and priorities work at once.
        _demo_attention()


def _demo_attention() -> None:
    """Queue the demo's attention maps (after its pre-annotations)."""
    try:
        with session_scope() as db:
            project = projects.get_project_by_slug(db, demo.DEMO_PROJECT)
            launched = demo.launch_demo_attention(db, project, auth.get_user_by_email(db, demo.DEMO_ADMIN))
            count = len(launched)
    except DomainError as exc:
        fail(exc)
    console.print(f"queued {count} attention jobs (each runs once its scan's pre-annotations are done)")
