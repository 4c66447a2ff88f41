"""The DICOM SEG export of a de-identifying project (its PACS source's option) on real PostgreSQL: the CT series and
the SEG carry the research identifiers that de-identified intake gave the scan, none of the source's patient names,
ids, dates or UIDs, read back voxel for voxel and pass dciodvfy; a non-de-identifying project's export is unchanged."""

from __future__ import annotations

import gzip
import io
import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from backend.core.blobstore import LocalBlobStore
from backend.exports import service as exports
from backend.imaging import dciodvfy, dicom_seg
from backend.imaging.nifti import Geometry, to_nifti_gz
from backend.imaging.phantom import Phantom, generate_phantom
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import PacsSource, Project, Scan
from backend.pacs.service import Endpoint, Pseudonyms, identities, retrieval
from backend.scans import service as scans
from tests.conftest import World
from tests.orthanc import Patient, ct_series

SALT = "export-deid-salt"
PATIENT = Patient("PID-SECRET-0042", name="Doe^Jane", birth_date="19610315", study_date="20240611")
STRUCTURES = ["liver", "pancreas", "pancreas_head"]  # pancreas_head overlaps pancreas


def _phantom() -> Phantom:
    return generate_phantom((40, 36, 12), (4.0, 4.0, 6.0), seed=7, orientation="LPS")


def _source(db: Session, project: Project, *, deidentify: bool) -> None:
    db.add(PacsSource(project_id=project.id, base_url="http://127.0.0.1:9/dicom-web", deidentify=deidentify, salt=SALT))
    db.flush()


def _intake(
    db: Session, blobs: LocalBlobStore, project: Project, folder: Path, *, deidentify: bool
) -> tuple[Scan, list[Dataset]]:
    """A CT series written as a hospital would, brought in exactly as a PACS retrieval job does (de-identified when
    the project asks), with a version of overlapping structures."""
    ph = _phantom()
    study = "1.2.826.0.1.3680043.8.498.1111"
    source = ct_series(ph.volume, ph.affine, PATIENT, study_uid=study, series_number=3, description="ABD 1mm")
    folder.mkdir()
    files = []
    for ds in source:
        path = folder / f"{ds.InstanceNumber:04d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
    names = Pseudonyms(SALT)
    series = str(source[0].SeriesInstanceUID)
    stored = (names.uid(study), names.uid(series)) if deidentify else (study, series)
    if deidentify:
        identities.remember(db, project.id, "study", study, stored[0])
        identities.remember(db, project.id, "series", series, stored[1])
    job = jobs.create_job(db, project_id=project.id, kind="pacs", created_by=None, params={"op": "retrieve"})
    work = retrieval.RetrievalWork(
        job_id=job.id,
        project_id=project.id,
        actor_id=None,
        endpoint=Endpoint("http://127.0.0.1:9/dicom-web"),
        allowed_hosts="127.0.0.1:9",
        study_uid=study,
        series_uid=series,
        stored_study_uid=stored[0],
        stored_series_uid=stored[1],
        instances=len(files),
        salt=SALT,
        deidentify=deidentify,
    )
    scan = retrieval.complete(db, blobs, job, work, files, retrieval.prepare(work, files))
    assert scan is not None
    labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=None),
        kind="import",
        masks={name: ph.masks[name] for name in STRUCTURES},
    )
    return scan, source


def _export(
    db: Session, blobs: LocalBlobStore, project: Project, out: Path, fmt: str = "dicom-seg"
) -> tuple[Path, dict[str, Any]]:
    params = exports.validate_request(
        db, project, fmt=fmt, version="head", structures=STRUCTURES, scan_ids=None, flt=None
    )
    plan = exports.plan_export(db, project, params)
    root = out / exports.dataset_folder_name(plan)
    return root, exports.write_export(blobs, plan, root)


def _secrets(source: list[Dataset]) -> list[bytes]:
    """What of the source must not reach an export: names, ids, dates, every UID."""
    first = source[0]
    values = [PATIENT.patient_id, "Doe", "Welby", PATIENT.birth_date, PATIENT.study_date, "ACC0001"]
    values += [str(first.StudyInstanceUID), str(first.SeriesInstanceUID), str(first.FrameOfReferenceUID)]
    values += [str(ds.SOPInstanceUID) for ds in source]
    return [v.encode() for v in values]


