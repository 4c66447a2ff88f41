"""What a series is, from its QIDO-RS answer or its header: CT or not, axial or not, slice thickness, contrast phase;
the rules that pick the series to import from a study; a header mapped to maskloop's scan metadata.

Choice: among a study's series, those that can be imported are CT, not a localizer (scout, topogram), axial (the
slice normal within ~25° of the patient's head-foot axis) and hold at least two slices. The preferred phase (when
asked) comes first, then original images before derived ones (reformats), then the thinnest slices, then the most
slices, then the lowest series number. The phase is read from the series description (arterial, portal venous,
delayed, non-contrast in their usual spellings and abbreviations); without one there, a Contrast/Bolus Agent makes
it 'contrast' (contrast-enhanced, phase unknown) and no agent leaves it unknown.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any

from pydicom.dataset import Dataset

PHASES = ("non-contrast", "arterial", "venous", "delay")
_PHASE_PATTERNS = (
    ("non-contrast", r"non[\s_-]?contrast|without\s+contrast|w/o|\bnative\b|\bplain\b|unenhanced|\bnc\b"),
    ("non-contrast", r"pre[\s_-]?contrast"),
    ("arterial", r"arterial|\bart\b|\bcta\b|angio"),
    ("venous", r"venous|portal|\bpv\b|\bvp\b|\bpvp\b"),
    ("delay", r"delay|delayed|excretory|urograph|\blate\b"),
)  # fmt: skip
_LOCALIZER = re.compile(r"scout|topogram|localizer|localiser|surview|scanogram", re.IGNORECASE)
_AXIAL_MIN_COSINE = 0.9
# Study-level attributes a search returns (patient, date, accession, description, modalities, counts).
STUDY_FIELDS = (
    "PatientID", "PatientName", "PatientSex", "PatientBirthDate", "StudyInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "StudyDescription", "ModalitiesInStudy", "NumberOfStudyRelatedSeries",
    "NumberOfStudyRelatedInstances", "InstitutionName",
)  # fmt: skip
SERIES_FIELDS = (
    "SeriesInstanceUID", "Modality", "SeriesNumber", "SeriesDescription", "NumberOfSeriesRelatedInstances",
    "BodyPartExamined",
)  # fmt: skip
# Instance-level attributes of one sample slice per series: its orientation, thickness, image type, contrast.
INSTANCE_FIELDS = ("ImageType", "ImageOrientationPatient", "SliceThickness", "ContrastBolusAgent", "Rows", "Columns")


def from_json(item: Mapping[str, Any]) -> Dataset:
    """A QIDO-RS answer item (DICOM JSON) as a dataset; bulk data is never fetched."""
    return Dataset.from_json(dict(item), bulk_data_uri_handler=lambda *_: b"")


def text(ds: Dataset, keyword: str) -> str:
    """An attribute as trimmed text ('' when absent or empty); several values joined by '\\'."""
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return "\\".join(str(v) for v in value).strip()
    return str(value).strip()


def phase_of(description: str, contrast_agent: str = "") -> str | None:
    """The contrast phase a series description names, else 'contrast' when an agent is recorded, else None."""
    lowered = description.lower()
    for phase, pattern in _PHASE_PATTERNS:
        if re.search(pattern, lowered):
            return phase
    return "contrast" if contrast_agent.strip() else None


def _floats(value: Any) -> list[float] | None:
    try:
        out = [float(v) for v in value]
    except (TypeError, ValueError):
        return None
    return out if all(math.isfinite(v) for v in out) else None


def axial_cosine(orientation: Any) -> float | None:
    """|z| of the slice normal of an ImageOrientationPatient (1 for axial slices); None when unusable."""
    values = _floats(orientation) if orientation is not None else None
    if values is None or len(values) != 6:
        return None
    r, c = values[:3], values[3:]
    n = (r[1] * c[2] - r[2] * c[1], r[2] * c[0] - r[0] * c[2], r[0] * c[1] - r[1] * c[0])
    norm = math.sqrt(sum(v * v for v in n))
    return abs(n[2]) / norm if norm > 0 else None


@dataclass(frozen=True)
class SeriesInfo:
    """A series of a study as the choice rules see it."""

    study_uid: str
    series_uid: str
    modality: str
    number: int | None
    description: str
    instances: int
    image_type: tuple[str, ...] = ()
    axial: float | None = None
    thickness: float | None = None
    contrast_agent: str = ""

    @property
    def phase(self) -> str | None:
        """The contrast phase the series' description or contrast tag implies."""
        return phase_of(self.description, self.contrast_agent)

    @property
    def original(self) -> bool:
        """Whether its images are ORIGINAL (not derived reformats)."""
        return not self.image_type or self.image_type[0].upper() == "ORIGINAL"

    def refusal(self) -> str | None:
        """Why the choice rules pass over this series (None: it may be imported)."""
        if self.modality.upper() != "CT":
            return f"modality {self.modality or 'unknown'}, not CT"
        if "LOCALIZER" in (t.upper() for t in self.image_type) or _LOCALIZER.search(self.description):
            return "a localizer (scout) image"
        if self.instances < 2:
            return f"{self.instances} slice(s): not a volume"
        if self.axial is None:
            return "no usable ImageOrientationPatient"
        if self.axial < _AXIAL_MIN_COSINE:
            return "not axial (reformatted or tilted slices)"
        return None


