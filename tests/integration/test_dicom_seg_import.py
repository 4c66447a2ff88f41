"""DICOM through the API and the CLI: a SEG imported as a label version (by series UID or geometry, codes or names,
overlaps kept, bad input refused with nothing stored), upload errors naming the files as sent, a single DICOM file
imported by the CLI."""

from __future__ import annotations

import copy
import io
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from backend.imaging import dicom_seg
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import Phantom, generate_phantom
from backend.models import LabelVersion, Scan
from tests.conftest import World
from tests.factories import read_mask

VENV_BIN = Path(sys.executable).parent
NAMES = ["liver", "pancreas", "pancreas_head", "pancreatic_lesion", "kidney_left", "kidney_right", "veins"]


def _phantom(seed: int = 3) -> Phantom:
    return generate_phantom((40, 40, 12), (4.0, 4.0, 6.0), seed=seed)


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _series(ph: Phantom, case: str) -> list[Dataset]:
    return dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive(case, "test"))


def _seg(series: list[Dataset], masks: dict[str, np.ndarray], **specs: dicom_seg.SegmentSpec) -> bytes:
    segments = [
        (specs.get(name, dicom_seg.SegmentSpec(name, "#808080", name == "pancreatic_lesion")), m)
        for name, m in masks.items()
    ]
    seg = dicom_seg.segmentation(
        series,
        segments,
        manual=True,
        algorithm_name="",
        algorithm_version="",
        series_uid=dicom_seg.uid(series[0].SeriesInstanceUID, "seg"),
        sop_uid=dicom_seg.uid(series[0].SeriesInstanceUID, "seg-instance"),
    )
    return dicom_seg.seg_to_bytes(seg)


def _upload_series(client: TestClient, world: World, series: list[Dataset], case: str) -> dict:
    files = [("files", (f"slice_{k:02d}.dcm", _bytes(ds), "application/dicom")) for k, ds in enumerate(series)]
    response = client.post(
        f"/api/projects/{world.project.id}/scans/dicom",
        headers=world.headers["lead"],
        files=files,
        data={"case_id": case},
    )
    assert response.status_code == 201, response.text
    return dict(response.json())


def _import(
    client: TestClient, world: World, scan_id: int, data: bytes, role: str = "annotator", **form: str
) -> httpx.Response:
    return client.post(
        f"/api/scans/{scan_id}/labels/dicom-seg",
        headers=world.headers[role],
        files={"file": ("labels from PACS.dcm", data, "application/dicom")},
        data=form,
    )


def _versions(db: Session, scan_id: int) -> int:
    return int(db.scalar(select(func.count()).select_from(LabelVersion).where(LabelVersion.scan_id == scan_id)) or 0)


def test_seg_of_an_uploaded_series_becomes_a_label_version(client: TestClient, world: World, db: Session) -> None:
    ph = _phantom()
    series = _series(ph, "ct-1")
    scan = _upload_series(client, world, series, "ct-1")
    stored = db.get(Scan, scan["id"])
    assert stored is not None and stored.source_series_uid == series[0].SeriesInstanceUID
    assert stored.source_study_uid == series[0].StudyInstanceUID
    masks = {name: ph.masks[name] for name in NAMES}
    response = _import(client, world, scan["id"], _seg(series, masks))
    assert response.status_code == 201, response.text
    version = response.json()
    assert version["kind"] == "import" and version["message"] == "DICOM SEG labels from PACS.dcm"
    present = {s["name"] for s in version["structures"] if s["status"] == "present"}
    assert present == set(NAMES)
    for name in NAMES:
        assert np.array_equal(read_mask(client, world.headers["viewer"], version["id"], name), ph.masks[name]), name
    # Overlapping structures stayed separate: the head lies inside the pancreas.
    assert (ph.masks["pancreas"] & ph.masks["pancreas_head"]).any()

    # A second SEG with only the liver: the other structures are kept from the head.
    smaller = {"liver": ph.masks["liver"] & ~ph.masks["veins"]}
    again = _import(client, world, scan["id"], _seg(series, smaller))
    assert again.status_code == 201, again.text
    rows = {s["name"]: s for s in again.json()["structures"]}
    assert rows["liver"]["changed"] and rows["pancreas"]["status"] == "present" and not rows["pancreas"]["changed"]