def test_deidentifying_project_exports_research_identifiers_only(
    db: Session, blobs: LocalBlobStore, world: World, tmp_path: Path
) -> None:
    _source(db, world.project, deidentify=True)
    scan, source = _intake(db, blobs, world.project, tmp_path / "in", deidentify=True)
    nifti_ph = _phantom()
    nifti_scan = scans.import_nifti(
        db, blobs, world.project, None, to_nifti_gz(nifti_ph.volume, nifti_ph.affine), "x.nii.gz", case_id="Smith_John"
    )
    labels.create_version(
        db,
        blobs,
        nifti_scan,
        author=labels.Author(user_id=None),
        kind="import",
        masks={"liver": nifti_ph.masks["liver"]},
    )
    root, manifest = _export(db, blobs, world.project, tmp_path / "out")
    names = Pseudonyms(SALT)
    research_patient = names.patient(PATIENT.patient_id)
    assert scan.raw_metadata["dicom PatientID"] == research_patient  # what intake recorded
    case = root / scan.case_id
    ct = [dcmread(p) for p in sorted((case / "CT").iterdir())]
    seg_path = case / "SEG" / "seg.dcm"
    seg = dcmread(seg_path)
    for ds in [*ct, seg]:
        assert str(ds.PatientID) == research_patient and str(ds.PatientName) == research_patient
        assert ds.StudyInstanceUID == scan.source_study_uid == names.uid(str(source[0].StudyInstanceUID))
        assert ds.FrameOfReferenceUID == ct[0].FrameOfReferenceUID
        assert ds.PatientIdentityRemoved == "YES" and "Basic Application" in ds.DeidentificationMethod[0]
        assert not ds.get("PatientBirthDate") and not ds.get("StudyDate") and not ds.get("AccessionNumber")
    assert {ds.SeriesInstanceUID for ds in ct} == {scan.source_series_uid}
    assert scan.source_series_uid == names.uid(str(source[0].SeriesInstanceUID))
    referenced = seg.ReferencedSeriesSequence[0]
    assert referenced.SeriesInstanceUID == scan.source_series_uid
    assert {item.ReferencedSOPInstanceUID for item in referenced.ReferencedInstanceSequence} <= {
        ds.SOPInstanceUID for ds in ct
    }
    for path in [*sorted((case / "CT").iterdir()), seg_path]:
        data = path.read_bytes()
        leaked = [s.decode() for s in _secrets(source) if s in data]
        assert leaked == [], (path.name, leaked)
    ph = _phantom()
    back = dicom_seg.read_segments(seg_path.read_bytes(), Geometry.from_affine(ph.volume.shape, ph.affine))
    assert list(back) == STRUCTURES
    for name in STRUCTURES:
        assert np.array_equal(back[name], ph.masks[name]), name
    # A scan that came as NIfTI: its case id (here a name) is no identifier of the export.
    # ...nor its folder's name: the research identifier is.
    assert not (root / "Smith_John").exists()
    other = [dcmread(p) for p in sorted((root / names.patient("Smith_John") / "CT").iterdir())]
    other_seg = dcmread(root / names.patient("Smith_John") / "SEG" / "seg.dcm")
    for ds in [*other, other_seg]:
        assert str(ds.PatientID) == names.patient("Smith_John") and "Smith" not in str(ds.get("SeriesDescription", ""))
    if dciodvfy.available():
        assert dciodvfy.errors(seg_path) == []
        assert dciodvfy.errors(sorted((case / "CT").iterdir())[0]) == []
    assert [s["case_id"] for s in manifest["scans"]] == [scan.case_id, names.patient("Smith_John")]


