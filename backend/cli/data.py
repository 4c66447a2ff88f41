"""`maskloop import` and `demo-data`: scans from NIfTI, DICOM or PanTS folders; the synthetic demo set-up."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from backend.auth import service as auth
from backend.cli.common import console, fail, progress_bar
from backend.cli.jobs import preannotate
from backend.core import migrate as migrations
from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.flows import demo
from backend.flows import labels as label_flows
from backend.projects import service as projects


def _is_pants_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "ImageTr").is_dir() or (path / "ImageTe").is_dir())


def import_data(
    path: Path,
    project: Annotated[str, typer.Option(help="project slug")],
    as_user: Annotated[str | None, typer.Option("--as", help="e-mail recorded as the importer")] = None,
    case_id: Annotated[str | None, typer.Option(help="case id for a single NIfTI file or DICOM folder")] = None,
) -> None:
    """Import a NIfTI file, a DICOM series folder, or a whole PanTS-layout dataset folder."""
    blobs = get_blob_store()
    try:
        if _is_pants_folder(path):
            with session_scope() as db:
                proj = projects.get_project_by_slug(db, project)
                actor = auth.get_user_by_email(db, as_user) if as_user else None
                with progress_bar() as progress:
                    task = progress.add_task("importing", total=None, item="")

                    def tick(done: int, total: int, case: str) -> None:
                        progress.update(task, completed=done, total=total, item=case)

                    report = label_flows.import_pants_dataset(db, blobs, proj, path, actor=actor, progress=tick)
            table = Table("imported", "skipped", "cases with missing structures")
            table.add_row(str(len(report.imported)), str(len(report.skipped)), str(len(report.missing_structures)))
            console.print(table)
            for case, missing in report.missing_structures.items():
                console.print(f"  {case}: missing {', '.join(missing)}")
            return
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            actor = auth.get_user_by_email(db, as_user) if as_user else None
            if path.is_dir():
                scan = label_flows.import_scan_dicom(db, blobs, proj, path, case_id=case_id or path.name, actor=actor)
            else:
                scan = label_flows.import_scan_nifti(
                    db, blobs, proj, path.read_bytes(), path.name, case_id=case_id, actor=actor
                )
            console.print(f"imported {scan.case_id} as scan {scan.id} ({scan.orientation}, shape {scan.shape})")
    except DomainError as exc:
        fail(exc)


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
        for name in setup.models:
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
