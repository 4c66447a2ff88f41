"""`maskloop preannotate`, `train`, `jobs`, `export` and `evaluate`: launch and follow jobs, export and evaluate."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from backend.auth import service as auth
from backend.cli.access import acting_member, scan_filter, scan_ids_of_cases
from backend.cli.common import console, fail, progress_bar, refuse
from backend.core.blobstore import get_blob_store
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.evaluation import service as evaluation
from backend.exports import service as exports
from backend.flows import jobs as job_flows
from backend.flows.demo import DEMO_ADMIN, PHANTOM_WEIGHTS
from backend.jobs import service as jobs
from backend.projects import service as projects
from backend.registry import service as registry
from backend.scans import service as scans

if TYPE_CHECKING:
    from sqlalchemy.orm import Session  # a type only: the CLI runs no SQL of its own

FINISHED = ("succeeded", "failed", "cancelled")


def _follow(job_ids: list[int]) -> None:
    """Progress bars for jobs until they all finish."""
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
                    if job.status in FINISHED:
                        pending.discard(job.id)
            time.sleep(0.5)


def preannotate(
    project: Annotated[str, typer.Option(help="project slug")],
    model: Annotated[str, typer.Option(help="model name (its promoted version is used)")],
    case: Annotated[list[str] | None, typer.Option(help="case id (repeatable)")] = None,
    all_scans: Annotated[bool, typer.Option("--all", help="every scan of the project")] = False,
    site: Annotated[str | None, typer.Option(help="filter: site")] = None,
    phase: Annotated[str | None, typer.Option(help="filter: contrast phase")] = None,
    tumor: Annotated[bool | None, typer.Option(help="filter: tumour flag")] = None,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the requesting lead")] = DEMO_ADMIN,
    wait: Annotated[bool, typer.Option(help="follow the jobs with progress bars")] = False,
) -> None:
    """Queue pre-annotation of scans with a registered model."""
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user)
            scan_ids = scan_ids_of_cases(db, proj, case)
            launched = job_flows.launch_preannotation(
                db,
                proj,
                model_name=model,
                scan_ids=scan_ids,
                flt=scan_filter(site, phase, tumor),
                all_scans=all_scans,
                actor=actor,
            )
            job_ids = [j.id for j in launched.jobs]
    except DomainError as exc:
        fail(exc)
    console.print(f"queued {len(job_ids)} pre-annotation jobs: {job_ids[:10]}{' …' if len(job_ids) > 10 else ''}")
    if wait:
        _follow(job_ids)


def train(
    project: Annotated[str, typer.Option(help="project slug")] = "demo",
    model: Annotated[str | None, typer.Option(help="model name to fine-tune")] = None,
    versions: Annotated[
        str | None, typer.Option(help="comma-separated label version ids (default: the approved ones)")
    ] = None,
    epochs: Annotated[int, typer.Option(help="training epochs")] = 20,
    heldout: Annotated[float, typer.Option(help="held-out fraction")] = 0.25,
    phantom: Annotated[bool, typer.Option(help="(re)train the bundled phantom UNet from synthetic data")] = False,
    interactive: Annotated[
        bool, typer.Option(help="with --phantom: the click-guided (AI refine) model instead of the UNet")
    ] = False,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the requesting lead")] = DEMO_ADMIN,
    wait: Annotated[bool, typer.Option(help="follow the job with a progress bar")] = False,
) -> None:
    """Fine-tune a model on label versions (a queued job), or retrain the bundled phantom model locally."""
    if interactive and not phantom:
        refuse("--interactive trains on phantoms: give --interactive --phantom")
    if phantom and interactive:
        # The click-guided model: trained on varied phantoms, measured on held-out ones (its own process too).
        out = PHANTOM_WEIGHTS / "interactive_unet.pt"
        module = "worker.models.interactive.phantom_training"
        raise typer.Exit(subprocess.call([sys.executable, "-m", module, str(out)]))
    if phantom:
        # Runs the pure ML module in its own process: the backend never imports torch.
        out = PHANTOM_WEIGHTS / "phantom_unet.pt"
        raise typer.Exit(subprocess.call([sys.executable, "-m", "worker.models.phantom_model", str(out)]))
    if not model:
        refuse("give --model (and --versions, default: the approved ones) or --phantom")
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user)
            chosen = registry.get_model_by_name(db, proj.id, model)
            # `--versions ""` is an empty selection (refused), not "all": leave the option out for every approved one.
            ids = [int(v) for v in versions.split(",") if v.strip()] if versions is not None else None
            job = job_flows.launch_training(
                db, proj, chosen, label_version_ids=ids, epochs=epochs, heldout_fraction=heldout, actor=actor
            )
            job_id = job.id
    except DomainError as exc:
        fail(exc)
    except ValueError:
        refuse("--versions must be comma-separated integers")
    console.print(f"queued training job {job_id}")
    if wait:
        _follow([job_id])


def list_jobs(
    project: Annotated[str, typer.Option(help="project slug")] = "demo",
    watch: Annotated[bool, typer.Option(help="follow active jobs with progress bars")] = False,
    requeue: Annotated[bool, typer.Option(help="resend queued jobs that never reached a worker")] = False,
    limit: Annotated[int, typer.Option(help="rows")] = 30,
) -> None:
    """Show a project's jobs with status, progress and queue position."""
    with session_scope() as db:
        proj = projects.get_project_by_slug(db, project)
        if requeue:
            stale = job_flows.requeue_stale(db, stale_after_s=60)
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


