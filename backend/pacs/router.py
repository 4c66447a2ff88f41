"""PACS endpoints: a project's DICOMweb source, QIDO-RS search, retrieval of a series into a scan, STOW-RS of a
version as DICOM SEG, and the identifier map of de-identification."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query, Response, status

from backend.auth.dependencies import DbSession, SettingsDep
from backend.flows import pacs as pacs_flows
from backend.models import PacsSource
from backend.pacs import service as pacs
from backend.pacs.dependencies import (
    IDENTITY_PERMISSION,
    PacsProjectAccess,
    PacsScanAccess,
    require_pacs_project,
    require_pacs_scan,
)
from backend.pacs.schemas import (
    IdentityOut,
    IdentityPage,
    PacsSourceIn,
    PacsSourceOut,
    RetrieveOut,
    RetrieveRequest,
    SeriesOut,
    StowOut,
    StowRequest,
    StudyOut,
    StudyPage,
    StudySeriesOut,
)

router = APIRouter(tags=["pacs"])

_UID = r"^[0-9]+(\.[0-9]+)*$"
# The PACS is asked during these requests: its silence or failure is a 504 with the one error body.
_PACS_DOWN: dict[int | str, dict[str, object]] = {
    504: {
        "description": "The PACS cannot be reached, did not answer in time or failed (HTTP 5xx); nothing changed.",
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    }
}
_NO_BACKSLASH = r"^[^\\]*$"


def source_out(source: PacsSource) -> PacsSourceOut:
    """Serialise a source without its password."""
    return PacsSourceOut(
        project_id=source.project_id,
        base_url=source.base_url,
        username=source.username,
        has_password=source.secret is not None,
        deidentify=source.deidentify,
        updated_at=source.updated_at,
    )


@router.get("/api/projects/{project_id}/pacs", response_model=PacsSourceOut)
def get_source(db: DbSession, access: PacsProjectAccess = require_pacs_project()) -> PacsSourceOut:
    """The project's DICOMweb source (leads and admins); 404 when none is configured. The password is never
    returned, only whether one is stored."""
    return source_out(pacs_flows.get_source(db, access.project))


@router.put("/api/projects/{project_id}/pacs", response_model=PacsSourceOut)
def put_source(
    body: PacsSourceIn, db: DbSession, settings: SettingsDep, access: PacsProjectAccess = require_pacs_project()
) -> PacsSourceOut:
    """Set the project's DICOMweb source (leads and admins). The URL's host must be on the server's allow-list
    (`MASKLOOP_PACS_ALLOWED_HOSTS`, set by the platform administrator): any other host is refused with **403** and
    nothing is stored; a URL that is not http(s), or carries credentials, a query or a fragment, is **422**. The
    password is stored encrypted (Fernet) and never returned."""
    source = pacs_flows.configure_source(
        db,
        settings,
        access.project,
        actor=access.user,
        base_url=body.base_url,
        username=body.username,
        password=body.password,
        deidentify=body.deidentify,
    )
    return source_out(source)


@router.get("/api/projects/{project_id}/pacs/studies", response_model=StudyPage, responses=_PACS_DOWN)
def search_studies(
    db: DbSession,
    settings: SettingsDep,
    patient_id: Annotated[str | None, Query(max_length=64, pattern=_NO_BACKSLASH)] = None,
    patient_name: Annotated[str | None, Query(max_length=64, pattern=_NO_BACKSLASH)] = None,
    study_date: Annotated[
        str | None,
        Query(pattern=r"^(\d{8})?-?(\d{8})?$", max_length=17, description="YYYYMMDD or a range YYYYMMDD-YYYYMMDD"),
    ] = None,
    modality: Annotated[str | None, Query(pattern=r"^[A-Z0-9]{1,16}$", description="modality in study")] = "CT",
    accession: Annotated[str | None, Query(max_length=16, pattern=_NO_BACKSLASH)] = None,
    description: Annotated[str | None, Query(max_length=64, pattern=_NO_BACKSLASH)] = None,
    offset: Annotated[int, Query(ge=0, le=100_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    access: PacsProjectAccess = require_pacs_project(),
) -> StudyPage:
    """Search the project's PACS for studies over QIDO-RS (leads and admins): patient id or name, study date (or
    range), modality in study (default CT), accession number, study description. Names and descriptions match
    anywhere (spaces too match as wildcards) unless a `*`/`?` wildcard is given; the PACS decides the case
    sensitivity (most match exactly). At most `MASKLOOP_PACS_SEARCH_LIMIT` studies. A PACS that cannot be reached
    answers **504**; one that refuses the request or the credentials **422**."""
    query = pacs.StudyQuery(patient_id, patient_name, study_date or None, modality or None, accession, description)
    found = pacs_flows.search_studies(db, settings, access.project, query, limit=limit, offset=offset)
    return StudyPage(
        items=[StudyOut(**vars(study)) for study in found], offset=offset, limit=min(limit, settings.pacs_search_limit)
    )


@router.get(
    "/api/projects/{project_id}/pacs/studies/{study_uid}/series", response_model=StudySeriesOut, responses=_PACS_DOWN
)
def study_series(
    db: DbSession,
    settings: SettingsDep,
    study_uid: Annotated[str, Path(max_length=64, pattern=_UID)],
    phase: Annotated[Literal["non-contrast", "arterial", "venous", "delay"] | None, Query()] = None,
    access: PacsProjectAccess = require_pacs_project(),
) -> StudySeriesOut:
    """The series of a study on the project's PACS with the choice rules' verdict (leads and admins): which may be
    imported (axial CT volumes, no localizers), which one a retrieval without `series_uid` takes (the preferred
    phase, then original images, thinnest slices, most slices), and the scan already holding each."""
    lines = pacs_flows.study_series(db, settings, access.project, study_uid, phase=phase)
    items = []
    for line in lines:
        info, reason = line.info, line.info.refusal()
        items.append(
            SeriesOut(
                series_uid=info.series_uid,
                modality=info.modality,
                number=info.number,
                description=info.description,
                instances=info.instances,
                image_type=list(info.image_type),
                axial=None if info.axial is None else reason is None or not reason.startswith("not axial"),
                slice_thickness_mm=info.thickness,
                phase=info.phase,
                eligible=reason is None,
                reason=reason,
                chosen=line.chosen,
                scan_id=line.scan_id,
            )
        )
    return StudySeriesOut(study_uid=study_uid, items=items)


@router.post(
    "/api/projects/{project_id}/pacs/retrievals",
    response_model=RetrieveOut,
    status_code=status.HTTP_201_CREATED,
    responses={
        200: {"model": RetrieveOut, "description": "The series is already a scan, or being retrieved."},
        **_PACS_DOWN,
    },
)
def retrieve(
    body: RetrieveRequest,
    response: Response,
    db: DbSession,
    settings: SettingsDep,
    access: PacsProjectAccess = require_pacs_project(),
) -> RetrieveOut:
    """Retrieve one series of a study into a scan over WADO-RS, as a `cpu` job with progress (leads and admins).

    Without `series_uid` the choice rules pick the series; a study with no axial CT series is refused with **422**
    listing each series and why, and nothing is queued. Series are deduplicated by SeriesInstanceUID: one already
    in the project answers **200** with its scan, one being retrieved **200** with its job. The job decodes the
    series with the DICOM loader (a missing slice fails it, naming the instance, and nothing is stored) and maps
    site (InstitutionName), manufacturer, model, sex, age and contrast phase; the scan keeps the study and series
    UIDs (research UIDs when the project de-identifies)."""
    launched = pacs_flows.launch_retrieval(
        db,
        settings,
        access.project,
        actor=access.user,
        study_uid=body.study_uid,
        series_uid=body.series_uid,
        phase=body.phase,
    )
    if not launched.created:
        response.status_code = status.HTTP_200_OK
    outcome: Literal["queued", "in_progress", "exists"] = (
        "queued" if launched.created else ("exists" if launched.scan_id is not None else "in_progress")
    )
    info = launched.series
    return RetrieveOut(
        outcome=outcome,
        series_uid=info.series_uid,
        series_number=info.number,
        instances=info.instances,
        phase=info.phase,
        job_id=launched.job.id if launched.job is not None else None,
        scan_id=launched.scan_id,
    )


@router.post("/api/scans/{scan_id}/pacs/stow", response_model=StowOut, status_code=status.HTTP_202_ACCEPTED)
def stow(
    body: StowRequest, db: DbSession, settings: SettingsDep, access: PacsScanAccess = require_pacs_scan()
) -> StowOut:
    """Send a version of the scan (default: its approved version; **409** when it has none) to the project's PACS
    as DICOM SEG over STOW-RS, as a `cpu` job (leads and admins). The SEG references the scan's source series
    (its original UIDs when the scan came from DICOM; for a NIfTI scan, its CT is first stored as a series) and
    holds one segment per non-empty structure, overlaps kept. The job's result names the SEG's UIDs."""
    job = pacs_flows.launch_stow(db, settings, access.scan, actor=access.user, version_id=body.version_id)
    return StowOut(job_id=job.id, scan_id=access.scan.id, version_id=int(job.params["version_id"]))


@router.get("/api/projects/{project_id}/pacs/identities", response_model=IdentityPage)
def identity_map(
    db: DbSession,
    kind: Annotated[Literal["patient", "study", "series"] | None, Query()] = None,
    q: Annotated[str | None, Query(max_length=200, description="an original or research identifier")] = None,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    access: PacsProjectAccess = require_pacs_project(IDENTITY_PERMISSION),
) -> IdentityPage:
    """The map of original to research identifiers of a de-identifying project (the project's leads only): each
    patient id, study and series UID that de-identification replaced on intake, and its replacement."""
    rows, total = pacs_flows.identity_map(db, access.project, kind=kind, search=q, offset=offset, limit=limit)
    return IdentityPage(
        items=[
            IdentityOut(kind=r.kind, original=r.original, research=r.research, created_at=r.created_at) for r in rows
        ],
        total=total,
    )
