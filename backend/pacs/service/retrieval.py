"""WADO-RS retrieval of a series into a scan, as a `pacs` job on the `cpu` queue, in four steps:

1. `launch` (the request's transaction): the study's series listed over QIDO-RS, one chosen (or the one asked
   for, if it is CT), deduplicated by SeriesInstanceUID (a scan already holding it, or a job already fetching it,
   is returned instead), and a queued job. In a de-identifying project the job holds research UIDs only; the
   originals stay in the identifier map.
2. `begin` (a short transaction in the worker): the job's source and original UIDs read back.
3. `fetch` and `prepare` (no transaction): the instances streamed to a temporary folder with progress, the first
   header read for metadata (site, manufacturer, model, sex, age, phase) and de-identified when asked.
4. `complete` (one transaction): the series decoded by the DICOM loader (slices sorted and checked: a missing
   slice, mixed sizes or orientations are refused naming the instance), the scan with its source UIDs, the
   `pacs_series` row (unique per project and series: a race is settled by the database), the identifier map, an
   audit event and the job's success. Any failure leaves no scan and no row.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.core.config import Settings
from backend.core.errors import Conflict, InvalidInput
from backend.jobs import service as jobs
from backend.models import Job, PacsSeries, PacsSource, Project, Scan, User
from backend.pacs.service import deid, identities, search, sources, wado
from backend.pacs.service.client import Endpoint, answering, connect
from backend.pacs.service.series import SeriesInfo, choose, scan_metadata, text
from backend.scans import service as scans

_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class Retrieval:
    """What a retrieval request led to: a new job, the job already fetching the series, or the scan holding it."""

    series: SeriesInfo
    job: Job | None = None
    scan_id: int | None = None
    created: bool = False


def _describe(info: SeriesInfo) -> str:
    number = f"series {info.number}" if info.number is not None else f"series {info.series_uid}"
    return f"{number} ({info.modality or '?'}, {info.instances} instances)"


def pick(candidates: list[SeriesInfo], study_uid: str, series_uid: str | None, phase: str | None) -> SeriesInfo:
    """The series to import: the one asked for (it must be CT and a volume), else the rules' choice; 422 listing
    every series and why it was passed over when none qualifies."""
    if series_uid:
        match = next((s for s in candidates if s.series_uid == series_uid), None)
        if match is None:
            raise InvalidInput(f"series {series_uid} is not in study {study_uid}", series_uid=series_uid)
        reason = match.refusal()
        if reason is not None and not reason.startswith(("not axial", "no usable")):
            raise InvalidInput(f"{_describe(match)} cannot be imported: {reason}", series_uid=series_uid)
        return match
    chosen = choose(candidates, phase)
    if chosen is None:
        listing = "; ".join(f"{_describe(s)}: {s.refusal()}" for s in candidates)
        raise InvalidInput(
            f"study {study_uid} has no axial CT series to import ({listing}); nothing was queued",
            study_uid=study_uid,
            series=[{"series_uid": s.series_uid, "modality": s.modality, "reason": s.refusal()} for s in candidates],
        )
    return chosen


def scan_of_series(db: Session, project_id: int, series_uids: set[str]) -> int | None:
    """The project's scan that holds one of these series UIDs (as imported: original or research)."""
    return db.scalar(
        select(Scan.id).where(Scan.project_id == project_id, Scan.source_series_uid.in_(sorted(series_uids))).limit(1)
    )


def _active_job(db: Session, project_id: int, series_uid: str) -> Job | None:
    rows = db.scalars(select(Job).where(Job.project_id == project_id, Job.kind == "pacs", Job.status.in_(jobs.ACTIVE)))
    return next(
        (j for j in rows if j.params.get("op") == "retrieve" and j.params.get("series_uid") == series_uid), None
    )


def client_of(db: Session, settings: Settings, project_id: int) -> tuple[PacsSource, Endpoint]:
    """The project's source and its endpoint (allow-list checked, password decrypted)."""
    source = sources.get_source(db, project_id)
    return source, sources.endpoint_of(source, settings)


