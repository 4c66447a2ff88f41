"""PACS over DICOMweb: `client` (the host allow-list, requests, a PACS's errors as domain errors), `sources` (a
project's source, its password encrypted), `search` (QIDO-RS), `series` (what a series is, the choice rules,
metadata), `retrieval` (WADO-RS into a scan as a job), `stow` (STOW-RS of a version as DICOM SEG as a job),
`deid` (PS3.15 Basic Profile de-identification) and `identities` (the original -> research identifier map).
The names below are the public surface."""

from backend.pacs.service import retrieval, stow
from backend.pacs.service.client import (
    Endpoint,
    HostNotAllowed,
    PacsRefused,
    PacsUnreachable,
    check_url,
    connect,
    parse_allow_list,
)
from backend.pacs.service.deid import Pseudonyms, deidentify
from backend.pacs.service.identities import list_identities, original_of
from backend.pacs.service.search import StudyQuery, StudySummary, search_studies, study_series
from backend.pacs.service.series import PHASES, SeriesInfo, choose, phase_of
from backend.pacs.service.sources import configure, endpoint_of, find_source, get_source

__all__ = [
    "PHASES",
    "Endpoint",
    "HostNotAllowed",
    "PacsRefused",
    "PacsUnreachable",
    "Pseudonyms",
    "SeriesInfo",
    "StudyQuery",
    "StudySummary",
    "check_url",
    "choose",
    "configure",
    "connect",
    "deidentify",
    "endpoint_of",
    "find_source",
    "get_source",
    "list_identities",
    "original_of",
    "parse_allow_list",
    "phase_of",
    "retrieval",
    "search_studies",
    "stow",
    "study_series",
]
