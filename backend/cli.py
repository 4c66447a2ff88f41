"""The `maskloop` command line: serve, migrate, create-user, create-project, import, demo-data, gc, fsck."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from backend.core import migrate as migrations
from backend.core.blobstore import BlobInfo, get_blob_store
from backend.core.config import Settings, get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from backend.scans.service import ScanFilter

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


def _checked_settings() -> Settings:
    """The settings, or a clear refusal (exit 2) when they are inconsistent (e.g. job recovery timings)."""
    try:
        return get_settings()
    except ValidationError as exc:
        messages = "; ".join(str(error["msg"]).removeprefix("Value error, ") for error in exc.errors())
        console.print(f"[red]error:[/red] invalid settings: {messages}")
        raise typer.Exit(code=2) from None


def _worker_command(queues: str, concurrency: int, pool: str | None) -> list[str]:
    """The celery command line of a maskloop worker."""
    embedded = get_settings().resolved_broker_url.startswith("sqla+sqlite")
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "-Q",
        queues,
        "--concurrency",
        str(concurrency),
        "-P",
        pool or ("solo" if embedded else "prefork"),
        "--loglevel",
        "INFO",
        "--hostname",
        f"maskloop-{queues.replace(',', '-')}@%h",
    ]


def _die_with_parent() -> None:
    """In the embedded worker, before exec: have Linux send it SIGTERM when `maskloop serve` dies, however it dies
    (a SIGKILL skips every cleanup), so no orphaned worker keeps polling a database that may be gone."""
    if sys.platform.startswith("linux"):
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _resend_unsent_jobs() -> None:
    """Send queued jobs that never reached the broker (it was down when they were created)."""
    from backend.jobs import service as jobs

    with session_scope() as db:
        unsent = [
            j for j in jobs.requeue_candidates(db, stale_after_s=10**9) if j.message.startswith(jobs.UNSENT_PREFIX)
        ]
        jobs.dispatch(db, unsent)
    if unsent:
        console.print(f"resent {len(unsent)} queued jobs to the broker")


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="bind address")] = None,
    port: Annotated[int | None, typer.Option(help="port")] = None,
    reload: Annotated[bool, typer.Option(help="reload on code changes")] = False,
    worker: Annotated[
        bool | None,
        typer.Option(
            "--worker/--no-worker", help="also run a solo worker (default: on with the embedded SQLite broker)"
        ),
    ] = None,
) -> None:
    """Run the API (and the built frontend) with uvicorn; in the embedded default also a solo Celery worker."""
    import uvicorn

    settings = _checked_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    migrations.upgrade(settings.resolved_database_url)
    start_worker = worker if worker is not None else settings.resolved_broker_url.startswith("sqla+sqlite")
    _resend_unsent_jobs()
    child = (
        subprocess.Popen(_worker_command("gpu,cpu", 1, "solo"), preexec_fn=_die_with_parent) if start_worker else None
    )
    try:
        uvicorn.run("backend.main:app", host=host or settings.api_host, port=port or settings.api_port, reload=reload)
    finally:
        if child is not None:
            child.send_signal(signal.SIGTERM)
            try:
                child.wait(timeout=30)
            except subprocess.TimeoutExpired:
                child.kill()


@app.command("worker")
def run_worker(
    queues: Annotated[str, typer.Option(help="comma-separated queues: gpu, cpu")] = "gpu,cpu",
    concurrency: Annotated[int, typer.Option(help="tasks at once (1 per GPU)")] = 1,
    pool: Annotated[str | None, typer.Option(help="celery pool: prefork, solo, threads")] = None,
) -> None:
    """Run a Celery worker for the given queues (prefork with Redis, solo with the embedded SQLite broker)."""
    _checked_settings()
    command = _worker_command(queues, concurrency, pool)
    os.execv(command[0], command)


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
            # A service account's token lives at most (and by default) service_token_max_days.
            settings = get_settings()
            plaintext = auth.create_api_token(db, user, "cli", actor=user, settings=settings)[0] if token else None
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
    preannotate_demo: Annotated[
        bool, typer.Option("--preannotate/--no-preannotate", help="queue pre-annotation of the new scans")
    ] = True,
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
        models = register_builtin_models(db, project.id)
    table = Table("account", "password", "role", title="demo accounts")
    for email, _display, role in DEMO_USERS:
        table.add_row(email, DEMO_PASSWORD, role)
    console.print(table)
    console.print(f"project 'demo': {len(report.imported)} scans imported, {len(report.skipped)} already there")
    console.print(f"models: {', '.join(models)}")
    if preannotate_demo and report.imported:
        for name in models:
            preannotate(
                project="demo",
                model=name,
                case=None,
                all_scans=True,
                site=None,
                phase=None,
                tumor=None,
                as_user=DEMO_USERS[0][0],
                wait=False,
            )


PHANTOM_WEIGHTS = Path(__file__).resolve().parents[1] / "worker" / "models" / "weights"
PHANTOM_MODEL_NAME = "phantom-unet"


def register_builtin_models(db: Session, project_id: int) -> list[str]:
    """Register the classical pre-annotator and the bundled phantom UNet (if its weights exist) in a project."""
    from backend.registry import service as registry

    blobs = get_blob_store()
    registry.ensure_classical_model(db, blobs, project_id)
    registered = [registry.CLASSICAL_MODEL_NAME]
    sidecar = PHANTOM_WEIGHTS / "phantom_unet.json"
    weights = PHANTOM_WEIGHTS / "phantom_unet.pt"
    if sidecar.exists() and weights.exists():
        meta = json.loads(sidecar.read_text())
        try:
            registry.get_model_by_name(db, project_id, PHANTOM_MODEL_NAME)
        except DomainError:
            model = registry.create_model(
                db,
                project_id,
                name=PHANTOM_MODEL_NAME,
                architecture=meta["architecture"],
                structures=meta["structures"],
                config=meta.get("config", {}),
                preprocessing=meta.get("preprocessing", {}),
                inference=meta.get("inference", {}),
            )
            version = registry.add_version(
                db,
                blobs,
                model,
                weights=weights.read_bytes(),
                provenance={"trained_on": "synthetic phantoms", "command": "maskloop train --phantom"},
                validation={"mean_dice": meta.get("mean_val_dice"), "per_structure": meta.get("val_dice", {})},
            )
            registry.promote(db, version, None, checked=False)
        registered.append(PHANTOM_MODEL_NAME)
    return registered


def _scan_filter(site: str | None, phase: str | None, tumor: bool | None) -> ScanFilter | None:
    from backend.scans.service import ScanFilter

    if site is None and phase is None and tumor is None:
        return None
    return ScanFilter(site=site, phase=phase, tumor=tumor)


@app.command()
def preannotate(
    project: Annotated[str, typer.Option(help="project slug")],
    model: Annotated[str, typer.Option(help="model name (its promoted version is used)")],
    case: Annotated[list[str] | None, typer.Option(help="case id (repeatable)")] = None,
    all_scans: Annotated[bool, typer.Option("--all", help="every scan of the project")] = False,
    site: Annotated[str | None, typer.Option(help="filter: site")] = None,
    phase: Annotated[str | None, typer.Option(help="filter: contrast phase")] = None,
    tumor: Annotated[bool | None, typer.Option(help="filter: tumour flag")] = None,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the requesting lead")] = "admin@maskloop.local",
    wait: Annotated[bool, typer.Option(help="follow the jobs with progress bars")] = False,
) -> None:
    """Queue pre-annotation of scans with a registered model."""
    from sqlalchemy import select

    from backend.auth import service as auth
    from backend.jobs import service as jobs
    from backend.models import Scan
    from backend.projects import service as projects

    try:
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            actor = auth.get_user_by_email(db, as_user)
            projects.authorize(db, actor, proj.id, "run_jobs")
            scan_ids = None
            if case:
                scan_ids = [
                    int(i)
                    for i in db.scalars(select(Scan.id).where(Scan.project_id == proj.id, Scan.case_id.in_(case)))
                ]
                if len(scan_ids) != len(set(case)):
                    raise DomainError(f"unknown case ids among {case}")
            flt = _scan_filter(site, phase, tumor)
            chosen_model, version = jobs.resolve_model_version(db, proj.id, None, model)
            ids = jobs.select_scans(db, proj, scan_ids=scan_ids, flt=flt, all_scans=all_scans)
            queued = jobs.launch_preannotation(db, proj, actor, model=chosen_model, version=version, scan_ids=ids)
            db.commit()
            jobs.dispatch(db, queued)
            job_ids = [j.id for j in queued]
    except DomainError as exc:
        _fail(exc)
    console.print(f"queued {len(job_ids)} pre-annotation jobs: {job_ids[:10]}{' …' if len(job_ids) > 10 else ''}")
    if wait:
        _follow(job_ids)


@app.command()
def train(
    project: Annotated[str, typer.Option(help="project slug")] = "demo",
    model: Annotated[str | None, typer.Option(help="model name to fine-tune")] = None,
    versions: Annotated[
        str | None, typer.Option(help="comma-separated label version ids (default: the approved ones)")
    ] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 20,
    heldout: Annotated[float, typer.Option(help="held-out fraction")] = 0.25,
    phantom: Annotated[bool, typer.Option(help="(re)train the bundled phantom UNet from synthetic data")] = False,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the requesting lead")] = "admin@maskloop.local",
    wait: Annotated[bool, typer.Option(help="follow the job with a progress bar")] = False,
) -> None:
    """Fine-tune a model on label versions (a queued job), or retrain the bundled phantom model locally."""
    if phantom:
        # Runs the pure ML module in its own process: the backend never imports torch.
        out = PHANTOM_WEIGHTS / "phantom_unet.pt"
        raise typer.Exit(subprocess.call([sys.executable, "-m", "worker.models.phantom_model", str(out)]))
    from backend.auth import service as auth
    from backend.jobs import service as jobs
    from backend.projects import service as projects
    from backend.registry import service as registry

    if not model:
        console.print("[red]error:[/red] give --model (and --versions, default: the approved ones) or --phantom")
        raise typer.Exit(code=2)
    try:
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            actor = auth.get_user_by_email(db, as_user)
            projects.authorize(db, actor, proj.id, "run_jobs")
            chosen = registry.get_model_by_name(db, proj.id, model)
            ids = [int(v) for v in versions.split(",") if v.strip()] if versions else None
            job = jobs.launch_training(
                db, proj, actor, model=chosen, label_version_ids=ids, epochs=epochs, heldout_fraction=heldout
            )
            db.commit()
            jobs.dispatch(db, [job])
            job_id = job.id
    except DomainError as exc:
        _fail(exc)
    except ValueError:
        console.print("[red]error:[/red] --versions must be comma-separated integers")
        raise typer.Exit(code=2) from None
    console.print(f"queued training job {job_id}")
    if wait:
        _follow([job_id])


@app.command("jobs")
def list_jobs(
    project: Annotated[str, typer.Option(help="project slug")] = "demo",
    watch: Annotated[bool, typer.Option(help="follow active jobs with progress bars")] = False,
    requeue: Annotated[bool, typer.Option(help="resend queued jobs that never reached a worker")] = False,
    limit: Annotated[int, typer.Option(help="rows")] = 30,
) -> None:
    """Show a project's jobs with status, progress and queue position."""
    from backend.jobs import service as jobs
    from backend.projects import service as projects

    with session_scope() as db:
        proj = projects.get_project_by_slug(db, project)
        if requeue:
            stale = jobs.requeue_candidates(db, stale_after_s=60)
            jobs.dispatch(db, stale)
            console.print(f"resent {len(stale)} queued jobs")
        rows, total = jobs.list_jobs(db, proj.id, status=None, kind=None, offset=0, limit=limit)
        positions = jobs.queue_positions(db, rows)
        table = Table("id", "kind", "status", "progress", "queue pos.", "message", title=f"{total} jobs")
        for job in rows:
            position = positions.get(job.id)
            table.add_row(
                str(job.id),
                job.kind,
                job.status,
                f"{job.progress:5.1f}%",
                str(position) if position else "",
                (job.error or job.message)[:60],
            )
        active = [j.id for j in rows if j.status in ("queued", "running")]
    console.print(table)
    if watch and active:
        _follow(active)