def _named_nifti(ph: Phantom) -> bytes:
    """A NIfTI file as a hospital's converter may write it: a name in its description and in a header extension,
    gzipped with its original file name in the gzip header."""
    image = nib.Nifti1Image(ph.volume.astype(np.int16), ph.affine)
    image.header["descrip"] = b"Smith John 19610315"
    image.header.extensions.append(nib.nifti1.Nifti1Extension("comment", b"PatientName=Smith^John"))
    buffer = io.BytesIO()
    with gzip.GzipFile(filename="Smith_John.nii", fileobj=buffer, mode="wb", mtime=0) as handle:
        handle.write(image.to_bytes())
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["pants", "nnunet", "msd", "dicom-seg"])
def test_deidentifying_project_exports_name_cases_by_research_identifiers_in_every_format(
    db: Session, blobs: LocalBlobStore, world: World, tmp_path: Path, fmt: str
) -> None:
    _source(db, world.project, deidentify=True)
    scan, source = _intake(db, blobs, world.project, tmp_path / "in", deidentify=True)
    ph = _phantom()
    named = scans.import_nifti(db, blobs, world.project, None, _named_nifti(ph), "x.nii.gz", case_id="Smith_John")
    named.split = "test"  # to the test folders (imagesTs, ImageTe, the test list of dataset.json)
    labels.create_version(
        db, blobs, named, author=labels.Author(user_id=None), kind="import", masks={"liver": ph.masks["liver"]}
    )
    # Never labelled: skipped, and listed as skipped.
    scans.import_nifti(
        db, blobs, world.project, None, to_nifti_gz(ph.volume, ph.affine), "y.nii.gz", case_id="Doe_Richard"
    )
    db.flush()

    root, manifest = _export(db, blobs, world.project, tmp_path / "out", fmt)

    names = Pseudonyms(SALT)
    research = {scan.case_id: scan.case_id, "Smith_John": names.patient("Smith_John")}
    assert scan.case_id.startswith(names.patient(PATIENT.patient_id))  # intake already named it by research ids
    assert [s["case_id"] for s in manifest["scans"]] == [research[scan.case_id], research["Smith_John"]]
    assert [s["case_id"] for s in manifest["skipped"]] == [names.patient("Doe_Richard")]
    assert manifest["cases_with_missing_structures"] == [research["Smith_John"]]
    case_folders = {part for path in root.rglob("*") for part in path.relative_to(root).parts}
    assert any(research["Smith_John"] in part for part in case_folders)
    forbidden = [b"Smith", b"John", b"Doe", b"Richard", *_secrets(source)]
    for path in root.rglob("*"):
        relative = str(path.relative_to(root)).encode()
        assert not [f for f in forbidden if f in relative], relative
        if not path.is_file():
            continue
        contents = [path.read_bytes()]
        if path.name.endswith(".gz"):
            contents.append(gzip.decompress(contents[0]))
        leaked = [f.decode() for f in forbidden for data in contents if f in data]
        assert leaked == [], (relative, leaked)
    listed = json.loads((root / "manifest.json").read_text())
    assert [s["case_id"] for s in listed["scans"]] == [research[scan.case_id], research["Smith_John"]]
    if fmt != "dicom-seg":
        # The image keeps its voxels and geometry; only the header's free text and extensions are gone.
        [image_path] = [p for p in root.rglob("*.nii.gz") if research["Smith_John"] in str(p) and "mage" in str(p)]
        image: Any = nib.load(str(image_path))
        np.testing.assert_array_equal(np.asarray(image.dataobj), ph.volume.astype(np.int16))
        np.testing.assert_allclose(image.affine, ph.affine)
        assert image.header["descrip"].item() == b"" and len(image.header.extensions) == 0


@pytest.mark.parametrize("with_source", [False, True])
def test_non_deidentifying_project_export_is_unchanged(
    db: Session, blobs: LocalBlobStore, world: World, tmp_path: Path, with_source: bool
) -> None:
    if with_source:
        _source(db, world.project, deidentify=False)
    scan, _ = _intake(db, blobs, world.project, tmp_path / "in", deidentify=False)
    root, manifest = _export(db, blobs, world.project, tmp_path / "out")
    version_id = manifest["scans"][0]["label_version_id"]
    seed = f"maskloop:{scan.id}:{version_id}"
    ids = dicom_seg.SeriesIds.derive(scan.case_id, seed)
    ct = [dcmread(p) for p in sorted((root / scan.case_id / "CT").iterdir())]
    seg = dcmread(root / scan.case_id / "SEG" / "seg.dcm")
    for ds in [*ct, seg]:
        assert ds.PatientID == ids.patient_id and ds.StudyInstanceUID == ids.study_uid
        assert "PatientIdentityRemoved" not in ds
    assert {ds.SeriesInstanceUID for ds in ct} == {ids.series_uid}
    assert ct[0].SeriesDescription == f"{scan.case_id} CT"
    assert seg.SeriesInstanceUID == dicom_seg.uid(seed, "seg-series") and seg.SOPInstanceUID == dicom_seg.uid(
        seed, "seg"
    )
    assert seg.SeriesDescription == f"{scan.case_id} labels v{version_id}"