def launch(
    db: Session,
    settings: Settings,
    project: Project,
    actor: User | None,
    *,
    study_uid: str,
    series_uid: str | None = None,
    phase: str | None = None,
) -> Retrieval:
    """Choose a study's series and queue its retrieval (sent after the caller commits), unless it is already here."""
    source, endpoint = client_of(db, settings, project.id)
    client = connect(endpoint, settings.pacs_allowed_hosts)
    candidates = search.study_series(client, endpoint, study_uid, limit=settings.pacs_search_limit)
    chosen = pick(candidates, study_uid, series_uid, phase)
    names = identities.pseudonyms(source)
    research_study, research_series = names.uid(study_uid), names.uid(chosen.series_uid)
    scan_id = scan_of_series(db, project.id, {chosen.series_uid, research_series})
    if scan_id is not None:
        return Retrieval(chosen, scan_id=scan_id)
    stored_study, stored_series = (
        (research_study, research_series) if source.deidentify else (study_uid, chosen.series_uid)
    )
    active = _active_job(db, project.id, stored_series)
    if active is not None:
        return Retrieval(chosen, job=active)
    if source.deidentify:
        identities.remember(db, project.id, "study", study_uid, research_study)
        identities.remember(db, project.id, "series", chosen.series_uid, research_series)
    params: dict[str, Any] = {
        "op": "retrieve",
        "study_uid": stored_study,
        "series_uid": stored_series,
        "series_number": chosen.number,
        "instances": chosen.instances,
        "phase": chosen.phase,
        "thickness_mm": chosen.thickness,
        "deidentified": source.deidentify,
    }
    job = jobs.create_job(db, project_id=project.id, kind="pacs", created_by=actor.id if actor else None, params=params)
    return Retrieval(chosen, job=job, created=True)


@dataclass(frozen=True)
class RetrievalWork:
    """What a retrieval job works on, read in its first transaction."""

    job_id: int
    project_id: int
    actor_id: int | None
    endpoint: Endpoint
    allowed_hosts: str
    study_uid: str  # original UIDs: what the PACS knows
    series_uid: str
    stored_study_uid: str  # what the scan keeps (research UIDs when de-identified)
    stored_series_uid: str
    instances: int
    salt: str
    deidentify: bool


def begin(db: Session, settings: Settings, job: Job) -> RetrievalWork | None:
    """Read the job's source and original UIDs; None (the job succeeded as 'skipped') when the series is here."""
    params = job.params
    stored_study, stored_series = str(params["study_uid"]), str(params["series_uid"])
    scan_id = scan_of_series(db, job.project_id, {stored_series})
    if scan_id is not None:
        job.scan_id = scan_id
        jobs.succeed(db, job, {"outcome": "skipped", "scan_id": scan_id}, message=f"already scan {scan_id}")
        return None
    source, endpoint = client_of(db, settings, job.project_id)
    deidentified = bool(params.get("deidentified"))
    study, series = stored_study, stored_series
    if deidentified:
        study = identities.original_of(db, job.project_id, "study", stored_study) or ""
        series = identities.original_of(db, job.project_id, "series", stored_series) or ""
        if not study or not series:
            raise InvalidInput(
                "the identifier map no longer holds this series' original UIDs; search and retrieve again"
            )
    return RetrievalWork(
        job_id=job.id,
        project_id=job.project_id,
        actor_id=job.created_by,
        endpoint=endpoint,
        allowed_hosts=settings.pacs_allowed_hosts,
        study_uid=study,
        series_uid=series,
        stored_study_uid=stored_study,
        stored_series_uid=stored_series,
        instances=int(params.get("instances") or 0),
        salt=source.salt,
        deidentify=deidentified,
    )


def fetch(
    work: RetrievalWork, folder: Path, progress: Callable[[int, int], None], check: Callable[[], None]
) -> list[Path]:
    """Stream the series' instances (WADO-RS) into `folder`, one file per instance named by its instance number;
    `check` runs before the request and after each instance, and raises to stop (a cancelled job)."""
    expected = work.instances

    def received(count: int) -> None:
        progress(count, max(expected, count))
        check()

    check()
    with answering(work.endpoint, f"the instances of series {work.stored_series_uid}"):
        files = wado.retrieve_series(
            work.endpoint, work.allowed_hosts, work.study_uid, work.series_uid, folder, received
        )
    if not files:
        raise InvalidInput(f"the PACS at {work.endpoint.host} sent no instance of the series")
    if work.instances and len(files) != work.instances:
        raise InvalidInput(
            f"the PACS at {work.endpoint.host} sent {len(files)} instances of the {work.instances} its search "
            "listed; retrieve the series again once it is complete",
            received=len(files),
            expected=work.instances,
        )
    return files


