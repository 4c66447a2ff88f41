"""STOW-RS of a label version as a DICOM SEG to the project's PACS, as a `pacs` job on the `cpu` queue.

The SEG references the series the scan came from. A scan retrieved from (or uploaded as) DICOM is referenced by
its original UIDs: the slice headers are read back from the PACS (WADO-RS metadata, no pixels), checked against
the scan's grid and handed to the SEG writer, so the SEG carries the study, patient and frame of reference the PACS
already holds. In a de-identifying project this is a re-identification toward the source PACS only: the original
UIDs come from the server-side identifier map and never reach the job's parameters or result. A scan imported
from NIfTI has no DICOM original: its CT is first written as a series (backend/imaging/dicom_seg.ct_series,
deterministic UIDs per scan, de-identified when the project asks) and stored unless the PACS already holds it,
then the SEG referencing it. The SEG's UIDs derive from the version, so sending a version again replaces it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from io import BytesIO
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from backend.audit import service as audit
from backend.core.blobstore import BlobStore
from backend.core.config import Settings
from backend.core.errors import Conflict, InvalidInput, NotFound
from backend.imaging import chunks, dicom_seg, nifti
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import Job, Model, ModelVersion, Scan, ScanTask, User
from backend.pacs.service import deid, identities
from backend.pacs.service.client import Endpoint, PacsRefused, answering, connect, store
from backend.pacs.service.retrieval import client_of
from backend.pacs.service.series import from_json, text
from backend.projects import service as projects

_LPS = np.diag([-1.0, -1.0, 1.0])
_MANUAL_KINDS = ("human", "import", "fusion")
_CT_BATCH = 32


@dataclass(frozen=True)
class SegmentSource:
    """One present structure of the version: its segment description and where its mask is stored."""

    spec: dicom_seg.SegmentSpec
    manifest_digest: str


@dataclass(frozen=True)
class StowWork:
    """What a STOW job works on, read in its first transaction (no database work after it)."""

    job_id: int
    project_id: int
    scan_id: int
    version_id: int
    case_id: str
    shape: tuple[int, int, int]
    affine: np.ndarray
    image_digest: str
    endpoint: Endpoint
    allowed_hosts: str
    manual: bool
    algorithm: tuple[str, str]
    segments: tuple[SegmentSource, ...]
    # Original UIDs of the scan's DICOM series (None: the scan came from NIfTI); the scan's own UIDs for reports.
    source_study_uid: str | None
    source_series_uid: str | None
    stored_series_uid: str | None
    salt: str
    deidentify: bool


def _present(db: Session, scan: Scan, version_id: int) -> list[str]:
    version = labels.get_version(db, version_id)
    if version.scan_id != scan.id:
        raise NotFound(f"version {version_id} is not a version of scan {scan.id}")
    entries = labels.entries_by_structure(version)
    return [s.name for s in projects.structures_of(db, scan.project_id) if _filled(entries.get(s.id))]


def _filled(entry: Any) -> bool:
    return entry is not None and entry.status == "present" and bool(entry.manifest_digest) and entry.voxel_count > 0


def launch(db: Session, settings: Settings, scan: Scan, actor: User | None, version_id: int | None) -> Job:
    """Queue the STOW of a version (default: the scan's approved version) as a SEG; sent after the caller commits."""
    client_of(db, settings, scan.project_id)  # a source, on the allow-list, with a readable password
    if version_id is None:
        task = db.get(ScanTask, scan.id)
        version_id = task.approved_version_id if task is not None else None
        if version_id is None:
            raise Conflict(f"scan {scan.id} has no approved version; name the version_id to send", scan_id=scan.id)
    if not _present(db, scan, version_id):
        raise InvalidInput(f"version {version_id} has no non-empty structure: a SEG needs at least one segment")
    return jobs.create_job(
        db,
        project_id=scan.project_id,
        kind="pacs",
        created_by=actor.id if actor else None,
        params={"op": "stow", "version_id": version_id},
        scan_id=scan.id,
    )


def _algorithm(db: Session, version: Any) -> tuple[str, str]:
    if version.author_model_version_id is None:
        return "maskloop", "1"
    model_version = db.get(ModelVersion, version.author_model_version_id)
    model = db.get(Model, model_version.model_id) if model_version else None
    return (model.name if model else "model"), (f"v{model_version.number}" if model_version else "v1")


def _originals(db: Session, scan: Scan, deidentified: bool) -> tuple[str | None, str | None]:
    """The original study and series UIDs of the scan's DICOM source (research ones mapped back)."""
    study, series = scan.source_study_uid, scan.source_series_uid
    if series is None:
        return None, None
    original_series = identities.original_of(db, scan.project_id, "series", series)
    original_study = identities.original_of(db, scan.project_id, "study", study) if study else None
    if deidentified and original_series is None:
        raise InvalidInput(f"the identifier map holds no original of scan {scan.id}'s series")
    return original_study or study, original_series or series


def begin(db: Session, settings: Settings, job: Job) -> StowWork:
    """Read what the job sends: the version's present structures, the scan's grid and source, the PACS."""
    if job.scan_id is None:
        raise NotFound("the job names no scan")
    scan = db.get(Scan, job.scan_id)
    if scan is None:
        raise NotFound(f"scan {job.scan_id} no longer exists")
    version = labels.get_version(db, int(job.params["version_id"]))
    source, endpoint = client_of(db, settings, scan.project_id)
    entries = labels.entries_by_structure(version)
    segments = tuple(
        SegmentSource(
            # The schema's code of the structure (None: the standard table by name; see dicom_seg.SegmentSpec).
            dicom_seg.SegmentSpec(s.name, s.color, s.group == "lesion", s.code),
            str(entries[s.id].manifest_digest),
        )
        for s in projects.structures_of(db, scan.project_id, with_codes=True)
        if _filled(entries.get(s.id))
    )
    study, series = _originals(db, scan, source.deidentify)
    return StowWork(
        job_id=job.id,
        project_id=scan.project_id,
        scan_id=scan.id,
        version_id=version.id,
        case_id=scan.case_id,
        shape=(int(scan.shape[0]), int(scan.shape[1]), int(scan.shape[2])),
        affine=np.asarray(scan.affine, dtype=np.float64),
        image_digest=scan.image_digest,
        endpoint=endpoint,
        allowed_hosts=settings.pacs_allowed_hosts,
        manual=version.kind in _MANUAL_KINDS,
        algorithm=_algorithm(db, version),
        segments=segments,
        source_study_uid=study,
        source_series_uid=series,
        stored_series_uid=scan.source_series_uid,
        salt=source.salt,
        deidentify=source.deidentify,
    )


def _study_of(client: Any, work: StowWork, series_uid: str) -> str:
    with answering(work.endpoint, f"the study of series {work.stored_series_uid}"):
        found = client.search_for_series(search_filters={"SeriesInstanceUID": series_uid}, limit=1)
    if not found:
        raise NotFound(f"the scan's series {work.stored_series_uid} is not on the PACS at {work.endpoint.host}")
    return text(from_json(found[0]), "StudyInstanceUID")


# What the SEG writer and the grid check read of every slice header. highdicom copies the patient, study and
# equipment from the first slice only, which is converted whole; converting just these of the others is ~8x faster.
_SLICE_TAGS = frozenset(
    f"{tag:08X}"
    for tag in (
        0x00080016, 0x00080018, 0x00080060, 0x00180050, 0x00180088, 0x0020000D, 0x0020000E, 0x00200032,
        0x00200037, 0x00200052, 0x00280010, 0x00280011, 0x00280030,
    )
)  # fmt: skip


def slice_headers(items: list[dict[str, Any]]) -> list[tuple[Dataset, dict[str, Any]]]:
    """The image slices of a series' WADO-RS metadata (a SEG of the series left out), each with its JSON item:
    only the attributes the SEG's references and the grid check use (see `_SLICE_TAGS`)."""
    out = []
    for item in items:
        header = from_json({tag: value for tag, value in item.items() if tag in _SLICE_TAGS})
        if "ImagePositionPatient" in header and text(header, "Modality").upper() != "SEG":
            out.append((header, item))
    return out


def _source_headers(client: Any, work: StowWork) -> list[Dataset]:
    """The scan's original slice headers from the PACS, in the scan's slice order, checked against its grid."""
    series = str(work.source_series_uid)
    study = work.source_study_uid or _study_of(client, work, series)
    with answering(work.endpoint, f"the slice headers of series {work.stored_series_uid}"):
        items = client.retrieve_series_metadata(study, series)
    found = slice_headers(items)
    if len(found) != work.shape[2]:
        raise InvalidInput(
            f"the PACS holds {len(found)} slices of the scan's series, the scan {work.shape[2]}: the series changed"
        )
    orientation = np.array([float(v) for v in found[0][0].ImageOrientationPatient])
    normal = np.cross(orientation[:3], orientation[3:])
    found.sort(key=lambda pair: float(np.dot(normal, [float(v) for v in pair[0].ImagePositionPatient])))
    lps = _LPS @ work.affine[:3, :]
    tolerance = 0.01 + 1e-3 * float(np.abs(work.affine[:3, :3]).max())
    for k, (header, _) in enumerate(found):
        expected = lps @ np.array([0.0, 0.0, float(k), 1.0])
        position = np.array([float(v) for v in header.ImagePositionPatient])
        size = (int(header.get("Columns", 0) or 0), int(header.get("Rows", 0) or 0))
        if size != work.shape[:2] or float(np.abs(position - expected).max()) > tolerance:
            raise InvalidInput(
                f"slice {k} of the series on the PACS does not lie where the scan's slice {k} does; the SEG would "
                "be misplaced, so nothing was sent"
            )
    first = from_json(found[0][1])  # whole: the SEG's patient, study and equipment come from it
    if "PixelData" in first:
        del first.PixelData
    return [first, *(header for header, _ in found[1:])]


def _stored_count(client: Any, work: StowWork, series_uid: str) -> int:
    with answering(work.endpoint, "a series search"):
        found = client.search_for_series(search_filters={"SeriesInstanceUID": series_uid}, limit=1)
    return int(from_json(found[0]).get("NumberOfSeriesRelatedInstances") or 0) if found else 0


def _part10(ds: Dataset) -> bytes:
    """A dataset as a DICOM file (with the preamble and 'DICM' prefix PS3.10 asks for)."""
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _store(endpoint: Endpoint, allowed_hosts: str, datasets: list[Dataset], what: str) -> None:
    """STOW-RS datasets as DICOM files in one request (the body streamed, see `client.store`); refusals raise."""
    files = [_part10(ds) for ds in datasets]
    with answering(endpoint, f"storing {what}"):
        answer = store(endpoint, allowed_hosts, files)
    _check_stored(endpoint, answer, what)


def _check_stored(endpoint: Endpoint, answer: Dataset, what: str) -> int:
    failed = list(answer.get("FailedSOPSequence", []) or [])
    if failed:
        reasons = sorted({str(item.get("FailureReason", "?")) for item in failed})
        raise PacsRefused(f"the PACS at {endpoint.host} refused {len(failed)} of {what} (failure reasons {reasons})")
    return len(list(answer.get("ReferencedSOPSequence", []) or []))


def _generated_ct(client: Any, blobs: BlobStore, work: StowWork, progress: Callable[[float], None]) -> list[Dataset]:
    """The NIfTI scan as a CT series (de-identified when asked), stored on the PACS unless it holds it already."""
    volume = nifti.load_nifti_bytes(blobs.get_bytes(work.image_digest), f"{work.case_id}.nii.gz")
    ids = dicom_seg.SeriesIds.derive(work.case_id, f"maskloop-pacs:{work.project_id}:{work.scan_id}")
    series = dicom_seg.ct_series(volume.data, volume.geometry.affine, ids, description=f"{work.case_id} CT")
    if work.deidentify:
        names = deid.Pseudonyms(work.salt)
        series = [deid.deidentify(ds, names) for ds in series]
    series_uid = str(series[0].SeriesInstanceUID)
    if _stored_count(client, work, series_uid) == len(series):
        return series
    for start in range(0, len(series), _CT_BATCH):
        batch = series[start : start + _CT_BATCH]
        _store(work.endpoint, work.allowed_hosts, batch, f"CT slices {start + 1}-{start + len(batch)}")
        progress((start + len(batch)) / len(series))
    return series


def _mask_box(blobs: BlobStore, digest: str) -> dicom_seg.MaskBox:
    """A structure's mask as the chunk-aligned box holding its chunks, each chunk read once. The box is in Fortran
    order: its k-planes, the SEG's frames, are then contiguous."""
    manifest = labels.load_manifest(blobs, digest)
    shape, chunk = manifest.shape, manifest.chunk
    if not manifest.entries:
        return dicom_seg.MaskBox(shape, (0, 0, 0), np.zeros((0, 0, 0), dtype=bool))
    cells = np.array(np.unravel_index([e.flat_index for e in manifest.entries], manifest.grid))
    low = cells.min(axis=1) * np.array(chunk)
    high = np.minimum((cells.max(axis=1) + 1) * np.array(chunk), shape)
    box = np.zeros(tuple(int(n) for n in high - low), dtype=bool, order="F")
    for entry in manifest.entries:
        region = chunks.chunk_slices(entry.flat_index, shape, chunk)
        inside = tuple(slice(r.start - int(o), r.stop - int(o)) for r, o in zip(region, low, strict=True))
        box[inside] = chunks.decode_chunk(blobs.get_bytes(entry.digest), box[inside].shape)
    return dicom_seg.MaskBox(shape, (int(low[0]), int(low[1]), int(low[2])), box)


def send(blobs: BlobStore, work: StowWork, progress: Callable[[float, str], None]) -> dict[str, Any]:
    """Build the SEG (and for a NIfTI scan its CT series) and store it on the PACS; no database work."""
    client = connect(work.endpoint, work.allowed_hosts)
    # The SEG writer's tables (read once per process) load while this thread mostly waits on the PACS.
    tables = threading.Thread(target=dicom_seg.load_standard_tables, name="seg-tables", daemon=True)
    tables.start()
    generated = work.source_series_uid is None
    if generated:
        ct = _generated_ct(client, blobs, work, lambda f: progress(5 + 35 * f, "storing the scan's CT series"))
    else:
        progress(5, "reading the series' slice headers from the PACS")
        ct = _source_headers(client, work)
    progress(40, f"building the SEG of {len(work.segments)} structures")
    tables.join()
    # Read one at a time by the SEG writer: one structure's box in memory, never all 28 masks.
    masks = [(item.spec, partial(_mask_box, blobs, item.manifest_digest)) for item in work.segments]
    seed = f"maskloop-pacs:{work.project_id}:{work.scan_id}:{work.version_id}"
    seg = dicom_seg.segmentation(
        ct,
        masks,
        manual=work.manual,
        algorithm_name=work.algorithm[0],
        algorithm_version=work.algorithm[1],
        series_uid=dicom_seg.uid(seed, "seg-series"),
        sop_uid=dicom_seg.uid(seed, "seg"),
        series_description=f"{work.case_id} labels v{work.version_id}",
    )
    del masks
    progress(80, "storing the SEG")
    _store(work.endpoint, work.allowed_hosts, [seg], "the SEG")
    referenced = str(ct[0].SeriesInstanceUID)
    return {
        "outcome": "stored",
        "version_id": work.version_id,
        "segments": len(work.segments),
        "seg_series_uid": str(seg.SeriesInstanceUID),
        "seg_sop_instance_uid": str(seg.SOPInstanceUID),
        # The scan's own UIDs (research ones in a de-identifying project), never the originals.
        "referenced_series_uid": referenced if generated else work.stored_series_uid,
        "ct_series_generated": generated,
        "ct_instances": len(ct),
    }


def complete(db: Session, job: Job, work: StowWork, result: dict[str, Any]) -> None:
    """Record the STOW (audit) and the job's success in the caller's transaction."""
    audit.record(
        db,
        actor_user_id=job.created_by,
        action="pacs.stow",
        entity_type="label_version",
        entity_id=work.version_id,
        project_id=work.project_id,
        scan_id=work.scan_id,
        details={k: result[k] for k in ("seg_sop_instance_uid", "referenced_series_uid", "segments")},
    )
    jobs.succeed(db, job, result, message=f"stored version {work.version_id} as a SEG of {result['segments']} segments")