def test_seg_of_a_nifti_scan_is_matched_by_geometry(client: TestClient, world: World, db: Session) -> None:
    ph = _phantom()
    nifti = to_nifti_gz(ph.volume, ph.affine)
    created = client.post(
        f"/api/projects/{world.project.id}/scans",
        headers=world.headers["lead"],
        files={"file": ("case-n.nii.gz", nifti, "application/gzip")},
    )
    assert created.status_code == 201, created.text
    scan_id = created.json()["id"]
    series = _series(ph, "exported")  # a series written from the same grid (any UIDs)
    response = _import(client, world, scan_id, _seg(series, {"liver": ph.masks["liver"]}))
    assert response.status_code == 201, response.text

    # Another grid (finer slices): the frames do not lie on this scan's voxels. Refused, nothing stored.
    other = generate_phantom((40, 40, 24), (4.0, 4.0, 3.0), seed=3)
    before = _versions(db, scan_id)
    refused = _import(client, world, scan_id, _seg(_series(other, "other"), {"liver": other.masks["liver"]}))
    assert refused.status_code == 422, refused.text
    assert "labels from PACS.dcm" in refused.json()["detail"]
    assert _versions(db, scan_id) == before


def test_seg_of_another_series_or_project_is_refused(client: TestClient, world: World, db: Session) -> None:
    ph = _phantom()
    scan = _upload_series(client, world, _series(ph, "mine"), "mine")
    theirs = _series(ph, "someone-elses")
    refused = _import(client, world, scan["id"], _seg(theirs, {"liver": ph.masks["liver"]}))
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert "segments series" in body["detail"] and body["details"]["scan_series"] == scan_uid(db, scan["id"])
    assert _versions(db, scan["id"]) == 0
    # Outsiders do not see the scan; a viewer may not write labels; nothing is read or stored.
    data = _seg(_series(ph, "mine"), {"liver": ph.masks["liver"]})
    assert _import(client, world, scan["id"], data, role="outsider").status_code == 404
    assert _import(client, world, scan["id"], data, role="viewer").status_code == 403
    assert _versions(db, scan["id"]) == 0
    # Not a SEG at all.
    ct = _import(client, world, scan["id"], _bytes(_series(ph, "mine")[0]))
    assert ct.status_code == 422 and "not a DICOM SEG (modality CT)" in ct.json()["detail"]
    garbage = _import(client, world, scan["id"], b"not dicom")
    assert garbage.status_code == 422 and "not a DICOM file" in garbage.json()["detail"]


def scan_uid(db: Session, scan_id: int) -> str | None:
    scan = db.get(Scan, scan_id)
    return scan.source_series_uid if scan else None


def test_unknown_segments_are_listed_then_mapped(client: TestClient, world: World, db: Session) -> None:
    ph = _phantom()
    series = _series(ph, "unknown")
    scan = _upload_series(client, world, series, "unknown")
    strange = dicom_seg.SegmentSpec(
        "Tumour A",
        "#ff0000",
        code={
            "category": {"scheme": "SCT", "value": "49755003", "meaning": "Morphologically Abnormal Structure"},
            "type": {"scheme": "99OTHER", "value": "T1", "meaning": "Finding T1"},
        },
    )
    data = _seg(
        series, {"Tumour A": ph.masks["pancreatic_lesion"], "liver": ph.masks["liver"]}, **{"Tumour A": strange}
    )
    refused = _import(client, world, scan["id"], data)
    assert refused.status_code == 422, refused.text
    body = refused.json()
    assert "match no structure" in body["detail"] and "'Tumour A'" in body["detail"]
    assert body["details"]["unknown_segments"] == [
        {
            "number": 1,
            "label": "Tumour A",
            "code": {"scheme": "99OTHER", "value": "T1", "meaning": "Finding T1"},
            "modifier": None,
        }
    ]
    assert _versions(db, scan["id"]) == 0
    bad_map = _import(client, world, scan["id"], data, mapping=json.dumps({"Tumour A": "brain"}))
    assert bad_map.status_code == 422 and "not in the project's label schema" in bad_map.json()["detail"]
    mapped = _import(client, world, scan["id"], data, mapping=json.dumps({"Tumour A": "pancreatic_lesion"}))
    assert mapped.status_code == 201, mapped.text
    rows = {s["name"]: s for s in mapped.json()["structures"]}
    assert rows["pancreatic_lesion"]["voxel_count"] == int(ph.masks["pancreatic_lesion"].sum())


