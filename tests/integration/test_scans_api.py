"""Scans: NIfTI/DICOM import round-trips geometry and voxels, volume serving, listing, PanTS folders, the CLI."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import random
import re
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
import pytest
from argon2 import PasswordHasher
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file
from pydicom.uid import generate_uid
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from backend.auth import service as auth_service
from backend.core.blobstore import LocalBlobStore
from backend.imaging.phantom import write_pants_dataset
from backend.labels import service as labels
from backend.models import AuditEvent, LabelVersion, Scan
from backend.projects import service as projects
from backend.scans import service as scans
from tests.conftest import World
from tests.factories import read_mask, read_nifti

BOTH_DATABASES = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)
VENV_BIN = Path(sys.executable).parent


@pytest.fixture(autouse=True)
def _fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `world` fixture hashes six passwords; cheap argon2 parameters keep each test well under a second."""
    monkeypatch.setattr(auth_service, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


# --- NIfTI builders -------------------------------------------------------------------------------------------


def rot_z(degrees: float) -> np.ndarray:
    """3x3 rotation about the z axis."""
    t = np.deg2rad(degrees)
    return np.array([[np.cos(t), -np.sin(t), 0.0], [np.sin(t), np.cos(t), 0.0], [0.0, 0.0, 1.0]])


def make_affine(
    axes: np.ndarray, spacing: tuple[float, float, float], origin: tuple[float, float, float]
) -> np.ndarray:
    """4x4 affine whose voxel axes are the columns of `axes` scaled by `spacing`."""
    affine = np.eye(4)
    affine[:3, :3] = axes @ np.diag(spacing)
    affine[:3, 3] = origin
    return affine


AFFINES: dict[str, tuple[np.ndarray, str]] = {
    "RAS": (make_affine(np.eye(3), (0.8, 0.75, 2.5), (-20.0, -12.5, 30.0)), "RAS"),
    "LPS": (make_affine(np.diag([-1.0, -1.0, 1.0]), (0.7, 0.7, 3.0), (160.0, 170.0, -80.0)), "LPS"),
    "oblique": (make_affine(rot_z(20.0), (1.25, 0.9, 2.0), (-120.5, 33.25, 410.0)), "RAS"),
}


def make_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    *,
    slope: float | None = None,
    inter: float | None = None,
    compress: bool = True,
) -> bytes:
    """NIfTI-1 bytes with sform/qform code 1, optionally with scl_slope/scl_inter written into the header."""
    image = nib.Nifti1Image(data, affine, dtype=data.dtype)
    image.header.set_sform(affine, code=1)
    image.header.set_qform(affine, code=1)
    image.header.set_xyzt_units("mm")
    raw = bytearray(image.to_bytes())
    if slope is not None:
        # Written by hand: nibabel resets the scaling of in-memory arrays when it serialises them.
        raw[112:120] = struct.pack("<2f", slope, inter or 0.0)
    return gzip.compress(bytes(raw), mtime=0) if compress else bytes(raw)


def post_nifti(
    client: TestClient,
    headers: dict[str, str],
    project_id: int,
    content: bytes,
    filename: str,
    **form: str,
) -> Any:
    """POST a NIfTI upload and return the raw response."""
    return client.post(
        f"/api/projects/{project_id}/scans",
        headers=headers,
        files={"file": (filename, content, "application/gzip")},
        data=form,
    )


def tiny_volume(seed: int) -> bytes:
    """A small valid int16 volume (listing tests do not need anatomy)."""
    data = np.random.default_rng(seed).integers(-1000, 1000, size=(6, 5, 4), dtype=np.int16)
    return make_nifti(data, AFFINES["RAS"][0])


# --- import round-trip ----------------------------------------------------------------------------------------

ROUND_TRIPS = [
    # id, affine key, dtype, scaling, compressed upload
    pytest.param("RAS", np.int16, None, True, id="ras-int16"),
    pytest.param("LPS", np.int16, None, True, id="lps-int16"),
    pytest.param("oblique", np.int16, None, True, id="oblique-int16"),
    pytest.param("LPS", np.float32, None, True, id="lps-float32"),
    pytest.param("oblique", np.uint8, None, False, id="oblique-uint8-uncompressed"),
    pytest.param("RAS", np.int16, (2.0, -1024.0), True, id="ras-int16-scaled"),
]


