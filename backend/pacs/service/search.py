"""QIDO-RS: the studies of a PACS matching a search (patient, study date, modality, accession, description) and
the series of one study, each with what the choice rules make of it."""

from __future__ import annotations

import re
from dataclasses import dataclass

from dicomweb_client import DICOMwebClient

from backend.core.errors import NotFound
from backend.pacs.service import series as series_rules
from backend.pacs.service.client import Endpoint, answering, qido
from backend.pacs.service.series import SeriesInfo, from_json, text


@dataclass(frozen=True)
class StudyQuery:
    """What to search for; every field is optional (an empty query lists the newest studies the PACS returns)."""

    patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    modality: str | None = "CT"
    accession: str | None = None
    description: str | None = None

    def filters(self) -> dict[str, str]:
        """The QIDO-RS matching keys (descriptions and names match anywhere unless a wildcard is given)."""
        out: dict[str, str] = {}
        for key, value, wild in (
            ("PatientID", self.patient_id, False),
            ("PatientName", self.patient_name, True),
            ("StudyDate", self.study_date, False),
            ("ModalitiesInStudy", self.modality, False),
            ("AccessionNumber", self.accession, False),
            ("StudyDescription", self.description, True),
        ):
            if value and wild:
                # Matched anywhere; spaces and name separators match as wildcards too (portable across servers).
                words = "*".join(w for w in re.split(r"[\s^]+", value) if w)
                out[key] = words if any(c in value for c in "*?") else f"*{words}*"
            elif value:
                out[key] = value
        return out


@dataclass(frozen=True)
class StudySummary:
    """One study as a search lists it."""

    study_uid: str
    patient_id: str
    patient_name: str
    patient_sex: str
    patient_birth_date: str
    study_date: str
    accession: str
    description: str
    modalities: list[str]
    series: int | None
    instances: int | None


def _count(value: object) -> int | None:
    try:
        return int(str(value)) if value not in (None, "") else None
    except ValueError:
        return None


def search_studies(
    endpoint: Endpoint, allowed_hosts: str, query: StudyQuery, *, limit: int, offset: int = 0
) -> list[StudySummary]:
    """The studies matching the query (QIDO-RS /studies), at most `limit` from `offset`."""
    params = {**query.filters(), "limit": str(limit), "offset": str(offset)}
    params["includefield"] = ",".join(series_rules.STUDY_FIELDS)
    with answering(endpoint, "a study search"):
        found = qido(endpoint, allowed_hosts, "studies", params)
    out = []
    for item in found[:limit]:
        ds = from_json(item)
        modalities = text(ds, "ModalitiesInStudy")
        out.append(
            StudySummary(
                study_uid=text(ds, "StudyInstanceUID"),
                patient_id=text(ds, "PatientID"),
                patient_name=text(ds, "PatientName"),
                patient_sex=text(ds, "PatientSex"),
                patient_birth_date=text(ds, "PatientBirthDate"),
                study_date=text(ds, "StudyDate"),
                accession=text(ds, "AccessionNumber"),
                description=text(ds, "StudyDescription"),
                modalities=[m for m in modalities.split("\\") if m],
                series=_count(ds.get("NumberOfStudyRelatedSeries")),
                instances=_count(ds.get("NumberOfStudyRelatedInstances")),
            )
        )
    return out


def study_series(client: DICOMwebClient, endpoint: Endpoint, study_uid: str, *, limit: int) -> list[SeriesInfo]:
    """The series of a study (QIDO-RS), each with one sample instance's orientation, thickness and type."""
    with answering(endpoint, f"the series of study {study_uid}"):
        found = client.search_for_series(study_uid, fields=list(series_rules.SERIES_FIELDS), limit=limit)
    if not found:
        raise NotFound(f"study {study_uid} has no series on the PACS at {endpoint.host} (or does not exist)")
    out = []
    for item in found[:limit]:
        ds = from_json(item)
        series_uid = text(ds, "SeriesInstanceUID")
        sample = None
        if text(ds, "Modality").upper() == "CT":
            with answering(endpoint, f"a slice of series {series_uid}"):
                samples = client.search_for_instances(
                    study_uid, series_uid, fields=list(series_rules.INSTANCE_FIELDS), limit=1
                )
            sample = from_json(samples[0]) if samples else None
        out.append(series_rules.series_info(study_uid, ds, sample))
    return sorted(out, key=lambda s: (s.number if s.number is not None else 1 << 30, s.series_uid))
