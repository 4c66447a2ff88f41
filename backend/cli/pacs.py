"""`maskloop pacs configure|search|series|retrieve|stow`: a project's DICOMweb PACS from the command line.

The same use cases as the HTTP API (backend/flows/pacs.py): the requesting user (`--as`) must lead the project;
retrievals and STOWs are `pacs` jobs that the workers run (`--wait` follows them).
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from backend.cli.access import acting_member
from backend.cli.common import console, fail
from backend.cli.jobs import _follow
from backend.core.config import get_settings
from backend.core.db import session_scope
from backend.core.errors import DomainError
from backend.flows import pacs as pacs_flows
from backend.flows.demo import DEMO_ADMIN
from backend.pacs import service as pacs
from backend.scans import service as scans

app = typer.Typer(help="A project's PACS over DICOMweb: search, retrieve series, send SEGs.", no_args_is_help=True)

Project_ = Annotated[str, typer.Option("--project", help="project slug")]
As = Annotated[str, typer.Option("--as", help="e-mail of the requesting lead")]


@app.command("configure")
def configure(
    project: Project_,
    url: Annotated[str, typer.Option(help="DICOMweb base URL (its host must be on MASKLOOP_PACS_ALLOWED_HOSTS)")],
    username: Annotated[str | None, typer.Option(help="HTTP basic user")] = None,
    password_stdin: Annotated[bool, typer.Option(help="read the password from standard input")] = False,
    deidentify: Annotated[bool, typer.Option(help="de-identify intake (PS3.15 Basic Profile)")] = False,
    as_user: As = DEMO_ADMIN,
) -> None:
    """Set the project's DICOMweb source (the password is stored encrypted)."""
    password = sys.stdin.readline().rstrip("\n") if password_stdin else None
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user, "import")
            source = pacs_flows.configure_source(
                db,
                get_settings(),
                proj,
                actor=actor,
                base_url=url,
                username=username,
                password=password,
                deidentify=deidentify,
            )
            shown = f"{source.base_url} (user {source.username or '-'}, de-identify {source.deidentify})"
    except DomainError as exc:
        fail(exc)
    console.print(f"PACS of {project}: {shown}")


@app.command("search")
def search(
    project: Project_,
    patient_id: Annotated[str | None, typer.Option(help="patient id")] = None,
    patient_name: Annotated[str | None, typer.Option(help="patient name (matches anywhere)")] = None,
    study_date: Annotated[str | None, typer.Option(help="YYYYMMDD or YYYYMMDD-YYYYMMDD")] = None,
    modality: Annotated[str, typer.Option(help="modality in study ('' for any)")] = "CT",
    accession: Annotated[str | None, typer.Option(help="accession number")] = None,
    description: Annotated[str | None, typer.Option(help="study description (matches anywhere)")] = None,
    limit: Annotated[int, typer.Option(help="most studies to list")] = 50,
    as_user: As = DEMO_ADMIN,
) -> None:
    """Search the project's PACS for studies (QIDO-RS)."""
    query = pacs.StudyQuery(patient_id, patient_name, study_date, modality or None, accession, description)
    try:
        with session_scope() as db:
            proj, _ = acting_member(db, project, as_user, "import")
            found = pacs_flows.search_studies(db, get_settings(), proj, query, limit=limit)
    except DomainError as exc:
        fail(exc)
    table = Table("patient", "date", "accession", "description", "modalities", "series")
    # UIDs are what `retrieve --study` takes: never shortened, whatever the terminal's width.
    table.add_column("study UID", no_wrap=True, min_width=max((len(s.study_uid) for s in found), default=9))
    for study in found:
        table.add_row(
            f"{study.patient_id} {study.patient_name}".strip(),
            study.study_date,
            study.accession,
            study.description,
            ",".join(study.modalities),
            str(study.series or ""),
            study.study_uid,
        )
    console.print(table)
    console.print(f"{len(found)} studies")


@app.command("series")
def series(
    project: Project_, study: Annotated[str, typer.Option(help="StudyInstanceUID")], as_user: As = DEMO_ADMIN
) -> None:
    """List a study's series with the choice rules' verdict (* marks the series a retrieval takes)."""
    try:
        with session_scope() as db:
            proj, _ = acting_member(db, project, as_user, "import")
            lines = pacs_flows.study_series(db, get_settings(), proj, study)
    except DomainError as exc:
        fail(exc)
    table = Table("", "number", "modality", "description", "slices", "thickness", "phase", "verdict", "scan")
    # UIDs are what `retrieve --series` takes: never shortened, whatever the terminal's width.
    widest = max((len(line.info.series_uid) for line in lines), default=10)
    table.add_column("series UID", no_wrap=True, min_width=widest)
    for line in lines:
        info = line.info
        table.add_row(
            "*" if line.chosen else "",
            str(info.number if info.number is not None else ""),
            info.modality,
            info.description,
            str(info.instances),
            f"{info.thickness:g} mm" if info.thickness else "",
            info.phase or "",
            info.refusal() or "eligible",
            str(line.scan_id or ""),
            info.series_uid,
        )
    console.print(table)


@app.command("retrieve")
def retrieve(
    project: Project_,
    study: Annotated[str, typer.Option(help="StudyInstanceUID")],
    series_uid: Annotated[
        str | None, typer.Option("--series", help="SeriesInstanceUID (default: the rules' choice)")
    ] = None,
    phase: Annotated[str | None, typer.Option(help="preferred phase: non-contrast, arterial, venous, delay")] = None,
    wait: Annotated[bool, typer.Option(help="follow the job with a progress bar")] = False,
    as_user: As = DEMO_ADMIN,
) -> None:
    """Retrieve a study's series into a scan (WADO-RS, a `cpu` job); a series already here is not fetched again."""
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user, "import")
            launched = pacs_flows.launch_retrieval(
                db, get_settings(), proj, actor=actor, study_uid=study, series_uid=series_uid, phase=phase
            )
            job_id = launched.job.id if launched.job is not None else None
    except DomainError as exc:
        fail(exc)
    info = launched.series
    chosen = f"series {info.number} ({info.instances} slices, {info.phase or 'phase unknown'})"
    if launched.scan_id is not None:
        console.print(f"{chosen} is already scan {launched.scan_id}")
        return
    console.print(f"{chosen}: {'queued as' if launched.created else 'already being retrieved by'} job {job_id}")
    if wait and job_id is not None:
        _follow([job_id])


@app.command("stow")
def stow(
    project: Project_,
    case: Annotated[str, typer.Option(help="case id of the scan")],
    version: Annotated[int | None, typer.Option(help="label version id (default: the approved one)")] = None,
    wait: Annotated[bool, typer.Option(help="follow the job with a progress bar")] = False,
    as_user: As = DEMO_ADMIN,
) -> None:
    """Send a version of a scan to the project's PACS as DICOM SEG (STOW-RS, a `cpu` job)."""
    try:
        with session_scope() as db:
            proj, actor = acting_member(db, project, as_user, "import")
            scan_ids = scans.scan_ids_by_case(db, proj.id, [case])
            if case not in scan_ids:
                raise DomainError(f"no case {case!r} in project {project!r}")
            scan = scans.get_scan(db, scan_ids[case])
            job = pacs_flows.launch_stow(db, get_settings(), scan, actor=actor, version_id=version)
            job_id, version_id = job.id, job.params["version_id"]
    except DomainError as exc:
        fail(exc)
    console.print(f"version {version_id} of {case}: STOW queued as job {job_id}")
    if wait:
        _follow([job_id])