def _voxels(dtype: type, shape: tuple[int, int, int], seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if dtype is np.float32:
        return rng.normal(0.0, 300.0, size=shape).astype(np.float32)  # fractional values, not int16-exact
    if dtype is np.uint8:
        return rng.integers(0, 256, size=shape, dtype=np.uint8)
    return rng.integers(-1024, 3000, size=shape, dtype=np.int16)


@BOTH_DATABASES
@pytest.mark.parametrize(("orientation", "dtype", "scaling", "compress"), ROUND_TRIPS)
def test_nifti_import_round_trips_geometry_and_voxels(
    client: TestClient,
    world: World,
    blobs: LocalBlobStore,
    orientation: str,
    dtype: type,
    scaling: tuple[float, float] | None,
    compress: bool,
) -> None:
    affine, code = AFFINES[orientation]
    shape = (20, 16, 7)
    raw = _voxels(dtype, shape)
    slope, inter = scaling if scaling else (None, None)
    upload = make_nifti(raw, affine, slope=slope, inter=inter, compress=compress)
    original = nib.Nifti1Image.from_bytes(gzip.decompress(upload) if compress else upload)
    expected = raw.astype(np.float64) * (slope or 1.0) + (inter or 0.0)
    assert np.array_equal(original.get_fdata(), expected)  # the builder wrote what we think it wrote

    filename = "vol.nii.gz" if compress else "vol.nii"
    response = post_nifti(client, world.headers["lead"], world.project.id, upload, filename, case_id="rt-1")
    assert response.status_code == 201, response.text
    created = response.json()

    scan = client.get(f"/api/scans/{created['id']}", headers=world.headers["viewer"]).json()
    assert scan["case_id"] == "rt-1"
    assert scan["source_format"] == "nifti"
    assert scan["source_dtype"] == np.dtype(dtype).name
    assert scan["shape"] == list(shape)
    assert scan["slice_count"] == shape[2]
    assert scan["orientation"] == code == "".join(nib.aff2axcodes(affine))
    assert np.allclose(scan["affine"], affine, atol=1e-4)
    assert np.array_equal(np.asarray(scan["affine"]), original.affine)  # exactly what the header says
    assert np.allclose(scan["spacing"], np.sqrt((affine[:3, :3] ** 2).sum(axis=0)), atol=1e-5)

    volume = client.get(f"/api/scans/{created['id']}/volume", headers=world.headers["viewer"])
    assert volume.status_code == 200
    assert volume.content[:2] == b"\x1f\x8b"  # always served gzip-compressed, never decoded on the way
    served = read_nifti(volume.content)
    assert np.array_equal(served.affine, original.affine)
    assert served.shape == shape
    assert served.get_data_dtype() == np.dtype(dtype)
    assert np.array_equal(served.get_fdata(), expected)
    assert served.dataobj.slope == (slope or 1.0) and served.dataobj.inter == (inter or 0.0)

    # The served bytes are the stored blob: the upload itself when it was gzip, else its gzip wrapping.
    digest = hashlib.sha256(volume.content).hexdigest()
    assert volume.headers["etag"] == f'"{digest}"'
    assert blobs.get_bytes(digest) == volume.content
    assert scan["image_bytes"] == len(volume.content)
    if compress:
        assert volume.content == upload
    else:
        assert gzip.decompress(volume.content) == upload
    again = client.get(f"/api/scans/{created['id']}/volume", headers=world.headers["annotator"])
    assert hashlib.sha256(again.content).hexdigest() == digest
    assert again.headers["etag"] == volume.headers["etag"]


@BOTH_DATABASES
@pytest.mark.blobs
def test_volume_is_cacheable_and_never_gzip_encoded(client: TestClient, world: World) -> None:
    upload = tiny_volume(1)
    scan = post_nifti(client, world.headers["lead"], world.project.id, upload, "cache-me.nii.gz").json()
    assert scan["case_id"] == "cache-me"
    url = f"/api/scans/{scan['id']}/volume"
    first = client.get(url, headers=world.headers["viewer"])
    assert first.status_code == 200
    # A .nii.gz body with Content-Encoding: gzip would be unzipped by the browser and then fail to parse.
    assert first.headers["content-type"] == "application/octet-stream"
    assert "content-encoding" not in first.headers
    assert first.content == upload
    assert "cache-me.nii.gz" in first.headers["content-disposition"]
    etag = first.headers["etag"]

    cached = client.get(url, headers={**world.headers["viewer"], "If-None-Match": etag})
    assert cached.status_code == 304
    assert cached.content == b""
    assert cached.headers["etag"] == etag

    stale = client.get(url, headers={**world.headers["viewer"], "If-None-Match": '"0000"'})
    assert stale.status_code == 200
    assert stale.content == upload


# --- listing, filters, pagination, facets --------------------------------------------------------------------

LISTED: dict[str, dict[str, Any]] = {
    "beta-02": {"site": "MSD", "ct phase": "delayed", "sex": "male", "age": "", "manufacturer": "Philips",
                "tumor?": "0"},
    "alpha-01": {"site": "JHH", "ct phase": "Venous", "sex": " F", "age": "63", "manufacturer": "SIEMENS",
                 "tumor?": "1"},
    "gamma-02": {"site": "JHH", "ct phase": "", "sex": "", "age": 89, "manufacturer": "", "tumor?": ""},
    "alpha-02": {"site": "JHH", "ct phase": "portal venous", "sex": "M", "age": "45",
                 "manufacturer": "Siemens Healthineers", "tumor?": "0"},
    "beta-01": {"site": "MSD", "ct phase": "Arterial", "sex": "F ", "age": "71", "manufacturer": "GE MEDICAL SYSTEMS",
                "tumor?": 1},
    "gamma-01": {"site": "EU-MC", "ct phase": "Non-contrast", "sex": "female", "age": "30.0",
                 "manufacturer": "siemens ", "tumor?": "yes"},
}  # fmt: skip


@pytest.fixture
def listed(client: TestClient, world: World) -> dict[str, dict[str, Any]]:
    """Six scans with PanTS metadata columns, uploaded out of case-id order."""
    out = {}
    for i, (case_id, metadata) in enumerate(LISTED.items()):
        response = post_nifti(
            client,
            world.headers["lead"],
            world.project.id,
            tiny_volume(i),
            f"{case_id}.nii.gz",
            case_id=case_id,
            metadata=json.dumps(metadata),
        )
        assert response.status_code == 201, response.text
        out[case_id] = response.json()
    return out


def _ids(client: TestClient, world: World, **params: Any) -> tuple[list[str], int]:
    response = client.get(f"/api/projects/{world.project.id}/scans", params=params, headers=world.headers["viewer"])
    assert response.status_code == 200, response.text
    body = response.json()
    return [item["case_id"] for item in body["items"]], body["total"]


@BOTH_DATABASES
def test_metadata_is_normalised_and_raw_kept(client: TestClient, world: World, listed: dict) -> None:
    alpha = listed["alpha-01"]
    assert alpha["sex"] == "F"
    assert alpha["phase"] == "venous"
    assert alpha["age"] == 63
    assert alpha["manufacturer"] == "Siemens"
    assert alpha["tumor"] is True
    assert alpha["raw_metadata"] == LISTED["alpha-01"]  # verbatim, stray whitespace included
    gamma = listed["gamma-02"]
    assert (gamma["sex"], gamma["phase"], gamma["manufacturer"], gamma["tumor"]) == (None, None, None, None)
    assert gamma["age"] == 89
    assert gamma["raw_metadata"]["age"] == "89"  # form values arrive as JSON; numbers are kept as text
    assert listed["gamma-01"]["age"] == 30
    assert listed["beta-01"]["manufacturer"] == "GE"
    assert listed["beta-02"]["age"] is None


@BOTH_DATABASES
def test_list_filters(client: TestClient, world: World, listed: dict) -> None:
    everything = sorted(LISTED)
    assert _ids(client, world) == (everything, 6)
    assert _ids(client, world, site="JHH") == (["alpha-01", "alpha-02", "gamma-02"], 3)
    assert _ids(client, world, phase="venous") == (["alpha-01", "alpha-02"], 2)
    assert _ids(client, world, phase="arterial") == (["beta-01"], 1)
    assert _ids(client, world, sex="F") == (["alpha-01", "beta-01", "gamma-01"], 3)
    assert _ids(client, world, sex="M") == (["alpha-02", "beta-02"], 2)
    assert _ids(client, world, tumor="true") == (["alpha-01", "beta-01", "gamma-01"], 3)
    assert _ids(client, world, tumor="false") == (["alpha-02", "beta-02"], 2)
    assert _ids(client, world, manufacturer="Siemens") == (["alpha-01", "alpha-02", "gamma-01"], 3)
    assert _ids(client, world, manufacturer="GE") == (["beta-01"], 1)
    assert _ids(client, world, q="beta") == (["beta-01", "beta-02"], 2)
    assert _ids(client, world, q="-02") == (["alpha-02", "beta-02", "gamma-02"], 3)
    assert _ids(client, world, q="BETA") == (["beta-01", "beta-02"], 2)  # case-insensitive on both databases
    assert _ids(client, world, q="%") == ([], 0)  # LIKE wildcards are literal
    assert _ids(client, world, q="a_0") == ([], 0)
    assert _ids(client, world, age_min=40, age_max=70) == (["alpha-01", "alpha-02"], 2)
    assert _ids(client, world, age_min=71) == (["beta-01", "gamma-02"], 2)
    assert _ids(client, world, age_max=30) == (["gamma-01"], 1)
    assert _ids(client, world, site="JHH", sex="F") == (["alpha-01"], 1)
    assert _ids(client, world, site="JHH", tumor="true", phase="venous") == (["alpha-01"], 1)
    assert _ids(client, world, site="nowhere") == ([], 0)


@BOTH_DATABASES
def test_list_pages_in_case_id_order(client: TestClient, world: World, listed: dict) -> None:
    everything = sorted(LISTED)
    assert _ids(client, world, page=1, page_size=4) == (everything[:4], 6)
    assert _ids(client, world, page=2, page_size=4) == (everything[4:], 6)
    assert _ids(client, world, page=3, page_size=4) == ([], 6)
    assert _ids(client, world, page=2, page_size=2, site="JHH") == (["gamma-02"], 3)
    body = client.get(
        f"/api/projects/{world.project.id}/scans", params={"page": 2, "page_size": 4}, headers=world.headers["viewer"]
    ).json()
    assert (body["page"], body["page_size"]) == (2, 4)
    bad = client.get(f"/api/projects/{world.project.id}/scans", params={"page": 0}, headers=world.headers["viewer"])
    assert bad.status_code == 422


@BOTH_DATABASES
def test_scan_facets_count_each_value(client: TestClient, world: World, listed: dict) -> None:
    response = client.get(f"/api/projects/{world.project.id}/scan-facets", headers=world.headers["viewer"])
    assert response.status_code == 200
    facets = response.json()["facets"]
    assert facets["site"] == {"JHH": 3, "MSD": 2, "EU-MC": 1}
    assert facets["phase"] == {"venous": 2, "arterial": 1, "delay": 1, "non-contrast": 1, "unknown": 1}
    assert facets["sex"] == {"F": 3, "M": 2, "unknown": 1}
    assert facets["manufacturer"] == {"Siemens": 3, "GE": 1, "Philips": 1, "unknown": 1}
    assert facets["tumor"] == {"true": 3, "false": 2, "unknown": 1}
    assert facets["split"] == {"unknown": 6}
    # Facet values feed the filter menus: each one, used as a filter, finds exactly its count.
    for column in ("site", "phase", "sex", "manufacturer", "tumor"):
        for value, count in facets[column].items():
            if value != "unknown":
                assert _ids(client, world, **{column: value})[1] == count, (column, value)


def test_outsider_cannot_list_or_read(client: TestClient, world: World, listed: dict) -> None:
    outsider = world.headers["outsider"]
    assert client.get(f"/api/projects/{world.project.id}/scans", headers=outsider).status_code in (403, 404)
    scan_id = listed["alpha-01"]["id"]
    assert client.get(f"/api/scans/{scan_id}", headers=outsider).status_code in (403, 404)
    assert client.get(f"/api/scans/{scan_id}/volume", headers=outsider).status_code in (403, 404)
    assert client.get(f"/api/scans/{scan_id}/volume").status_code == 401


# --- PanTS folder import (service level) ---------------------------------------------------------------------

PANTS_IDS = ["PanTS_00000001", "PanTS_00000002", "PanTS_00000003"]


@pytest.fixture
def pants_dir(tmp_path: Path) -> Path:
    """Three phantom cases: case 1 lacks spleen, case 2 has float masks and LPS orientation; xlsx metadata."""
    root = tmp_path / "PanTS"
    ids = write_pants_dataset(
        root,
        3,
        shape=(64, 64, 32),
        spacing=(3.0, 3.0, 6.0),
        missing_structure={1: "spleen"},
        float_masks_cases={2},
        orientations={2: "LPS"},
        metadata_format="xlsx",
    )
    assert ids == PANTS_IDS
    # Pin the messy spellings the normaliser must handle (the generator picks them at random).
    from openpyxl import load_workbook

    book = load_workbook(root / "metadata.xlsx")
    sheet = book.worksheets[0]
    header = [cell.value for cell in sheet[1]]
    col = {name: header.index(name) + 1 for name in ("sex", "manufacturer", "ct phase", "age")}
    for row, (sex, maker, phase, age) in enumerate(
        [(" F", "SIEMENS ", "Venous", 63), ("M ", "Siemens Healthineers", "Arterial", None), ("", "", "", 41)],
        start=2,
    ):
        for name, value in (("sex", sex), ("manufacturer", maker), ("ct phase", phase), ("age", age)):
            sheet.cell(row, col[name]).value = value  # cell(row, col, None) would leave the old value
    book.save(root / "metadata.xlsx")
    return root


def _scans_of(db: Session, project_id: int) -> list[Scan]:
    return list(db.scalars(select(Scan).where(Scan.project_id == project_id).order_by(Scan.case_id)))


def _import_version(db: Session, scan: Scan) -> LabelVersion:
    versions = list(db.scalars(select(LabelVersion).where(LabelVersion.scan_id == scan.id)))
    assert len(versions) == 1
    assert versions[0].kind == "import"
    assert scan.head_version_id == versions[0].id
    return versions[0]


def _entries(db: Session, scan: Scan, version: LabelVersion) -> dict[str, Any]:
    by_id = {s.id: s.name for s in projects.structures_of(db, scan.project_id)}
    return {by_id[e.structure_id]: e for e in version.structures}


@BOTH_DATABASES
def test_pants_dataset_import(db: Session, blobs: LocalBlobStore, world: World, pants_dir: Path) -> None:
    project, lead = world.project, world.users["lead"]
    report = scans.import_pants_dataset(db, blobs, project, lead, pants_dir)
    assert report.imported == PANTS_IDS
    assert report.skipped == []
    assert "spleen" in report.missing_structures["PanTS_00000002"]
    assert "spleen" not in report.missing_structures["PanTS_00000001"]

    found = _scans_of(db, project.id)
    assert [s.case_id for s in found] == PANTS_IDS
    assert {s.split for s in found} == {"train"}
    assert [s.orientation for s in found] == ["RAS", "RAS", "LPS"]
    for scan in found:
        image = nib.load(pants_dir / "ImageTr" / scan.case_id / "ct.nii.gz")
        assert np.array_equal(np.asarray(scan.affine), image.affine)
        assert tuple(scan.shape) == image.shape == (64, 64, 32)

    # A structure file that is absent is 'missing' (unknown), not 'present' with zero voxels.
    second = _entries(db, found[1], _import_version(db, found[1]))
    assert second["spleen"].status == "missing"
    assert second["spleen"].manifest_digest is None
    assert second["liver"].status == "present" and second["liver"].voxel_count > 0
    assert second["femur_left"].status == "missing"  # in the schema, never drawn by the phantom
    first = _entries(db, found[0], _import_version(db, found[0]))
    assert first["spleen"].status == "present" and first["spleen"].voxel_count > 0

    # Float masks stored as 0.9999 binarise to exactly the ground truth.
    third_scan = found[2]
    third = _entries(db, third_scan, _import_version(db, third_scan))
    seg_dir = pants_dir / "LabelTr" / "PanTS_00000003" / "segmentations"
    checked = 0
    for path in sorted(seg_dir.glob("*.nii.gz")):
        name = path.name.removesuffix(".nii.gz")
        values = np.asarray(nib.load(path).dataobj)
        assert values.dtype == np.float32
        truth = values > 0
        if truth.any():
            assert float(values.max()) == pytest.approx(0.9999)
            checked += 1
        stored = labels.read_mask(blobs, third_scan, third[name])
        assert third[name].status == "present"
        assert np.array_equal(stored, truth), name
        assert third[name].voxel_count == int(truth.sum())
    assert checked >= 10

    # Normalised metadata columns, raw metadata verbatim.
    one, two, three = found
    assert (one.sex, one.manufacturer, one.phase, one.age) == ("F", "Siemens", "venous", 63)
    assert one.site == one.raw_metadata["site"] and one.site in ("JHH", "MSD", "EU-MC")
    assert (two.sex, two.manufacturer, two.phase, two.age) == ("M", "Siemens", "arterial", None)
    assert (three.sex, three.manufacturer, three.phase, three.age) == (None, None, None, 41)
    assert one.raw_metadata["sex"] == " F"
    assert one.raw_metadata["manufacturer"] == "SIEMENS "
    assert one.raw_metadata["BDMAP ID"] == "PanTS_00000001"
    assert one.raw_metadata["spacing"] == "(3.0, 3.0, 6.0)"
    assert two.raw_metadata["age"] == ""
    for scan in found:
        assert scan.header_spacing == [3.0, 3.0, 6.0]
        assert scan.slice_thickness is None  # PanTS has no slice thickness column; NIfTI none either
        tumor_raw = scan.raw_metadata["tumor?"]
        assert tumor_raw in ("0", "1")
        assert scan.tumor is (tumor_raw == "1")
        lesion = _entries(db, scan, _import_version(db, scan))["pancreatic_lesion"]
        assert (lesion.voxel_count > 0) is scan.tumor
    events = db.scalar(
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.project_id == project.id, AuditEvent.action == "scan.import")
    )
    assert events == 3

    # A rerun skips every existing case and creates nothing.
    versions_before = db.scalar(select(func.count()).select_from(LabelVersion))
    again = scans.import_pants_dataset(db, blobs, project, lead, pants_dir)
    assert again.imported == []
    assert again.skipped == PANTS_IDS
    assert again.missing_structures == {}
    assert [s.id for s in _scans_of(db, project.id)] == [s.id for s in found]
    assert db.scalar(select(func.count()).select_from(LabelVersion)) == versions_before