def export_dataset(
    project: Annotated[str, typer.Option(help="project slug")],
    fmt: Annotated[str, typer.Option("--format", help="pants | nnunet | msd | dicom-seg")] = "pants",
    version: Annotated[
        str, typer.Option(help="approved (last approved per scan; others skipped) | head | model:<name>")
    ] = "approved",
    structures: Annotated[str | None, typer.Option(help="comma-separated structure names (default: all)")] = None,
    case: Annotated[list[str] | None, typer.Option(help="case id (repeatable; default: every scan)")] = None,
    nnunet_labels: Annotated[str, typer.Option(help="nnU-Net labels: paint-order | regions")] = "paint-order",
    dataset_id: Annotated[int, typer.Option(help="nnU-Net dataset id (DatasetXXX_Name)")] = 1,
    dataset_name: Annotated[str | None, typer.Option(help="nnU-Net/MSD dataset name")] = None,
    test_split: Annotated[
        str, typer.Option(help="test-split scans: separate (test folders) | exclude | merge (into training)")
    ] = "separate",
    ignore_label: Annotated[
        bool, typer.Option(help="nnU-Net: unknown voxels of cases with a missing structure become 'ignore'")
    ] = True,
    folder_name: Annotated[str | None, typer.Option(help="with --job: the archive's top-level folder")] = None,
    out: Annotated[
        Path | None, typer.Option(help="write the dataset folder exactly at this (new or empty) folder, in process")
    ] = None,
    job: Annotated[bool, typer.Option("--job", help="queue a cpu export job instead (download via the API)")] = False,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the requesting lead (--job)")] = DEMO_ADMIN,
    wait: Annotated[bool, typer.Option(help="with --job: follow the job with a progress bar")] = False,
) -> None:
    """Export one label version per scan as PanTS, nnU-Net v2, MSD or DICOM SEG (a folder, or a queued job)."""
    if (out is None) == (not job):
        refuse("give exactly one of --out DIR or --job")
    if out is not None and out.exists() and (not out.is_dir() or any(out.iterdir())):
        refuse(f"--out {out} exists and is not an empty folder; the export is written exactly there")
    names = [s.strip() for s in structures.split(",") if s.strip()] if structures else None
    try:
        with session_scope() as db:
            proj = projects.get_project_by_slug(db, project)
            scan_ids = None
            if case:
                found = scans.scan_ids_by_case(db, proj.id, case)
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
                test_split=test_split,
                ignore_label=ignore_label,
                folder_name=folder_name,
            )
            if job:
                actor = auth.get_user_by_email(db, as_user)
                projects.authorize(db, actor, proj.id, "run_jobs")
                job_id = job_flows.launch_export(db, proj, params, actor=actor).id
            else:
                plan = exports.plan_export(db, proj, params)
    except DomainError as exc:
        fail(exc)
    if job:
        console.print(f"queued export job {job_id}; download: GET /api/exports/{job_id}/download")
        if wait:
            _follow([job_id])
        return
    assert out is not None
    try:
        with progress_bar() as progress:
            task = progress.add_task("exporting", total=len(plan.cases), item="")

            def tick(done: int, total: int, case_id: str) -> None:
                progress.update(task, completed=done, total=total, item=case_id)

            manifest = exports.write_export(get_blob_store(), plan, out, progress=tick)
    except DomainError as exc:
        fail(exc)
    console.print(f"exported {len(manifest['scans'])} scans to {out} ({fmt}, version {manifest['version']})")
    for skipped in manifest["skipped"]:
        console.print(f"  skipped {skipped['case_id'] or skipped['scan_id']}: {skipped['reason']}")


