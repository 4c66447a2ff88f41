"""The `maskloop` command line: serve, migrate, create-user, create-project, import, demo-data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from backend.core import migrate as migrations
from backend.core.blobstore import get_blob_store
from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError

app = typer.Typer(help="maskloop: collaborative CT segmentation platform.", no_args_is_help=True)
console = Console()

DEMO_PASSWORD = "maskloop-demo"
DEMO_USERS = (
    ("admin@maskloop.local", "Demo Admin", "admin"),
    ("lead@maskloop.local", "Demo Lead", "lead"),
    ("annotator@maskloop.local", "Demo Annotator", "annotator"),
    ("reviewer@maskloop.local", "Demo Reviewer", "reviewer"),
)


def _fail(error: DomainError) -> None:
    console.print(f"[red]error:[/red] {error.message}")
    raise typer.Exit(code=2)


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[item]}"),
        TimeRemainingColumn(),
        console=console,
    )


@app.command()
def migrate() -> None:
    """Bring the database schema up to date (SQLite by default, PostgreSQL via MASKLOOP_DATABASE_URL)."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    console.print(f"database at head: {settings.resolved_database_url.split('@')[-1]}")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    reload: Annotated[bool, typer.Option(help="reload on code changes")] = False,
) -> None:
    """Run the API (and the static frontend) with uvicorn."""
    import uvicorn

    settings = get_settings()
    migrations.upgrade(settings.resolved_database_url)
    uvicorn.run("backend.main:app", host=host or settings.api_host, port=port or settings.api_port, reload=reload)


@app.command("create-user")
def create_user(
    email: str,
    password: Annotated[str | None, typer.Option(help="omit for a service account")] = None,
    name: Annotated[str, typer.Option(help="display name")] = "",
    admin: Annotated[bool, typer.Option(help="platform administrator")] = False,
    service: Annotated[bool, typer.Option(help="service account for model workers")] = False,
    project: Annotated[str | None, typer.Option(help="project slug to join")] = None,
    role: Annotated[str, typer.Option(help="role in --project")] = "annotator",
    token: Annotated[bool, typer.Option(help="print a new API token for the account")] = False,
) -> None:
    """Create a user (optionally joining a project, optionally with an API token)."""
    from backend.auth import service as auth
    from backend.projects import service as projects

    try:
        with session_scope() as db:
            user = auth.create_user(db, email, password, name, is_admin=admin, is_service=service)
            if project:
                projects.set_membership(db, projects.get_project_by_slug(db, project).id, user, role, user)
            plaintext = auth.create_api_token(db, user, "cli", actor=user)[0] if token else None
    except DomainError as exc:
        _fail(exc)
    console.print(f"created user {email}")
    if plaintext:
        console.print(f"API token (shown once): {plaintext}")


@app.command("create-project")
def create_project(
    slug: str,
    name: Annotated[str, typer.Option(help="display name")] = "",
    owner: Annotated[str, typer.Option(help="e-mail of the creating user")] = "",
    schema: Annotated[Path | None, typer.Option(help="label schema JSON; PanTS by default")] = None,
) -> None:
    """Create a project with a label schema (PanTS by default)."""
    from backend.auth import service as auth
    from backend.projects import service as projects

    try:
        with session_scope() as db:
            creator = auth.get_user_by_email(db, owner)
            structures = None
            schema_name = None
            if schema is not None:
                data = json.loads(schema.read_text())
                schema_name, structures = data.get("name", slug), projects.parse_structures(data["structures"])
            projects.create_project(db, slug, name or slug, creator, structures, schema_name=schema_name)
    except DomainError as exc:
        _fail(exc)
    console.print(f"created project {slug}")


@app.command("import")
def import_data(
    path: Path,
    project: Annotated[str, typer.Option(help="project slug")],
    as_user: Annotated[str | None, typer.Option("--as", help="e-mail recorded as the importer")] = None,
    case_id: Annotated[str | None, typer.Option(help="case id for a single NIfTI file or DICOM folder")] = None,
) -> None:
    """Import a NIfTI file, a DICOM series folder, or a whole PanTS-layout dataset folder."""
    from backend.auth import service as auth
    from backend.projects import service as projects
    from backend.scans import service as scans

    blobs = get_blob_store()
    try:
        if path.is_dir() and ((path / "ImageTr").is_dir() or (path / "ImageTe").is_dir()):
            with session_scope() as db:
                proj = projects.get_project_by_slug(db, project)
                actor = auth.get_user_by_email(db, as_user) if as_user else None
                with _progress() as progress:
                    task = progress.add_task("importing", total=None, item="")

                    def tick(done: int, total: int, case: str) -> None:
                        progress.update(task, completed=done, total=total, item=case)

                    report = scans.import_pants_dataset(db, blobs, proj, actor, path, progress=tick, commit=db.commit)
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
                scan = scans.import_dicom(db, blobs, proj, actor, path, case_id=case_id or path.name)
            else:
                scan = scans.import_nifti(db, blobs, proj, actor, path.read_bytes(), path.name, case_id=case_id)
            console.print(f"imported {scan.case_id} as scan {scan.id} ({scan.orientation}, shape {scan.shape})")
    except DomainError as exc:
        _fail(exc)


@app.command("demo-data")
def demo_data(
    cases: Annotated[int, typer.Option(help="number of synthetic phantom scans")] = 4,
    size: Annotated[int, typer.Option(help="in-plane voxels of each phantom")] = 128,
) -> None:
    """Create the demo project, accounts and synthetic phantom scans with ground truth (idempotent)."""
    from backend.auth import service as auth
    from backend.imaging.phantom import write_pants_dataset
    from backend.projects import service as projects
    from backend.scans import service as scans

    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    dataset = settings.data_dir / "demo-dataset"
    if not (dataset / "ImageTr").exists():
        console.print(f"writing {cases} synthetic phantoms to {dataset}")
        write_pants_dataset(
            dataset,
            cases,
            shape=(size, size, max(32, size // 2)),
            spacing=(2.5 * 128 / size, 2.5 * 128 / size, 5.0 * 64 / max(32, size // 2)),
            seed=7,
            missing_structure={1: "gall_bladder"},
        )
    with session_scope() as db:
        users = {}
        for email, display, role in DEMO_USERS:
            try:
                users[role] = auth.get_user_by_email(db, email)
            except DomainError:
                users[role] = auth.create_user(db, email, DEMO_PASSWORD, display, is_admin=role == "admin")
        try:
            project = projects.get_project_by_slug(db, "demo")
        except DomainError:
            project = projects.create_project(db, "demo", "Demo: synthetic pancreas phantoms", users["admin"])
        for role in ("lead", "annotator", "reviewer"):
            if projects.role_of(db, users[role], project.id) is None:
                projects.set_membership(db, project.id, users[role], role, users["admin"])
        report = scans.import_pants_dataset(db, get_blob_store(), project, users["admin"], dataset, commit=db.commit)
    table = Table("account", "password", "role", title="demo accounts")
    for email, _display, role in DEMO_USERS:
        table.add_row(email, DEMO_PASSWORD, role)
    console.print(table)
    console.print(f"project 'demo': {len(report.imported)} scans imported, {len(report.skipped)} already there")


if __name__ == "__main__":
    app()