def test_a_real_seg_imports_onto_its_series(client: TestClient, world: World) -> None:
    """pydicom-data's liver.dcm (SNOMED-RT coded) onto a CT series with the UIDs and grid it references."""
    from pydicom.data import get_testdata_file

    source = get_testdata_file("liver.dcm", download=False)
    if not isinstance(source, str):
        pytest.skip("pydicom-data's liver.dcm is not installed")
    seg = pydicom.dcmread(source)
    template = pydicom.dcmread(str(get_testdata_file("CT_small.dcm")))
    series: list[Dataset] = []
    for frame in seg.PerFrameFunctionalGroupsSequence:
        ds = copy.deepcopy(template)
        ds.SeriesInstanceUID = seg.ReferencedSeriesSequence[0].SeriesInstanceUID
        ds.StudyInstanceUID = seg.StudyInstanceUID
        ds.SOPInstanceUID = frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.ImagePositionPatient = frame.PlanePositionSequence[0].ImagePositionPatient
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing = [0.810547, 0.810547]
        ds.Rows = ds.Columns = 512
        ds.PixelData = np.zeros((512, 512), dtype=np.int16).tobytes()
        series.append(ds)
    scan = _upload_series(client, world, series, "liver-ct")
    response = _import(client, world, scan["id"], Path(source).read_bytes())
    assert response.status_code == 201, response.text
    rows = {s["name"]: s for s in response.json()["structures"]}
    assert rows["liver"]["voxel_count"] == int(np.asarray(seg.pixel_array).sum())