def test_pants_import_through_api_reads_back_masks(
    client: TestClient, db: Session, blobs: LocalBlobStore, world: World, pants_dir: Path
) -> None:
    """The imported float masks read back through the mask endpoint as the files' ground truth."""
    scans.import_pants_dataset(db, blobs, world.project, world.users["lead"], pants_dir)
    scan = _scans_of(db, world.project.id)[2]
    headers = world.headers["viewer"]
    seg_dir = pants_dir / "LabelTr" / scan.case_id / "segmentations"
    for name in ("liver", "pancreas", "veins"):
        truth = np.asarray(nib.load(seg_dir / f"{name}.nii.gz").dataobj) > 0
        assert np.array_equal(read_mask(client, headers, scan.head_version_id, name), truth)
    second = _scans_of(db, world.project.id)[1]
    missing = client.get(f"/api/versions/{second.head_version_id}/masks/spleen", headers=headers)
    assert missing.status_code == 404
    assert "missing" in missing.json()["detail"]


# --- the CLI --------------------------------------------------------------------------------------------------


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(VENV_BIN / "maskloop"), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def _counts_row(output: str) -> list[int]:
    """The numbers row of the import summary table (imported, skipped, cases with missing structures)."""
    lines = output.splitlines()
    header = next(i for i, line in enumerate(lines) if "imported" in line and "skipped" in line)
    for line in lines[header + 1 :]:
        numbers = [int(n) for n in re.findall(r"\d+", line)]
        if numbers:
            return numbers
    raise AssertionError(f"no counts row in:\n{output}")