def _print_evaluation(db: Session, run_id: int, out: Path | None) -> None:
    """The finished evaluation's summary table, and its report written to `out` (.json or .csv)."""
    run = evaluation.get_run(db, run_id)
    if run.status != "succeeded":
        console.print(f"[red]error:[/red] evaluation {run_id} {run.status}: {run.error or ''}")
        raise typer.Exit(code=1)
    table = Table("structure", "pairs", "DSC mean", "NSD mean", "HD95 median (mm)", title=run.name)
    for name, block in run.summary["structures"].items():
        cells = [block["dsc"]["mean"], block["nsd"]["mean"], block["hd95"]["median"]]
        table.add_row(name, str(block["pairs"]), *("undefined" if v is None else f"{v:.3f}" for v in cells))
    console.print(table)
    definition = run.summary.get("metric_definition", "lorensen")
    console.print(
        f"NSD/HD95 definition {definition}: {run.summary['nsd_definition']}; "
        f"tolerance {run.summary['nsd_tolerance_mm']} mm"
    )
    if out is not None:
        if out.suffix == ".csv":
            out.write_text(evaluation.cases_csv(evaluation.case_rows(db, run)))
        else:
            out.write_text(json.dumps(evaluation.report(db, run), indent=2, default=str))
        console.print(f"wrote {out}")


def evaluate(
    project: Annotated[str, typer.Option(help="project slug")],
    model: Annotated[str | None, typer.Option(help="model name (its promoted version)")] = None,
    model_version: Annotated[int | None, typer.Option(help="model version id")] = None,
    versions: Annotated[str | None, typer.Option(help="comma-separated label version ids instead of a model")] = None,
    split: Annotated[str, typer.Option(help="scan split, or 'all'")] = "test",
    structures: Annotated[str | None, typer.Option(help="comma-separated structures (default: the model's)")] = None,
    nsd_tolerance: Annotated[float | None, typer.Option(help="NSD tolerance in mm (default 1)")] = None,
    metric_definition: Annotated[
        str | None, typer.Option(help="NSD/HD95 definition: deepmind (default) | lorensen | monai")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="write the report: .json (everything) or .csv (cases)")] = None,
    sync: Annotated[bool, typer.Option("--sync", help="run in this process instead of queueing a cpu job")] = False,
    as_user: Annotated[str, typer.Option("--as", help="e-mail of the requesting lead")] = DEMO_ADMIN,
) -> None:
    """Evaluate a model version (or label versions) against approved ground truth: DSC, NSD, HD95, detection."""
    if out is not None and out.suffix not in (".json", ".csv"):
        refuse("--out must end in .json or .csv")
    try:
        ids = [int(v) for v in versions.split(",") if v.strip()] if versions is not None else None
    except ValueError:
        refuse("--versions must be comma-separated integers")
    request = evaluation.EvaluationRequest(
        model_version_id=model_version,
        model_name=model,
        version_ids=ids,
        split=split,
        structures=[s.strip() for s in structures.split(",") if s.strip()] if structures else None,
        nsd_tolerance_mm=nsd_tolerance,
        metric_definition=metric_definition,
    )
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user)
            if not sync:
                run, queued = job_flows.launch_evaluation(db, proj, request, actor=actor)
                run_id, job_id = run.id, queued.id
            else:
                with progress_bar() as progress:
                    task = progress.add_task("evaluating", total=None, item="")

                    def tick(done: int, total: int) -> None:
                        progress.update(task, completed=done, total=total)

                    run_id = job_flows.evaluate_now(db, get_blob_store(), proj, request, actor=actor, progress=tick).id
    except DomainError as exc:
        fail(exc)
    if not sync:
        console.print(f"queued evaluation {run_id} as job {job_id}")
        if out is None:
            return
        _follow([job_id])
    with session_scope() as db:
        _print_evaluation(db, run_id, out)