def _follow(job_ids: list[int]) -> None:
    """Progress bars for jobs until they all finish."""
    from backend.jobs import service as jobs

    with Progress(
        TextColumn("job {task.fields[job]}"),
        BarColumn(),
        TextColumn("{task.percentage:>5.1f}%"),
        TextColumn("{task.fields[status]}: {task.fields[note]}"),
        console=console,
    ) as progress:
        tasks = {i: progress.add_task("", total=100, job=i, status="queued", note="") for i in job_ids}
        pending = set(job_ids)
        while pending:
            with session_scope() as db:
                rows = [jobs.get_job(db, i) for i in sorted(pending)]
                positions = jobs.queue_positions(db, rows)
                for job in rows:
                    note = f"#{positions[job.id]} in queue" if job.id in positions else (job.error or job.message)
                    progress.update(tasks[job.id], completed=job.progress, status=job.status, note=note[:60])
                    if job.status in ("succeeded", "failed", "cancelled"):
                        pending.discard(job.id)
            time.sleep(0.5)


@app.command("export")
def export_dataset(
    project: Annotated[str, typer.Option(help="project slug")],
    fmt: Annotated[str, typer.Option("--format", help="pants | nnunet | msd | dicom-seg")] = "pants",
    version: Annotated[str, typer.Option(help="head | approved | model:<name>")] = "head",
    structures: Annotated[str | None, typer.Option(help="comma-separated structure names (default: all)")] = None,
    case: Annotated[list[str] | None, typer.Option(help="case id (repeatable; default: every scan)")] = None,
    nnunet_labels: Annotated[str, typer.Option(help="nnU-Net labels: paint-order | regions")] = "paint-order",
    dataset_id: Annotated[int, typer.Option(help="nnU-Net dataset id (DatasetXXX_Name)")] = 1,
    dataset_name: Annotated[str | None, typer.Option(help="nnU-Net/MSD dataset name")] = None,
    out: Annotated[Path | None, typer.Option(help="write the dataset folder here, in this process")] = None,
    job: Annotated[bool, typer.Option("--job", help="queue a cpu export job instead (download via the API)")] = False,
    as_user: Annotated[
        str, typer.Option("--as", help="e-mail of the requesting lead (--job)")
    ] = "admin@maskloop.local",
    wait: Annotated[bool, typer.Option(help="with --job: follow the job with a progress bar")] = False,
) -> None:
    """Export one label version per scan as PanTS, nnU-Net v2, MSD or DICOM SEG (a folder, or a queued job)."""
    from sqlalchemy import select

    from backend.auth import service as auth
    from backend.exports import service as exports
    from backend.jobs import service as jobs
    from backend.models import Scan
    from backend.projects import service as projects

    if (out is None) == (not job):
        console.print("[red]error:[/red] give exactly one of --out DIR or --job")
        raise typer.Exit(code=2)
    names = [s.strip() for s in structures.split(",") if s.strip()] if structures else None
    try:
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            scan_ids = None
            if case:
                rows = db.execute(
                    select(Scan.id, Scan.case_id).where(Scan.project_id == proj.id, Scan.case_id.in_(case))
                )
                found = {row[1]: int(row[0]) for row in rows}
                unknown = [c for c in case if c not in found]
                if unknown:
                    raise DomainError(f"unknown case ids: {unknown[:10]}")
                scan_ids = [found[c] for c in case]
            params = exports.validate_request(
                db,
                proj,
                fmt=fmt,
                version=version,
                structures=names,
                scan_ids=scan_ids,
                flt=None,
                nnunet_labels=nnunet_labels,
                dataset_id=dataset_id,
                dataset_name=dataset_name,
            )
            if job:
                actor = auth.get_user_by_email(db, as_user)
                projects.authorize(db, actor, proj.id, "run_jobs")
                queued = jobs.create_job(db, project_id=proj.id, kind="export", created_by=actor.id, params=params)
                db.commit()
                jobs.dispatch(db, [queued])
                job_id = queued.id
            else:
                plan = exports.plan_export(db, proj, params)
    except DomainError as exc:
        _fail(exc)
    if job:
        console.print(f"queued export job {job_id}; download: GET /api/exports/{job_id}/download")
        if wait:
            _follow([job_id])
        return
    assert out is not None
    try:
        with _progress() as progress:
            task = progress.add_task("exporting", total=len(plan.cases), item="")

            def tick(done: int, total: int, case_id: str) -> None:
                progress.update(task, completed=done, total=total, item=case_id)

            manifest = exports.write_export(get_blob_store(), plan, out, progress=tick)
    except DomainError as exc:
        _fail(exc)
    console.print(f"exported {len(manifest['scans'])} scans to {out} ({fmt}, version {manifest['version']})")
    for skipped in manifest["skipped"]:
        console.print(f"  skipped {skipped['case_id'] or skipped['scan_id']}: {skipped['reason']}")