def series_info(study_uid: str, series: Dataset, sample: Dataset | None) -> SeriesInfo:
    """A series from its QIDO-RS series answer and one sample instance's answer (or None)."""
    number = series.get("SeriesNumber")
    thickness = _floats([sample.get("SliceThickness")]) if sample is not None and sample.get("SliceThickness") else None
    return SeriesInfo(
        study_uid=study_uid,
        series_uid=text(series, "SeriesInstanceUID"),
        modality=text(series, "Modality"),
        number=int(number) if number not in (None, "") else None,
        description=text(series, "SeriesDescription"),
        instances=int(series.get("NumberOfSeriesRelatedInstances") or 0),
        image_type=tuple(text(sample, "ImageType").split("\\"))
        if sample is not None and text(sample, "ImageType")
        else (),
        axial=axial_cosine(sample.get("ImageOrientationPatient")) if sample is not None else None,
        thickness=thickness[0] if thickness and thickness[0] > 0 else None,
        contrast_agent=text(sample, "ContrastBolusAgent") if sample is not None else "",
    )


def choose(candidates: Sequence[SeriesInfo], phase: str | None = None) -> SeriesInfo | None:
    """The series to import from a study by the rules above (None when no series qualifies)."""
    eligible = [s for s in candidates if s.refusal() is None]
    if not eligible:
        return None

    def rank(s: SeriesInfo) -> tuple[int, int, float, int, int]:
        return (
            0 if phase is None or s.phase == phase else 1,
            0 if s.original else 1,
            s.thickness if s.thickness is not None else math.inf,
            -s.instances,
            s.number if s.number is not None else 1 << 30,
        )

    return min(eligible, key=rank)


def _age(ds: Dataset) -> int | None:
    """Age in years from PatientAge ('063Y', '006M', '010W', '003D'), else from the birth and study dates."""
    match = re.fullmatch(r"(\d{1,3})([DWMY])", text(ds, "PatientAge").upper())
    if match:
        value, unit = int(match.group(1)), match.group(2)
        return value if unit == "Y" else 0
    born, studied = text(ds, "PatientBirthDate"), text(ds, "StudyDate") or text(ds, "SeriesDate")
    try:
        b = date(int(born[:4]), int(born[4:6]), int(born[6:8]))
        s = date(int(studied[:4]), int(studied[4:6]), int(studied[6:8]))
    except (ValueError, IndexError):
        return None
    years = s.year - b.year - ((s.month, s.day) < (b.month, b.day))
    return years if 0 <= years <= 130 else None


# Header attributes kept in a scan's raw metadata (when present and not removed by de-identification).
RAW_KEYWORDS = (
    "Modality", "BodyPartExamined", "SeriesNumber", "SeriesDescription", "StudyDescription", "StudyDate",
    "PatientID", "AccessionNumber", "ContrastBolusAgent", "KVP", "ConvolutionKernel", "SliceThickness",
    "PixelSpacing", "InstitutionName", "Manufacturer", "ManufacturerModelName", "PatientSex", "PatientAge",
)  # fmt: skip


def scan_metadata(original: Dataset, stored: Dataset) -> dict[str, str]:
    """A scan's raw metadata from a series header: the fields maskloop normalises (site from InstitutionName,
    manufacturer, model, sex, age, phase: read from the original header) and the header attributes of `stored` (the
    de-identified header when the project de-identifies its intake, else the original)."""
    phase = phase_of(text(original, "SeriesDescription"), text(original, "ContrastBolusAgent"))
    age = _age(original)
    fields = {
        "site": text(original, "InstitutionName")[:100],
        "manufacturer": text(original, "Manufacturer"),
        "manufacturer model": text(original, "ManufacturerModelName"),
        "sex": text(original, "PatientSex"),
        "age": str(age) if age is not None else "",
        "phase": phase if phase in PHASES else "",
        "contrast": "yes" if phase not in (None, "non-contrast") else ("no" if phase else ""),
    }
    raw = {f"dicom {keyword}": text(stored, keyword)[:200] for keyword in RAW_KEYWORDS}
    return {key: value for key, value in {**fields, **raw}.items() if value}
