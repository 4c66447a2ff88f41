"""A DICOM SEG as a label version: the scan it segments (by referenced series UID, or the one given, matched by
geometry) and which structure of the schema each segment is (by code, then by name, or an explicit mapping)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.errors import InvalidInput
from backend.imaging import dicom_codes
from backend.imaging.dicom_seg_read import ParsedSeg, SegmentInfo
from backend.models import Project, Scan, Structure
from backend.projects import service as projects


def find_scan_by_series(db: Session, project: Project, parsed: ParsedSeg) -> Scan:
    """The project's scan of the series the SEG references; InvalidInput naming the series when none is."""
    if not parsed.series_uids:
        raise InvalidInput(
            f"{parsed.name}: the SEG names no referenced series; import it for a given scan (matched by geometry)",
            file=parsed.name,
        )
    scan = db.scalars(
        select(Scan)
        .where(Scan.project_id == project.id, Scan.source_series_uid.in_(parsed.series_uids))
        .order_by(Scan.id)
        .limit(1)
    ).first()
    if scan is None:
        raise InvalidInput(
            f"{parsed.name}: no scan of project {project.slug!r} comes from the series the SEG references "
            f"({', '.join(parsed.series_uids)}); import the CT series first, or import the SEG for a given scan",
            file=parsed.name,
            referenced_series=parsed.series_uids,
        )
    return scan


def check_scan(scan: Scan, parsed: ParsedSeg) -> None:
    """Refuse a SEG of another series than the scan's (a scan without source UIDs is matched by geometry alone)."""
    if scan.source_series_uid and parsed.series_uids and scan.source_series_uid not in parsed.series_uids:
        raise InvalidInput(
            f"{parsed.name}: the SEG segments series {', '.join(parsed.series_uids)}, but scan {scan.case_id} "
            f"comes from series {scan.source_series_uid}",
            file=parsed.name,
            referenced_series=parsed.series_uids,
            scan_series=scan.source_series_uid,
        )


def _describe(segment: SegmentInfo) -> str:
    """A segment as an error lists it: number, label and code."""
    code = segment.code
    if code is None:
        return f"{segment.number} {segment.label!r} (no code)"
    side = f" {code.modifier.meaning}" if code.modifier is not None else ""
    return f"{segment.number} {segment.label!r} ({code.type.scheme} {code.type.value} {code.type.meaning}{side})"


def schema_codes(structures: Sequence[Structure]) -> list[dicom_codes.NamedCode]:
    """The schema's structures with their codes (stored, else the standard table's, else private)."""
    return [
        dicom_codes.NamedCode(
            s.name, tuple(s.aliases), dicom_codes.structure_code(s.name, s.code, lesion=s.group == "lesion")
        )
        for s in structures
    ]


def map_segments(
    db: Session, project_id: int, parsed: ParsedSeg, mapping: Mapping[str, str] | None = None
) -> dict[int, str]:
    """{segment number: structure name} for every segment of the SEG.

    An explicit `mapping` (segment label or number -> structure name or alias) comes first; other segments are
    matched by code, then by name (`dicom_codes.match_segment`). Segments matching nothing refuse the import with
    their list (`unknown_segments`); several segments may map to one structure (their masks are merged)."""
    structures = projects.structures_of(db, project_id, with_codes=True)
    named = schema_codes(structures)
    given = dict(mapping or {})
    labels = {s.label for s in parsed.segments} | {str(s.number) for s in parsed.segments}
    stray = sorted(key for key in given if key not in labels)
    if stray:
        raise InvalidInput(
            f"{parsed.name}: the mapping names segments the SEG does not hold: {', '.join(stray)}",
            file=parsed.name,
            segments=[s.label for s in parsed.segments],
        )
    out: dict[int, str] = {}
    unknown: list[SegmentInfo] = []
    for segment in parsed.segments:
        target = given.get(str(segment.number), given.get(segment.label))
        name = (
            projects.find_structure(structures, target).name
            if target
            else dicom_codes.match_segment(segment.coding(), named)
        )
        if name is None:
            unknown.append(segment)
        else:
            out[segment.number] = name
    if unknown:
        listing = "; ".join(_describe(s) for s in unknown)
        raise InvalidInput(
            f"{parsed.name}: {len(unknown)} segment(s) match no structure of the project's schema by code or name: "
            f"{listing}. Map them to structures (mapping: segment label -> structure) or add them to the schema",
            file=parsed.name,
            unknown_segments=[
                {
                    "number": s.number,
                    "label": s.label,
                    "code": s.code.type.to_json() if s.code is not None else None,
                    "modifier": s.code.modifier.to_json() if s.code is not None and s.code.modifier else None,
                }
                for s in unknown
            ],
            known=[s.name for s in structures],
        )
    return out
