"""PACS use cases: configure a project's DICOMweb source, search it (QIDO-RS), retrieve a series into a scan and
send a version back as DICOM SEG (both `pacs` jobs on the `cpu` queue, sent after the commit). Routers and the
command line call these; the worker runs the jobs (worker/pipelines/pacs_retrieve.py)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from backend.core.config import Settings
from backend.core.db import declare_write_intent
from backend.models import Job, PacsIdentity, PacsSource, Project, Scan, User
from backend.pacs import service as pacs
from backend.pacs.service import identities, retrieval
from backend.pacs.service import stow as stow_service


def configure_source(
    db: Session,
    settings: Settings,
    project: Project,
    *,
    actor: User | None,
    base_url: str,
    username: str | None,
    password: str | None,
    deidentify: bool,
) -> PacsSource:
    """Create or replace the project's DICOMweb source (its host on the allow-list, the password encrypted)."""
    declare_write_intent(db)
    source = pacs.configure(
        db, settings, project, actor, base_url=base_url, username=username, password=password, deidentify=deidentify
    )
    db.commit()
    return source


def get_source(db: Session, project: Project) -> PacsSource:
    """The project's source (404 when none is configured)."""
    return pacs.get_source(db, project.id)


def search_studies(
    db: Session, settings: Settings, project: Project, query: pacs.StudyQuery, *, limit: int, offset: int = 0
) -> list[pacs.StudySummary]:
    """Search the project's PACS for studies (QIDO-RS); at most the configured search limit."""
    source = pacs.get_source(db, project.id)
    endpoint = pacs.endpoint_of(source, settings)
    limit = min(limit, settings.pacs_search_limit)
    return pacs.search_studies(endpoint, settings.pacs_allowed_hosts, query, limit=limit, offset=offset)


@dataclass(frozen=True)
class SeriesLine:
    """A series of a study with the choice rules' verdict and the scan already holding it, if any."""

    info: pacs.SeriesInfo
    chosen: bool
    scan_id: int | None


def study_series(
    db: Session, settings: Settings, project: Project, study_uid: str, *, phase: str | None = None
) -> list[SeriesLine]:
    """The series of one study on the project's PACS, the one a retrieval would import flagged."""
    source = pacs.get_source(db, project.id)
    endpoint = pacs.endpoint_of(source, settings)
    client = pacs.connect(endpoint, settings.pacs_allowed_hosts)
    infos = pacs.study_series(client, endpoint, study_uid, limit=settings.pacs_search_limit)
    chosen = pacs.choose(infos, phase)
    names = identities.pseudonyms(source)
    return [
        SeriesLine(
            info,
            chosen is not None and info.series_uid == chosen.series_uid,
            retrieval.scan_of_series(db, project.id, {info.series_uid, names.uid(info.series_uid)}),
        )
        for info in infos
    ]


def launch_retrieval(
    db: Session,
    settings: Settings,
    project: Project,
    *,
    actor: User | None,
    study_uid: str,
    series_uid: str | None = None,
    phase: str | None = None,
) -> retrieval.Retrieval:
    """Queue the retrieval of a study's series into a scan (one job), unless the series is here or on its way."""
    declare_write_intent(db)
    launched = retrieval.launch(db, settings, project, actor, study_uid=study_uid, series_uid=series_uid, phase=phase)
    db.commit()
    return launched


def launch_stow(db: Session, settings: Settings, scan: Scan, *, actor: User | None, version_id: int | None) -> Job:
    """Queue the STOW of a version (default: the approved one) of a scan to its project's PACS as DICOM SEG."""
    declare_write_intent(db)
    job = stow_service.launch(db, settings, scan, actor, version_id)
    db.commit()
    return job


def identity_map(
    db: Session, project: Project, *, kind: str | None, search: str | None, offset: int, limit: int
) -> tuple[list[PacsIdentity], int]:
    """A page of the project's original -> research identifier map (the caller checked the lead permission)."""
    return pacs.list_identities(db, project.id, kind=kind, search=search, offset=offset, limit=limit)