@dataclass(frozen=True)
class PreparedSeries:
    """The scan's identity and metadata read from the series' first header (de-identified when asked)."""

    case_id: str
    raw_metadata: dict[str, str]
    patient_id: str
    research_patient_id: str
    series_number: str


def prepare(work: RetrievalWork, files: list[Path]) -> PreparedSeries:
    """Read the first header: metadata for the scan, its case id, and (de-identifying) its research identity."""
    original = pydicom.dcmread(files[0], stop_before_pixels=True)
    stored: Dataset = original
    names = deid.Pseudonyms(work.salt)
    patient = text(original, "PatientID")
    if work.deidentify:
        stored = deid.deidentify(pydicom.dcmread(files[0], stop_before_pixels=True), names)
    shown_patient = names.patient(patient) if work.deidentify else patient
    base = _UNSAFE.sub("-", shown_patient).strip("-._")[:100] or "pacs"
    digest = hashlib.sha256(work.stored_series_uid.encode()).hexdigest()[:8]
    raw = {**scan_metadata(original, stored), "source": "pacs"}
    if work.deidentify:
        raw["deidentified"] = "; ".join(deid.METHOD)
    return PreparedSeries(
        case_id=f"{base}_{digest}" if base[0].isalnum() else f"p{base}_{digest}",
        raw_metadata=raw,
        patient_id=patient,
        research_patient_id=names.patient(patient),
        series_number=text(original, "SeriesNumber"),
    )


def _unique_violation(exc: BaseException) -> bool:
    text_ = str(getattr(exc, "orig", exc))
    return "uq_pacs_series_project_series" in text_ or "uq_scans_project_case" in text_ or isinstance(exc, Conflict)


def complete(
    db: Session, blobs: BlobStore, job: Job, work: RetrievalWork, files: list[Path], prepared: PreparedSeries
) -> Scan | None:
    """Decode the series into a scan with its rows, in the caller's one transaction (None: it was here first)."""
    project = db.get(Project, work.project_id)
    assert project is not None
    actor = db.get(User, work.actor_id) if work.actor_id is not None else None
    try:
        with db.begin_nested():
            scan = scans.import_dicom(
                db, blobs, project, actor, files, case_id=prepared.case_id, raw_metadata=prepared.raw_metadata
            )
            number = f"series {prepared.series_number}" if prepared.series_number else "a series"
            scan.source_name = f"PACS {work.endpoint.host}: {number} of {len(files)} instances"
            scan.source_study_uid, scan.source_series_uid = work.stored_study_uid, work.stored_series_uid
            db.add(
                PacsSeries(
                    project_id=project.id,
                    scan_id=scan.id,
                    study_uid=work.stored_study_uid,
                    series_uid=work.stored_series_uid,
                    instances=len(files),
                    job_id=job.id,
                )
            )
            db.flush()
    except (Conflict, IntegrityError) as exc:
        existing = scan_of_series(db, project.id, {work.stored_series_uid})
        if not _unique_violation(exc) or existing is None:
            raise
        job.scan_id = existing
        jobs.succeed(db, job, {"outcome": "skipped", "scan_id": existing}, message=f"already scan {existing}")
        return None
    if work.deidentify:
        identities.remember(db, project.id, "patient", prepared.patient_id, prepared.research_patient_id)
    audit.record(
        db,
        actor_user_id=work.actor_id,
        action="pacs.retrieve",
        entity_type="scan",
        entity_id=scan.id,
        project_id=project.id,
        scan_id=scan.id,
        details={"series_uid": work.stored_series_uid, "instances": len(files), "deidentified": work.deidentify},
    )
    job.scan_id = scan.id
    result = {
        "outcome": "imported",
        "scan_id": scan.id,
        "case_id": scan.case_id,
        "instances": len(files),
        "study_uid": work.stored_study_uid,
        "series_uid": work.stored_series_uid,
    }
    jobs.succeed(db, job, result, message=f"imported {len(files)} instances as scan {scan.id} ({scan.case_id})")
    return scan
