"""Request and response bodies of the PACS endpoints (DICOMweb source, QIDO-RS search, retrieval, STOW)."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from backend.core.ids import Id

_UID = r"^[0-9]+(\.[0-9]+)*$"
Phase = Literal["non-contrast", "arterial", "venous", "delay"]


class PacsSourceIn(BaseModel):
    """A project's DICOMweb server. Its host must be on the server's allow-list (MASKLOOP_PACS_ALLOWED_HOSTS)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "base_url": "https://pacs.example.org/dicom-web",
                    "username": "maskloop",
                    "password": "s3cret",
                    "deidentify": True,
                }
            ]
        }
    )

    base_url: str = Field(min_length=1, max_length=1000, description="DICOMweb root (QIDO, WADO and STOW under it).")
    username: str | None = Field(default=None, max_length=200, description="HTTP basic user; empty: none.")
    password: str | None = Field(
        default=None,
        max_length=1000,
        description="HTTP basic password, stored encrypted and never returned. Omitted or null: keep the stored one "
        "(unless the username changes); '': remove it.",
    )
    deidentify: StrictBool = Field(
        default=False,
        description="De-identify intake (PS3.15 Basic Profile, keeping sex, age and institution name) and the CT "
        "series maskloop writes; the original -> research identifier map is kept for the project's leads.",
    )


class PacsSourceOut(BaseModel):
    """A project's DICOMweb server as its leads see it (the password never leaves the server)."""

    project_id: int
    base_url: str
    username: str | None
    has_password: bool
    deidentify: bool
    updated_at: datetime


class StudyOut(BaseModel):
    """One study a QIDO-RS search found (identifying data of the PACS, shown to the project's leads only)."""

    study_uid: str
    patient_id: str
    patient_name: str
    patient_sex: str
    patient_birth_date: str
    study_date: str
    accession: str
    description: str
    modalities: list[str]
    series: int | None = Field(description="Series in the study, as the PACS counts them.")
    instances: int | None


class StudyPage(BaseModel):
    """Studies matching a search, in the PACS's order."""

    items: list[StudyOut]
    offset: int
    limit: int


class SeriesOut(BaseModel):
    """One series of a study and what the choice rules make of it."""

    series_uid: str
    modality: str
    number: int | None
    description: str
    instances: int
    image_type: list[str]
    axial: bool | None = Field(description="Slices axial (normal within ~25° of head-foot); null: unknown.")
    slice_thickness_mm: float | None
    phase: str | None = Field(description="non-contrast, arterial, venous, delay, 'contrast' (phase unknown) or null.")
    eligible: bool
    reason: str | None = Field(description="Why the choice rules pass over it (null when eligible).")
    chosen: bool = Field(description="The series a retrieval of the study without series_uid imports.")
    scan_id: int | None = Field(description="The project's scan already holding it (deduplicated by series UID).")


class StudySeriesOut(BaseModel):
    """The series of one study, the chosen one flagged."""

    study_uid: str
    items: list[SeriesOut]


class RetrieveRequest(BaseModel):
    """Import one series of a study: the one named, or the one the choice rules pick (axial CT, the preferred phase
    when given, then original images, thinnest slices, most slices)."""

    model_config = ConfigDict(
        json_schema_extra={"examples": [{"study_uid": "1.2.840.113619.2.55.3", "phase": "venous"}]}
    )

    study_uid: str = Field(min_length=1, max_length=64, pattern=_UID)
    series_uid: str | None = Field(default=None, min_length=1, max_length=64, pattern=_UID)
    phase: Phase | None = Field(default=None, description="Preferred contrast phase when the rules choose.")


class RetrieveOut(BaseModel):
    """What a retrieval request did: queued a job (201), or found the series already here or being fetched (200)."""

    outcome: Literal["queued", "in_progress", "exists"]
    series_uid: str = Field(description="The series chosen or named (the PACS's UID).")
    series_number: int | None
    instances: int
    phase: str | None
    job_id: int | None = Field(description="The retrieval job (follow it at GET /api/jobs/{id}); null: it exists.")
    scan_id: int | None = Field(description="The scan already holding the series (outcome 'exists').")


class StowRequest(BaseModel):
    """Send a version of the scan to the project's PACS as DICOM SEG (default: its approved version)."""

    version_id: Id | None = None


class StowOut(BaseModel):
    """The queued STOW job (follow it at GET /api/jobs/{id}; its result names the SEG's UIDs once stored)."""

    job_id: int
    scan_id: int
    version_id: int


class IdentityOut(BaseModel):
    """One original identifier of a de-identifying project and the research identifier that replaced it."""

    kind: Literal["patient", "study", "series"]
    original: str
    research: str
    created_at: datetime


class IdentityPage(BaseModel):
    """A page of the project's identifier map."""

    items: list[IdentityOut]
    total: int
