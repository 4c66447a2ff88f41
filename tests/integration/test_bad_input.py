"""Bad input gets a 4xx that says what is wrong, and nothing is stored: no scan, no version, no audit, no blob.

The TestClient re-raises server exceptions, so any 500 fails these tests loudly.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
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

from backend.auth import service as auth_service
from backend.core.blobstore import LocalBlobStore
from backend.imaging import chunks
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import Phantom
from tests.conftest import World
from tests.factories import post_patch, small_phantom, upload_masks, upload_scan

pytestmark = pytest.mark.parametrize("database", ["postgresql", "sqlite"], indirect=True)

MIB = 1 << 20


@pytest.fixture(autouse=True)
def _fast_password_hashing(monkeypatch: pytest.MonkeyPatch) -> None:
    """The `world` fixture hashes six passwords; cheap argon2 parameters keep each test well under a second."""
    monkeypatch.setattr(auth_service, "_hasher", PasswordHasher(time_cost=1, memory_cost=8, parallelism=1))


@dataclass
class Labelled:
    """A phantom scan with an import version of a few structures, uploaded by the lead."""

    phantom: Phantom
    scan: dict[str, Any]
    version: dict[str, Any]


@pytest.fixture
def labelled(client: TestClient, world: World) -> Labelled:
    phantom = small_phantom(seed=1)
    lead = world.headers["lead"]
    scan = upload_scan(client, lead, world.project.id, phantom, "case-a")
    masks = {name: phantom.masks[name] for name in ("liver", "spleen", "pancreas")}
    version = upload_masks(client, lead, scan["id"], masks, phantom.affine)
    return Labelled(phantom, scan, version)


def stored_state(client: TestClient, world: World, blobs: LocalBlobStore) -> dict[str, Any]:
    """Everything a bad request must leave untouched, read through the API and the blob folder."""
    lead = world.headers["lead"]
    page = client.get(f"/api/projects/{world.project.id}/scans", params={"page_size": 500}, headers=lead).json()
    versions = {
        item["case_id"]: [v["id"] for v in client.get(f"/api/scans/{item['id']}/versions", headers=lead).json()]
        for item in page["items"]
    }
    heads = {item["case_id"]: item["head_version_id"] for item in page["items"]}
    audit_url = f"/api/projects/{world.project.id}/audit"
    audit = {
        action: client.get(audit_url, params={"action": action}, headers=lead).json()["total"]
        for action in ("scan.import", "label_version.create")
    }
    files = sorted(str(p.relative_to(blobs.root)) for p in blobs.root.rglob("*") if p.is_file())
    return {"scans": page["total"], "versions": versions, "heads": heads, "audit": audit, "blob_files": files}


@pytest.fixture
def unchanged(client: TestClient, world: World, blobs: LocalBlobStore) -> Callable[[], None]:
    """Call once before the bad request (implicitly, via the fixture) and once after: asserts nothing changed."""
    state: dict[str, Any] = {}

    def check() -> None:
        now = stored_state(client, world, blobs)
        if not state:
            state.update(now)
            return
        assert now == state

    return check


def assert_refused(response: Any, status: int, *phrases: str) -> dict[str, Any]:
    """The response has the status and a message holding every phrase (case-insensitive)."""
    assert response.status_code == status, response.text
    body = dict(response.json())
    detail = str(body["detail"]).lower()
    for phrase in phrases:
        assert phrase.lower() in detail, f"{phrase!r} not in {body['detail']!r}"
    return body


def nifti_bytes(data: np.ndarray, affine: np.ndarray | None = None) -> bytes:
    """Uncompressed NIfTI-1 bytes of any array (to_nifti_gz refuses nothing 2D/5D, but keep it explicit)."""
    image = nib.Nifti1Image(data, np.eye(4) if affine is None else affine, dtype=data.dtype)
    return bytes(image.to_bytes())


def post_scan(client: TestClient, world: World, content: bytes, filename: str = "x.nii.gz", **form: str) -> Any:
    return client.post(
        f"/api/projects/{world.project.id}/scans",
        headers=world.headers["lead"],
        files={"file": (filename, content, "application/gzip")},
        data=form,
    )


# --- scan uploads ---------------------------------------------------------------------------------------------


def _valid_gz() -> bytes:
    phantom = small_phantom(seed=2)
    return to_nifti_gz(phantom.volume, phantom.affine)


BAD_VOLUMES: list[Any] = [
    pytest.param(lambda: _valid_gz()[: len(_valid_gz()) // 2], ("truncated",), id="truncated-gzip"),
    pytest.param(
        lambda: gzip.compress(gzip.decompress(_valid_gz())[:-5000]), ("truncated", "voxel data"), id="truncated-voxels"
    ),
    pytest.param(lambda: np.random.default_rng(7).bytes(4096), ("not a nifti",), id="random-bytes"),
    pytest.param(lambda: b"\x1f\x8b" + np.random.default_rng(8).bytes(4096), ("gzip",), id="random-gzip-magic"),
    pytest.param(lambda: b"", ("empty",), id="empty-file"),
    pytest.param(lambda: b"NIfTI?", ("too short",), id="six-bytes"),
    pytest.param(lambda: nifti_bytes(np.zeros((16, 16), np.int16)), ("3d", "(16, 16)"), id="2d-array"),
    pytest.param(lambda: nifti_bytes(np.zeros((8, 8, 4, 2, 2), np.int16)), ("3d", "(8, 8, 4, 2, 2)"), id="5d-array"),
    pytest.param(lambda: nifti_bytes(np.zeros((8, 8, 4, 3), np.int16)), ("3d",), id="4d-array"),
    pytest.param(lambda: nifti_bytes(np.full((8, 8, 4), np.nan, np.float32)), ("nan",), id="nan-voxels"),
    pytest.param(lambda: nifti_bytes(np.zeros((8, 8, 4), np.complex64)), ("voxel type",), id="complex-voxels"),
]


@pytest.mark.parametrize(("make", "phrases"), BAD_VOLUMES)
def test_bad_volume_is_refused(
    client: TestClient, world: World, unchanged: Callable[[], None], make: Callable[[], bytes], phrases: tuple[str]
) -> None:
    unchanged()
    response = post_scan(client, world, make(), "bad.nii.gz", case_id="bad-1")
    assert_refused(response, 422, *phrases)
    unchanged()


@pytest.mark.parametrize(
    ("form", "phrases"),
    [
        pytest.param({"metadata": "{not json"}, ("metadata", "not valid json"), id="metadata-not-json"),
        pytest.param({"metadata": '["a", "b"]'}, ("metadata", "json object"), id="metadata-array"),
        pytest.param({"case_id": "../../etc/passwd"}, ("case id", "'../../etc/passwd'"), id="case-id-traversal"),
        pytest.param({"case_id": "a/b"}, ("case id", "'a/b'"), id="case-id-slash"),
        pytest.param({"case_id": "a\\b"}, ("case id",), id="case-id-backslash"),
        pytest.param({"case_id": ".hidden"}, ("case id",), id="case-id-dot"),
        pytest.param({"case_id": "x" * 201}, ("case id",), id="case-id-too-long"),
    ],
)
def test_bad_form_fields_are_refused(
    client: TestClient, world: World, unchanged: Callable[[], None], form: dict[str, str], phrases: tuple[str]
) -> None:
    unchanged()
    response = post_scan(client, world, _valid_gz(), "good.nii.gz", **form)
    assert_refused(response, 422, *phrases)
    unchanged()


def test_duplicate_case_id_is_a_conflict(client: TestClient, world: World, unchanged: Callable[[], None]) -> None:
    first = post_scan(client, world, _valid_gz(), "dup.nii.gz", case_id="dup")
    assert first.status_code == 201, first.text
    unchanged()
    other = to_nifti_gz(small_phantom(seed=9).volume, small_phantom(seed=9).affine)  # different bytes, same id
    body = assert_refused(post_scan(client, world, other, "dup.nii.gz", case_id="dup"), 409, "'dup'", "already exists")
    assert body["details"]["case_id"] == "dup"
    # The id implied by the file name collides just the same.
    assert_refused(post_scan(client, world, other, "dup.nii.gz"), 409, "already exists")
    unchanged()


@pytest.mark.parametrize("filename", ["../evil.nii.gz", "../../tmp/evil.nii.gz", "..\\..\\evil.nii.gz"])
def test_path_in_file_name_never_reaches_the_filesystem(
    client: TestClient, world: World, blobs: LocalBlobStore, tmp_path: Path, filename: str
) -> None:
    before = {p for p in tmp_path.rglob("*") if p.is_file()}
    content = _valid_gz()
    response = post_scan(client, world, content, filename)
    # The code takes the base name: the case id is sanitised rather than refused.
    assert response.status_code == 201, response.text
    scan = response.json()
    assert scan["case_id"] == "evil"
    assert "/" not in scan["case_id"] and "\\" not in scan["case_id"]
    digest = hashlib.sha256(content).hexdigest()
    written = {p for p in tmp_path.rglob("*") if p.is_file()} - before
    assert written == {blobs.root / digest[:2] / digest[2:4] / digest}  # one content-addressed blob, nothing else
    assert not (tmp_path / "evil.nii.gz").exists()
    assert not (blobs.root.parent.parent / "evil.nii.gz").exists()
    assert not Path("/tmp/evil.nii.gz").exists()


@pytest.mark.parametrize("filename", ["../../..nii.gz", "..nii.gz", "/.nii.gz"])
def test_file_name_without_a_usable_case_id_is_refused(
    client: TestClient, world: World, unchanged: Callable[[], None], filename: str
) -> None:
    unchanged()
    assert_refused(post_scan(client, world, _valid_gz(), filename), 422, "case id")
    unchanged()


def test_upload_over_the_limit_is_413(client: TestClient, world: World, unchanged: Callable[[], None]) -> None:
    unchanged()
    # Announced size over the limit: refused before the body is read.
    big = bytes(65 * MIB)
    response = post_scan(client, world, big, "big.nii.gz", case_id="big")
    assert_refused(response, 413, "upload limit of 64 MiB")
    del big, response
    # Just over the limit but within the announced-size slack: refused while reading the file.
    over = bytes(64 * MIB + 64 * 1024)
    response = post_scan(client, world, over, "big.nii.gz", case_id="big")
    assert_refused(response, 413, "big.nii.gz", "larger than the upload limit of 64 MiB")
    del over, response
    unchanged()


# --- DICOM uploads --------------------------------------------------------------------------------------------


def dicom_files(
    count: int = 4,
    *,
    second_series_from: int | None = None,
    skip: int | None = None,
    same_place: int | None = None,
    intercept: float | None = None,
) -> list[Any]:
    """Multipart `files` of a CT_small.dcm series: part moved to another series, a slice left out or doubled."""
    uids = (generate_uid(), generate_uid())
    out = []
    for k in range(count):
        if k == skip:
            continue
        ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
        x, y, z = (float(v) for v in ds.ImagePositionPatient)
        ds.ImagePositionPatient = [x, y, z + 5.0 * (k - 1 if k == same_place else k)]
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.InstanceNumber = k + 1
        if intercept is not None:
            ds.RescaleIntercept = intercept
        ds.SeriesInstanceUID = uids[1] if second_series_from is not None and k >= second_series_from else uids[0]
        buffer = io.BytesIO()
        ds.save_as(buffer, enforce_file_format=True)
        out.append(("files", (f"../slice{k}.dcm", buffer.getvalue(), "application/dicom")))
    return out


def post_dicom(client: TestClient, world: World, files: list[Any], case_id: str = "ct-1") -> Any:
    return client.post(
        f"/api/projects/{world.project.id}/scans/dicom",
        headers=world.headers["lead"],
        files=files,
        data={"case_id": case_id},
    )


@pytest.mark.parametrize(
    ("files", "case_id", "phrases"),
    [
        pytest.param(lambda: dicom_files(6, second_series_from=3), "ct-1", ("series", "3 files"), id="mixed-series"),
        pytest.param(lambda: dicom_files(5, skip=2), "ct-1", ("evenly spaced", "missing"), id="missing-slice"),
        pytest.param(lambda: dicom_files(4, same_place=2), "ct-1", ("duplicate slice",), id="dup-slice"),
        pytest.param(
            lambda: [("files", ("a.dcm", b"not dicom", "x"))],
            "ct-1",
            ("none of the 1 file(s) is a dicom file",),
            id="not-dicom",
        ),
        pytest.param(lambda: dicom_files(2), "../../etc/passwd", ("case id",), id="case-id-traversal"),
        # Used to overflow int64 in the exact-integer rescale path (a 500).
        pytest.param(lambda: dicom_files(2, intercept=1e39), "ct-1", ("float32 range",), id="huge-intercept"),
    ],
)
def test_bad_dicom_upload_is_refused(
    client: TestClient,
    world: World,
    unchanged: Callable[[], None],
    files: Callable[[], list[Any]],
    case_id: str,
    phrases: tuple[str, ...],
) -> None:
    unchanged()
    assert_refused(post_dicom(client, world, files(), case_id), 422, *phrases)
    unchanged()


def test_dicom_duplicate_case_id_is_a_conflict(client: TestClient, world: World, unchanged: Callable[[], None]) -> None:
    first = post_dicom(client, world, dicom_files(3), "ct-dup")
    assert first.status_code == 201, first.text
    assert first.json()["shape"] == [128, 128, 3]
    unchanged()
    assert_refused(post_dicom(client, world, dicom_files(3), "ct-dup"), 409, "already exists")
    unchanged()


# --- mask and label-map uploads -------------------------------------------------------------------------------


def post_masks(client: TestClient, world: World, labelled: Labelled, files: dict[str, bytes], **form: str) -> Any:
    data = {"base_version_id": str(labelled.version["id"]), **form}
    return client.post(
        f"/api/scans/{labelled.scan['id']}/versions",
        headers=world.headers["annotator"],
        files=[("files", (name, content, "application/gzip")) for name, content in files.items()],
        data=data,
    )


def _shifted(affine: np.ndarray, mm: float) -> np.ndarray:
    out = affine.copy()
    out[0, 3] += mm
    return out


BAD_MASKS: list[Any] = [
    pytest.param(
        lambda p: {"liver.nii.gz": to_nifti_gz(p.masks["liver"][:, :, :16].astype(np.uint8), p.affine)},
        ("liver.nii.gz", "shape (64, 64, 16)", "scan shape (64, 64, 32)"),
        id="mask-shape",
    ),
    pytest.param(
        lambda p: {"liver.nii.gz": to_nifti_gz(p.masks["liver"].astype(np.uint8), _shifted(p.affine, 5.0))},
        ("liver.nii.gz", "affine differs"),
        id="mask-affine",
    ),
    pytest.param(
        lambda p: {"liver.nii.gz": to_nifti_gz(p.masks["liver"].astype(np.uint8), np.diag([-3.0, -3.0, 6.0, 1.0]))},
        ("affine differs", "orientation lps"),
        id="mask-orientation",
    ),
    pytest.param(
        lambda p: {"kidneys.nii.gz": to_nifti_gz(p.masks["kidney_left"].astype(np.uint8), p.affine)},
        ("'kidneys'", "not in the project's label schema"),
        id="structure-not-in-schema",
    ),
    pytest.param(
        lambda p: {
            "liver.nii.gz": to_nifti_gz(p.masks["liver"].astype(np.uint8), p.affine),
            "spleen.nii.gz": b"\x1f\x8b\x08\x00garbage",
        },
        ("spleen.nii.gz",),
        id="second-file-corrupt",
    ),
    pytest.param(lambda p: {"liver.nii.gz": nifti_bytes(np.zeros((64, 64), np.uint8))}, ("3d",), id="mask-2d"),
]


@pytest.mark.parametrize(("make", "phrases"), BAD_MASKS)
def test_bad_mask_upload_is_refused(
    client: TestClient,
    world: World,
    labelled: Labelled,
    unchanged: Callable[[], None],
    make: Callable[[Phantom], dict[str, bytes]],
    phrases: tuple[str, ...],
) -> None:
    unchanged()
    assert_refused(post_masks(client, world, labelled, make(labelled.phantom)), 422, *phrases)
    unchanged()


def test_mask_upload_refuses_other_scans_base_and_model_kind(
    client: TestClient, world: World, labelled: Labelled, unchanged: Callable[[], None]
) -> None:
    other_phantom = small_phantom(seed=4)
    other = upload_scan(client, world.headers["lead"], world.project.id, other_phantom, "case-b")
    other_version = upload_masks(
        client, world.headers["lead"], other["id"], {"liver": other_phantom.masks["liver"]}, other_phantom.affine
    )
    unchanged()
    liver = {"liver.nii.gz": to_nifti_gz(labelled.phantom.masks["liver"].astype(np.uint8), labelled.phantom.affine)}
    response = post_masks(client, world, labelled, liver, base_version_id=str(other_version["id"]))
    assert_refused(response, 422, f"base version {other_version['id']}", f"scan {labelled.scan['id']}")
    assert_refused(post_masks(client, world, labelled, liver, kind="model"), 422, "service account")
    assert_refused(post_masks(client, world, labelled, liver, kind="fusion"), 422, "'fusion'")
    assert_refused(post_masks(client, world, labelled, liver, missing="kidneys"), 422, "'kidneys'")
    unchanged()


def post_label_map(client: TestClient, world: World, labelled: Labelled, label_map: np.ndarray) -> Any:
    return client.post(
        f"/api/scans/{labelled.scan['id']}/versions/combined",
        headers=world.headers["annotator"],
        files={"file": ("labels.nii.gz", to_nifti_gz(label_map, labelled.phantom.affine), "application/gzip")},
        data={"base_version_id": str(labelled.version["id"])},
    )


@pytest.mark.parametrize(
    ("value", "dtype", "phrases"),
    [
        pytest.param(99, np.uint8, ("[99]", "not in the project's schema"), id="value-99"),
        pytest.param(300, np.uint16, ("[300]", "not in the project's schema"), id="value-300"),
        pytest.param(-1, np.int16, ("negative label -1",), id="negative"),
        pytest.param(1.5, np.float32, ("non-integer", "1.5"), id="fraction"),
    ],
)
def test_label_map_with_values_outside_the_schema_is_refused(
    client: TestClient,
    world: World,
    labelled: Labelled,
    unchanged: Callable[[], None],
    value: float,
    dtype: type,
    phrases: tuple[str, ...],
) -> None:
    label_map = np.zeros(labelled.phantom.volume.shape, dtype=dtype)
    label_map[labelled.phantom.masks["liver"]] = 14
    label_map[3, 4, 5] = value
    unchanged()
    assert_refused(post_label_map(client, world, labelled, label_map), 422, *phrases)
    unchanged()


# --- patch saves ----------------------------------------------------------------------------------------------


def post_raw_patch(
    client: TestClient,
    world: World,
    labelled: Labelled,
    boxes: list[dict[str, Any]],
    parts: dict[str, Any],
    **meta: Any,
) -> Any:
    body = {"base_version_id": labelled.version["id"], "message": "bad", "patches": boxes, **meta}
    files = {name: (name, content, "application/octet-stream") for name, content in parts.items()}
    return client.post(
        f"/api/scans/{labelled.scan['id']}/versions/patch",
        headers=world.headers["annotator"],
        data={"meta": json.dumps(body)},
        files=files,
    )


def _box(structure: str, origin: list[int], size: list[int], encoding: str = "bits+gzip") -> dict[str, Any]:
    return {"structure": structure, "origin": origin, "size": size, "encoding": encoding, "part": "b0"}


ONES_4 = chunks.encode_box(np.ones((4, 4, 4), dtype=bool))

BAD_PATCHES: list[Any] = [
    pytest.param([_box("liver", [62, 0, 0], [4, 4, 4])], {"b0": ONES_4}, ("outside the volume", "axis 0"),
                 id="box-past-the-end"),
    pytest.param([_box("liver", [0, -1, 0], [4, 4, 4])], {"b0": ONES_4}, ("outside the volume", "axis 1"),
                 id="box-negative-origin"),
    pytest.param([_box("liver", [0, 0, 0], [4, 4, 0])], {"b0": ONES_4}, ("outside the volume",), id="box-empty"),
    pytest.param([_box("liver", [0, 0, 0], [4, 4, 8])], {"b0": ONES_4}, ("8 bytes", "needs 16"),
                 id="bits-too-short"),
    pytest.param([_box("liver", [0, 0, 0], [4, 4, 4], "u8")], {"b0": bytes(65)}, ("65 bytes", "needs 64"),
                 id="u8-too-long"),
    pytest.param([_box("liver", [0, 0, 0], [4, 4, 4], "u8")], {"b0": bytes([2]) * 64}, ("0 or 1",),
                 id="u8-not-binary"),
    pytest.param([_box("liver", [0, 0, 0], [4, 4, 4])], {"b0": b"\x1f\x8bnot gzip"}, ("gzip",), id="bad-gzip"),
    pytest.param([_box("liver", [0, 0, 0], [4, 4, 4], "rle")], {"b0": ONES_4}, ("encoding 'rle'",),
                 id="unknown-encoding"),
    pytest.param([_box("kidneys", [0, 0, 0], [4, 4, 4])], {"b0": ONES_4}, ("'kidneys'", "label schema"),
                 id="unknown-structure"),
    pytest.param([_box("liver", [0, 0, 0], [4, 4, 4])], {}, ("'b0'", "missing"), id="missing-part"),
]  # fmt: skip


@pytest.mark.parametrize(("boxes", "parts", "phrases"), BAD_PATCHES)
def test_bad_patch_is_refused(
    client: TestClient,
    world: World,
    labelled: Labelled,
    unchanged: Callable[[], None],
    boxes: list[dict[str, Any]],
    parts: dict[str, bytes],
    phrases: tuple[str, ...],
) -> None:
    unchanged()
    assert_refused(post_raw_patch(client, world, labelled, boxes, parts), 422, *phrases)
    unchanged()


def test_patch_meta_must_be_valid(
    client: TestClient, world: World, labelled: Labelled, unchanged: Callable[[], None]
) -> None:
    unchanged()
    url = f"/api/scans/{labelled.scan['id']}/versions/patch"
    headers = world.headers["annotator"]
    files = {"b0": ("b0", ONES_4, "application/octet-stream")}
    assert_refused(client.post(url, headers=headers, data={"meta": "{"}, files=files), 422, "patch meta is invalid")
    no_meta = client.post(url, headers=headers, data={"other": "x"}, files=files)
    assert_refused(no_meta, 422, "'meta' field")
    empty = json.dumps({"base_version_id": labelled.version["id"], "patches": []})
    assert_refused(client.post(url, headers=headers, data={"meta": empty}, files=files), 422, "patches")
    unchanged()


def test_patch_on_another_scans_version_is_refused(
    client: TestClient, world: World, labelled: Labelled, unchanged: Callable[[], None]
) -> None:
    other_phantom = small_phantom(seed=5)
    other = upload_scan(client, world.headers["lead"], world.project.id, other_phantom, "case-c")
    other_version = upload_masks(
        client, world.headers["lead"], other["id"], {"spleen": other_phantom.masks["spleen"]}, other_phantom.affine
    )
    unchanged()
    box = np.ones((4, 4, 4), dtype=bool)
    response = post_patch(
        client, world.headers["annotator"], labelled.scan["id"], other_version["id"], [("liver", (0, 0, 0), box)]
    )
    assert_refused(response, 422, f"base version {other_version['id']}", f"not a version of scan {labelled.scan['id']}")
    missing = post_patch(client, world.headers["annotator"], labelled.scan["id"], 10**9, [("liver", (0, 0, 0), box)])
    assert_refused(missing, 422, f"base version {10**9}")
    unchanged()


def test_refused_patch_with_one_good_box_writes_no_blob(
    client: TestClient, world: World, labelled: Labelled, unchanged: Callable[[], None]
) -> None:
    unchanged()
    good = np.zeros((4, 4, 4), dtype=bool)
    good[1, 2, 3] = True  # a chunk content that no stored mask has
    response = post_patch(
        client,
        world.headers["annotator"],
        labelled.scan["id"],
        labelled.version["id"],
        [("liver", (0, 0, 0), good), ("kidneys", (0, 0, 0), good)],
    )
    assert_refused(response, 422, "'kidneys'")
    unchanged()