def test_dicom_upload_errors_name_the_files_as_sent(client: TestClient, world: World) -> None:
    """Issue 17: the error named the server's renamed copy (000002.dcm), not the file the user sent."""
    ph = _phantom()
    series = _series(ph, "gap")
    del series[5]  # a missing slice
    files = [("files", (f"IM_{k:03d}.dcm", _bytes(ds), "application/dicom")) for k, ds in enumerate(series)]
    broken = copy.deepcopy(series[0])
    del broken.ImagePositionPatient
    files.append(("files", ("broken slice.dcm", _bytes(broken), "application/dicom")))
    response = client.post(
        f"/api/projects/{world.project.id}/scans/dicom",
        headers=world.headers["lead"],
        files=files,
        data={"case_id": "gap"},
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail == "broken slice.dcm: missing ImagePositionPatient" and not re.search(r"\d{6}\.dcm", detail)
    files.pop()
    response = client.post(
        f"/api/projects/{world.project.id}/scans/dicom",
        headers=world.headers["lead"],
        files=files,
        data={"case_id": "gap"},
    )
    assert response.status_code == 422, response.text
    assert "a slice may be missing" in response.json()["detail"]
    assert "IM_0" in response.json()["detail"] and ".dcm" in response.json()["details"]["file"]
    assert response.json()["details"]["file"].startswith("IM_")


# --- the CLI --------------------------------------------------------------------------------------------------


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKLOOP_")}
    env.update({"MASKLOOP_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200", "NO_COLOR": "1"})
    yield env


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "maskloop"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow
def test_cli_imports_a_single_dicom_file_and_a_seg(tmp_path: Path, cli_env: dict[str, str]) -> None:
    for args in (
        ["migrate"],
        ["create-user", "a@b.org", "--password", "longpassword", "--admin"],
        ["create-project", "demo", "--owner", "a@b.org"],
        ["create-project", "other", "--owner", "a@b.org"],
    ):
        done = _cli(args, cli_env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    ph = generate_phantom((40, 40, 1), (4.0, 4.0, 5.0), seed=3)
    [slice_] = _series(ph, "one")
    single = tmp_path / "liver.dcm"
    single.write_bytes(_bytes(slice_))
    # Issue 17: `liver.dcm: not a NIfTI file`; now a one-file series.
    done = _cli(["import", str(single), "--project", "demo"], cli_env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "imported liver as scan" in done.stdout

    seg = tmp_path / "labels.dcm"
    seg.write_bytes(_seg([slice_], {"liver": ph.masks["liver"], "spleen": ph.masks["spleen"]}))
    done = _cli(["import-labels", str(seg), "--project", "demo", "--as", "a@b.org"], cli_env, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "of scan liver (2 structures present)" in done.stdout
    # The same SEG for a project without that series: refused, nothing stored.
    done = _cli(["import-labels", str(seg), "--project", "other"], cli_env, tmp_path)
    assert done.returncode == 2
    assert "no scan of project 'other' comes from the series the SEG references" in " ".join(done.stdout.split())
    # A SEG given to `import` is pointed to import-labels.
    done = _cli(["import", str(seg), "--project", "demo", "--case-id", "x"], cli_env, tmp_path)
    assert done.returncode == 2 and "import-labels" in done.stdout
    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'maskloop.db'}")
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Scan)) == 1
            assert conn.scalar(select(func.count()).select_from(LabelVersion)) == 1
    finally:
        engine.dispose()


def test_schema_codes_are_kept_per_project_and_match_imports(client: TestClient, world: World, db: Session) -> None:
    default = client.get(f"/api/projects/{world.project.id}/schema", headers=world.headers["viewer"]).json()
    codes = {s["name"]: s["code"] for s in default["structures"]}
    assert codes["kidney_left"]["type"] == {"scheme": "SCT", "value": "64033007", "meaning": "Kidney"}
    assert codes["kidney_left"]["modifier"]["value"] == "7771000"
    assert all(code["type"]["scheme"] == "SCT" for code in codes.values())
    organ = {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"}
    structures = [
        {"name": "liver", "label_value": 1},  # defaulted from the table
        {
            "name": "graft",
            "label_value": 2,
            "code": {"category": organ, "type": {"scheme": "SCT", "value": "7970006", "meaning": "Graft"}},
        },
        {"name": "thing", "label_value": 3},  # no standard code: private when written
    ]
    bad = client.post(
        "/api/projects",
        headers=world.headers["platform_admin"],
        json={"slug": "coded", "name": "Coded", "structures": [{**structures[1], "code": {"type": {}}}]},
    )
    assert bad.status_code == 422 and "code of structure 'graft' needs a category" in bad.json()["detail"]
    created = client.post(
        "/api/projects",
        headers=world.headers["platform_admin"],
        json={"slug": "coded", "name": "Coded", "structures": structures},
    )
    assert created.status_code == 201, created.text
    project_id = created.json()["id"]
    schema = client.get(f"/api/projects/{project_id}/schema", headers=world.headers["platform_admin"]).json()
    stored = {s["name"]: s["code"] for s in schema["structures"]}
    assert stored["liver"]["type"]["value"] == "10200004" and stored["graft"]["type"]["value"] == "7970006"
    assert stored["thing"] is None
    # A SEG whose segments carry those codes (labels that say nothing) imports by code.
    ph = _phantom()
    series = _series(ph, "coded")
    files = [("files", (f"{k}.dcm", _bytes(ds), "application/dicom")) for k, ds in enumerate(series)]
    scan = client.post(
        f"/api/projects/{project_id}/scans/dicom",
        headers=world.headers["platform_admin"],
        files=files,
        data={"case_id": "coded"},
    )
    assert scan.status_code == 201, scan.text
    specs = {
        "segment A": dicom_seg.SegmentSpec("segment A", "#ff0000", code=stored["graft"]),
        "segment B": dicom_seg.SegmentSpec("segment B", "#00ff00", code=None),
    }
    data = _seg(series, {"segment A": ph.masks["spleen"], "segment B": ph.masks["liver"]}, **specs)
    # "segment B" is private-coded by its own label: nothing in the schema matches it.
    refused = client.post(
        f"/api/scans/{scan.json()['id']}/labels/dicom-seg",
        headers=world.headers["platform_admin"],
        files={"file": ("coded.dcm", data, "application/dicom")},
    )
    assert refused.status_code == 422 and "'segment B'" in refused.json()["detail"]
    done = client.post(
        f"/api/scans/{scan.json()['id']}/labels/dicom-seg",
        headers=world.headers["platform_admin"],
        files={"file": ("coded.dcm", data, "application/dicom")},
        data={"mapping": json.dumps({"2": "thing"})},
    )
    assert done.status_code == 201, done.text
    rows = {s["name"]: s for s in done.json()["structures"]}
    assert rows["graft"]["voxel_count"] == int(ph.masks["spleen"].sum())
    assert rows["thing"]["voxel_count"] == int(ph.masks["liver"].sum())
    assert rows["liver"]["status"] == "missing"  # not in the SEG, and no earlier version to keep it from