@pytest.fixture
def cli_env(tmp_path: Path) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MASKLOOP_")}
    env.update({"MASKLOOP_DATA_DIR": str(tmp_path / "data"), "COLUMNS": "200", "NO_COLOR": "1"})
    yield env


@pytest.mark.slow
def test_cli_imports_a_pants_folder_and_resumes(tmp_path: Path, cli_env: dict[str, str]) -> None:
    dataset = tmp_path / "ds"
    write_pants_dataset(dataset, 2, shape=(32, 32, 16), spacing=(6.0, 6.0, 8.0), missing_structure={1: "spleen"})
    for args in (
        ["migrate"],
        ["create-user", "a@b.org", "--password", "longpassword", "--admin"],
        ["create-project", "demo", "--owner", "a@b.org"],
    ):
        done = _cli(args, cli_env, tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr

    first = _cli(["import", str(dataset), "--project", "demo"], cli_env, tmp_path)
    assert first.returncode == 0, first.stdout + first.stderr
    assert _counts_row(first.stdout) == [2, 0, 2]
    assert "PanTS_00000002: missing" in first.stdout and "spleen" in first.stdout

    second = _cli(["import", str(dataset), "--project", "demo"], cli_env, tmp_path)
    assert second.returncode == 0, second.stdout + second.stderr
    assert _counts_row(second.stdout) == [0, 2, 0]

    engine = create_engine(f"sqlite:///{tmp_path / 'data' / 'maskloop.db'}")
    try:
        with engine.connect() as conn:
            assert conn.scalar(select(func.count()).select_from(Scan)) == 2
            assert conn.scalar(select(func.count()).select_from(LabelVersion)) == 2
    finally:
        engine.dispose()
    assert (tmp_path / "data" / "blobs").is_dir()

    unknown = _cli(["import", str(dataset), "--project", "nope"], cli_env, tmp_path)
    assert unknown.returncode == 2
    assert "nope" in unknown.stdout


# --- DICOM upload ---------------------------------------------------------------------------------------------


def dicom_series(count: int = 6, step_mm: float = 5.0, series_uid: str | None = None) -> list[tuple[bytes, np.ndarray]]:
    """Slices made from pydicom's CT_small.dcm: positions step along z, pixels differ per slice; (bytes, HU)."""
    series_uid = series_uid or generate_uid()
    out = []
    for k in range(count):
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + step_mm * k]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.SeriesInstanceUID = series_uid
        ds.InstanceNumber = k + 1
        pixels = ds.pixel_array.astype(np.int16) + np.int16(7 * k)  # each slice distinguishable
        ds.PixelData = pixels.tobytes()
        hu = pixels.astype(np.int32) * int(ds.RescaleSlope) + int(ds.RescaleIntercept)
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append((buffer.getvalue(), hu))
    return out