@app.command("evaluate")
def evaluate(
    project: Annotated[str, typer.Option(help="project slug")],
    model: Annotated[str | None, typer.Option(help="model name (its promoted version)")] = None,
    model_version: Annotated[int | None, typer.Option(help="model version id")] = None,
    versions: Annotated[str | None, typer.Option(help="comma-separated label version ids instead of a model")] = None,
    split: Annotated[str, typer.Option(help="scan split, or 'all'")] = "test",
    structures: Annotated[str | None, typer.Option(help="comma-separated structures (default: the model's)")] = None,
    nsd_tolerance: Annotated[float | None, typer.Option(help="NSD tolerance in mm (default 1)")] = None,
    out: Annotated[Path | None, typer.Option(help="write the report: .json (everything) or .csv (cases)")] = None,
    sync: Annotated[bool, typer.Option("--sync", help="run in this process instead of queueing a cpu job")] = False,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the requesting lead")] = "admin@maskloop.local",
) -> None:
    """Evaluate a model version (or label versions) against approved ground truth: DSC, NSD, HD95, detection."""
    from backend.auth import service as auth
    from backend.evaluation import service as evaluation
    from backend.projects import service as projects

    if out is not None and out.suffix not in (".json", ".csv"):
        console.print("[red]error:[/red] --out must end in .json or .csv")
        raise typer.Exit(code=2)
    try:
        ids = [int(v) for v in versions.split(",") if v.strip()] if versions is not None else None
    except ValueError:
        console.print("[red]error:[/red] --versions must be comma-separated integers")
        raise typer.Exit(code=2) from None
    request = evaluation.EvaluationRequest(
        model_version_id=model_version,
        model_name=model,
        version_ids=ids,
        split=split,
        structures=[s.strip() for s in structures.split(",") if s.strip()] if structures else None,
        nsd_tolerance_mm=nsd_tolerance,
    )
    try:
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            actor = auth.get_user_by_email(db, as_user)
            projects.authorize(db, actor, proj.id, "run_jobs")
            if not sync:
                run, job = evaluation.launch(db, proj, actor, request)
                db.commit()
                evaluation.dispatch(db, job)
                run_id, job_id = run.id, job.id
            else:
                run = evaluation.create_run(db, proj, actor, request)
                with _progress() as progress:
                    task = progress.add_task("evaluating", total=len(run.config["pairs"]), item="")
                    evaluation.execute_run(
                        db, get_blob_store(), run, progress=lambda done, total: progress.update(task, completed=done)
                    )
                run_id = run.id
    except DomainError as exc:
        _fail(exc)
    if not sync:
        console.print(f"queued evaluation {run_id} as job {job_id}")
        if out is None:
            return
        _follow([job_id])
    with session_scope() as db:
        run = evaluation.get_run(db, run_id)
        if run.status != "succeeded":
            console.print(f"[red]error:[/red] evaluation {run_id} {run.status}: {run.error or ''}")
            raise typer.Exit(code=1)
        table = Table("structure", "pairs", "DSC mean", "NSD mean", "HD95 median (mm)", title=run.name)
        for name, block in run.summary["structures"].items():
            cells = [block["dsc"]["mean"], block["nsd"]["mean"], block["hd95"]["median"]]
            table.add_row(name, str(block["pairs"]), *("undefined" if v is None else f"{v:.3f}" for v in cells))
        console.print(table)
        console.print(f"NSD: {run.summary['nsd_definition']}; tolerance {run.summary['nsd_tolerance_mm']} mm")
        if out is not None:
            if out.suffix == ".csv":
                out.write_text(evaluation.cases_csv(evaluation.case_rows(db, run)))
            else:
                out.write_text(json.dumps(evaluation.report(db, run), indent=2, default=str))
            console.print(f"wrote {out}")


def _mib(size: int) -> str:
    return f"{size / (1 << 20):,.1f} MiB"


@app.command("gc")
def gc(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list what would be deleted, delete nothing")] = False,
    grace_hours: Annotated[
        float | None, typer.Option(help="keep unreferenced blobs younger than this (default: MASKLOOP_GC_GRACE_HOURS)")
    ] = None,
) -> None:
    """Delete blobs no row references (chunks inside manifests count) older than a grace period; stale temp files,
    stale sign-in throttle rows and long-ended login sessions too."""
    from backend.storage import service as storage
    from backend.storage.temp import sweep_temp

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
        f"({_mib(report.scanned_bytes)}); kept {report.kept_young:,} unreferenced within the {grace:g} h grace "
        f"period ({_mib(report.kept_young_bytes)}); {verb} {report.swept:,} blobs ({report.swept_bytes:,} bytes, "
        f"{_mib(report.swept_bytes)}) in {report.seconds:.1f} s"
    )
    if not dry_run:
        swept = sweep_temp(settings)
        console.print(f"removed {swept.files} stale temp files ({_mib(swept.bytes)})")
        from backend.auth import service as auth

        with session_scope() as db:
            throttles, ended = auth.prune_auth_state(db, settings)
        console.print(f"pruned {throttles} stale sign-in throttle rows and {ended} long-ended login sessions")


@app.command("fsck")
def fsck(
    quick: Annotated[bool, typer.Option("--quick", help="check that blobs exist, without hashing them")] = False,
) -> None:
    """Check that every referenced blob exists and hashes to its name; exit 1 and name the rows when not."""
    from backend.storage import service as storage

    with session_scope() as db:
        report = storage.check_blobs(db, get_blob_store(), quick=quick)
    for problem in report.problems:
        via = f" (a chunk of {len(problem.via_manifests)} manifests)" if problem.via_manifests else ""
        console.print(f"[red]{problem.state}[/red] {problem.digest}{via}")
        for row in problem.rows:
            console.print(f"  referenced by {row}")
    what = "present" if quick else "present and intact"
    console.print(
        f"checked {report.checked:,} referenced blobs ({report.manifests:,} manifests, {_mib(report.checked_bytes)}) "
        f"in {report.seconds:.1f} s: " + ("all " + what if report.ok else f"[red]{len(report.problems)} problems[/red]")
    )
    if not report.ok:
        raise typer.Exit(code=1)


if __name__ == "__main__":
    app()