@BOTH_DATABASES
def test_dicom_series_upload(client: TestClient, world: World) -> None:
    series = dicom_series()
    order = list(range(len(series)))
    random.Random(3).shuffle(order)
    assert order != sorted(order)
    files = [("files", (f"IM{i:04d}", series[i][0], "application/dicom")) for i in order]
    response = client.post(
        f"/api/projects/{world.project.id}/scans/dicom",
        headers=world.headers["lead"],
        files=files,
        data={"case_id": "ct-small"},
    )
    assert response.status_code == 201, response.text
    scan = response.json()
    assert scan["source_format"] == "dicom"
    assert scan["shape"] == [128, 128, 6]
    assert scan["orientation"] == "LPS"  # DICOM rows run to patient left, columns to posterior
    assert np.allclose(scan["spacing"], [0.661468, 0.661468, 5.0])
    assert scan["slice_thickness"] == pytest.approx(5.0)
    first = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    x0, y0, z0 = (float(v) for v in first.ImagePositionPatient)
    assert np.allclose(np.asarray(scan["affine"])[:3, 3], [-x0, -y0, z0], atol=1e-4)  # LPS -> RAS

    volume = client.get(f"/api/scans/{scan['id']}/volume", headers=world.headers["viewer"])
    assert volume.status_code == 200
    image = read_nifti(volume.content)
    data = np.asarray(image.get_fdata())
    assert data.shape == (128, 128, 6)
    for k, (_, hu) in enumerate(series):
        # data[i, j, k]: i runs along a row (DICOM column index), j down a column (DICOM row index).
        assert np.array_equal(data[:, :, k], hu.T), k
    assert np.allclose(image.affine, scan["affine"], atol=1e-4)
