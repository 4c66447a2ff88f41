"""The real MONAI Label client (`monailabel.client.MONAILabelClient`, 0.8.5) against a live maskloop server.

One module-scoped stack: a PostgreSQL database, a Redis broker, one Celery worker (infer runs a real pre-annotation
job of the bundled classical model) and a uvicorn process on a free port. The client gets
`http://127.0.0.1:<port>/monailabel/<slug>/` as its server URL, exactly as 3D Slicer or OHIF would.
"""

from __future__ import annotations

import gzip
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from sqlalchemy import select

mlclient = pytest.importorskip(
    "monailabel.client.client",
    reason="monailabel is not importable: `pip install --no-deps monailabel==0.8.5` (see the Makefile)",
    exc_type=ImportError,
)

import nrrd  # noqa: E402

from backend.imaging.monailabel_io import read_label_upload  # noqa: E402
from backend.imaging.monailabel_write import write_combined_map  # noqa: E402
from backend.imaging.nifti import to_nifti_gz  # noqa: E402
from backend.imaging.phantom import Phantom  # noqa: E402
from backend.models import ScanTask, User  # noqa: E402
from backend.projects import service as projects  # noqa: E402
from backend.registry import service as registry  # noqa: E402
from tests.conftest import PASSWORD  # noqa: E402
from tests.factories import read_mask, small_phantom, upload_scan  # noqa: E402
from tests.integration.worker_stack import ROOT, Stack, build_stack  # noqa: E402

pytestmark = pytest.mark.slow

MONAILabelClient = mlclient.MONAILabelClient
MONAILabelClientException = mlclient.MONAILabelClientException
CASES = ("ml-1", "ml-2")
SIDE_CASES = ("infer-1", "nrrd-1")
PANCREAS_PARTS = ("pancreas_head", "pancreas_body", "pancreas_tail")


@dataclass
class Live:
    """The stack, the live server's MONAI Label base URL, and what was imported."""

    stack: Stack
    base: str
    url: str
    phantom: Phantom
    scan_ids: dict[str, int]
    other_case: str
    side_url: str
    tmp: Path


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_until_up(base: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"uvicorn exited:\n{log.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(f"{base}/api/auth/me", timeout=2)
        except urllib.error.HTTPError:
            return  # 401: the app answers
        except OSError:
            time.sleep(0.2)
            continue
        return
    pytest.fail(f"uvicorn did not answer within 60 s:\n{log.read_text()[-3000:]}")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """The stack with a worker, two scans for the annotator, a side project and another project, and the server."""
    tmp = tmp_path_factory.mktemp("monailabel-client")
    with build_stack(tmp) as stack:
        phantom = small_phantom(seed=7, lesion=False)
        lead = stack.headers["lead"]
        scan_ids = {case: int(upload_scan(stack.client, lead, stack.project.id, phantom, case)["id"]) for case in CASES}
        with stack.factory() as db:
            registry.ensure_classical_model(db, stack.blobs, stack.project.id)
            db.commit()
        with stack.factory() as db:
            admin = db.scalars(select(User).where(User.email == "admin@example.org")).one()
            lead_user = db.scalars(select(User).where(User.email == "lead@example.org")).one()
            other_id = projects.create_project(db, "ml-other", "Other", admin).id
            # A side project (the lead only) for infer and the .seg.nrrd save, out of the annotator's worklist.
            side_id = projects.create_project(db, "ml-side", "Side", admin).id
            projects.set_membership(db, side_id, lead_user, "lead", admin)
            registry.ensure_classical_model(db, stack.blobs, side_id)
            db.commit()
        upload_scan(stack.client, stack.headers["admin"], other_id, phantom, "other-only")
        for case in SIDE_CASES:
            scan_ids[case] = int(upload_scan(stack.client, stack.headers["admin"], side_id, phantom, case)["id"])
        stack.start_worker("w1")
        port = _free_port()
        log = tmp / "server.log"
        env = {**stack.env, "PYTHONUNBUFFERED": "1", "MASKLOOP_FRONTEND_DIST": str(tmp / "no-frontend")}
        command = [sys.executable, "-m", "uvicorn", "backend.main:app", "--host", "127.0.0.1", "--port", str(port)]
        with log.open("wb") as handle:
            process = subprocess.Popen(
                [*command, "--log-level", "warning"], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT
            )
        base = f"http://127.0.0.1:{port}"
        try:
            _wait_until_up(base, process, log)
            url = f"{base}/monailabel/{stack.project.slug}/"
            yield Live(stack, base, url, phantom, scan_ids, "other-only", f"{base}/monailabel/ml-side/", tmp)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=15)


def _signed_in(live: Live, role: str, client_id: str, url: str | None = None) -> Any:
    """A MONAILabelClient signed in with the role's e-mail and password (as Slicer's login dialog does)."""
    client = MONAILabelClient(
        url or live.url, tmpdir=tempfile.mkdtemp(prefix="mlc-", dir=live.tmp), client_id=client_id
    )
    assert client.auth_enabled() is True
    client.update_auth(client.auth_token(f"{role}@example.org", PASSWORD))
    return client


def _fresh_headers(client: Any) -> None:
    """The 0.8.5 client's multipart calls leave content-type/length in its shared headers; keep only the bearer."""
    auth = client._headers.get("Authorization")
    client._headers.clear()
    if auth:
        client._headers["Authorization"] = auth


def _get(client: Any, selector: str) -> bytes:
    """A GET of a client-relative path with the client's bearer, the way Slicer fetches an image."""
    url = client.get_server_url() + "/" + selector.lstrip("/")
    request = urllib.request.Request(url, headers={"Authorization": client._headers["Authorization"]})
    with urllib.request.urlopen(request, timeout=30) as response:
        return bytes(response.read())


def _status_of(error: BaseException) -> str:
    return str(getattr(error, "msg", error))


def _nifti(data: bytes) -> nib.Nifti1Image:
    return nib.Nifti1Image.from_bytes(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)


def _case_task(live: Live, case: str) -> dict[str, Any]:
    response = live.stack.client.get(f"/api/scans/{live.scan_ids[case]}/task", headers=live.stack.headers["lead"])
    assert response.status_code == 200, response.text
    return dict(response.json())


def _version(live: Live, version_id: int) -> dict[str, Any]:
    response = live.stack.client.get(f"/api/versions/{version_id}", headers=live.stack.headers["lead"])
    assert response.status_code == 200, response.text
    return dict(response.json())


def test_info_lists_the_schema_and_the_classical_model(live: Live) -> None:
    client = _signed_in(live, "annotator", "slicer-info")
    assert client.auth_valid_token() is True
    info = client.info()
    assert "pancreas_head" in info["labels"] and "liver" in info["labels"]
    model = info["models"][registry.CLASSICAL_MODEL_NAME]
    assert model["type"] == "segmentation" and model["dimension"] == 3
    assert "liver" in model["labels"]
    assert {"priority", "random", "first"} <= set(info["strategies"])
    assert info["datastore"]["total"] == len(CASES)


def test_wrong_token_and_wrong_password_are_401(live: Live) -> None:
    client = MONAILabelClient(live.url, client_id="bad")
    with pytest.raises(MONAILabelClientException) as failed:
        client.auth_token("annotator@example.org", "not-the-password")
    assert "Status: 401" in _status_of(failed.value)
    client.update_auth({"token_type": "Bearer", "access_token": "not-a-token"})
    assert client.auth_valid_token() is False
    with pytest.raises(MONAILabelClientException) as failed:
        client.info()
    assert "Status: 401" in _status_of(failed.value)


def test_a_scan_of_another_project_is_404(live: Live) -> None:
    client = _signed_in(live, "lead", "slicer-other")
    with pytest.raises(MONAILabelClientException) as failed:
        client.download_label(live.other_case, "final")
    assert "Status: 404" in _status_of(failed.value)
    with pytest.raises(urllib.error.HTTPError) as http:
        _get(client, f"datastore/image?image={live.other_case}")
    assert http.value.code == 404
    with pytest.raises(MONAILabelClientException) as failed:
        client.infer(registry.CLASSICAL_MODEL_NAME, live.other_case, {})
    assert "Status: 404" in _status_of(failed.value)


def test_next_sample_save_stale_save_and_approved_scan(live: Live) -> None:
    first = _signed_in(live, "annotator", "slicer-1")
    second = _signed_in(live, "annotator", "slicer-2")
    sample = first.next_sample("priority", {})
    case = sample["id"]
    assert case in CASES, sample
    # The lease is maskloop's: its own task view shows the caller holding it.
    task = _case_task(live, case)
    me = live.stack.client.get("/api/auth/me", headers=live.stack.headers["annotator"]).json()
    assert task["lease"] is not None and task["lease"]["user_id"] == me["id"], task
    # The image is the scan, voxel for voxel, on the scan's grid.
    image = _nifti(_get(first, f"datastore/image?image={case}"))
    assert np.array_equal(np.asarray(image.dataobj), live.phantom.volume.astype(np.asarray(image.dataobj).dtype))
    assert np.allclose(image.affine, live.phantom.affine, atol=1e-4)
    # A second client of the same person takes the same scan with the same head.
    assert second.next_sample("priority", {})["id"] == case
    before = _case_task(live, case)["head_version_id"]

    # Save: liver and spleen as a combined .nii.gz map, as Slicer sends it.
    indices = {"liver": 1, "spleen": 2}
    combined = np.zeros(live.phantom.volume.shape, dtype=np.uint8)
    for name, index in indices.items():
        combined[live.phantom.masks[name].astype(bool)] = index
    path = Path(first._tmpdir) / "label.nii.gz"
    path.write_bytes(to_nifti_gz(combined, live.phantom.affine))
    label_info = [{"name": name, "idx": index} for name, index in indices.items()]
    saved = first.save_label(case, str(path), tag="final", params={"label_info": label_info})
    assert saved["image"] == case, saved
    # The 0.8.5 client now sends its multipart content-type/length with every later GET, as Slicer's copy does:
    # the server still answers them.
    assert "content-length" in first._headers
    assert first.info()["datastore"]["total"] == len(CASES)
    _fresh_headers(first)
    head = _case_task(live, case)["head_version_id"]
    assert head is not None and head != before
    version = _version(live, int(head))
    assert version["author"]["display_name"] == "Annotator" and version["kind"] == "human", version
    assert version["parent_id"] == before
    downloaded = np.asarray(_nifti(Path(first.download_label(case, "final")).read_bytes()).dataobj)
    info_labels = first.info()["labels"]
    _fresh_headers(first)
    for name in indices:  # the head's combined map, in the schema's label values
        value = info_labels.index(name) + 1 if isinstance(info_labels, list) else int(info_labels[name])
        assert np.array_equal(downloaded == value, live.phantom.masks[name].astype(bool)), name
    for name in indices:
        stored = read_mask(live.stack.client, live.stack.headers["lead"], int(head), name)
        assert np.array_equal(stored, live.phantom.masks[name].astype(bool)), name

    # The second client still works on the head it was given: a 409, shown by the client as "Status: 409".
    with pytest.raises(MONAILabelClientException) as stale:
        second.save_label(case, str(path), tag="final", params={"label_info": label_info})
    assert "Status: 409" in _status_of(stale.value)
    assert '"head_author":"Annotator"' in _status_of(stale.value).replace(" ", "")
    assert _case_task(live, case)["head_version_id"] == head

    # Approved: every save is refused.
    with live.stack.factory() as db:
        row = db.get(ScanTask, live.scan_ids[case])
        assert row is not None
        row.state, row.approved_version_id = "approved", head
        row.lease_user_id = row.lease_expires_at = row.lease_heartbeat_at = None
        db.commit()
    third = _signed_in(live, "annotator", "slicer-3")
    with pytest.raises(MONAILabelClientException) as approved:
        third.save_label(case, str(path), tag="final", params={"label_info": label_info})
    assert "Status: 409" in _status_of(approved.value)
    assert "scan_approved" in _status_of(approved.value)
    assert _case_task(live, case)["head_version_id"] == head


def _prediction_masks(live: Live, case: str, names: dict[str, int]) -> dict[str, np.ndarray]:
    """The masks of maskloop's newest prediction of a scan, read through maskloop's own API."""
    lead = live.stack.headers["lead"]
    predictions = live.stack.client.get(f"/api/scans/{live.scan_ids[case]}/predictions", headers=lead).json()
    assert predictions, "infer left no prediction in maskloop"
    version_id = max(int(p["label_version_id"]) for p in predictions)
    masks: dict[str, np.ndarray] = {}
    for name in names:
        stored = live.stack.client.get(f"/api/versions/{version_id}/masks/{name}", headers=lead)
        if stored.status_code != 404:  # 404: a structure the model does not segment (recorded as missing)
            masks[name] = read_mask(live.stack.client, lead, version_id, name)
    assert masks and sum(int(m.sum()) for m in masks.values()) > 0
    return masks


def test_infer_returns_maskloops_own_prediction(live: Live) -> None:
    client = _signed_in(live, "lead", "slicer-infer", live.side_url)
    case = "infer-1"
    label_path, params = client.infer(registry.CLASSICAL_MODEL_NAME, case, {})
    _fresh_headers(client)
    assert label_path is not None and os.path.exists(label_path)
    names: dict[str, int] = {k: int(v) for k, v in params["label_names"].items() if int(v)}
    label = np.asarray(_nifti(Path(label_path).read_bytes()).dataobj)
    assert label.shape == live.phantom.volume.shape
    ours = _prediction_masks(live, case, names)
    # A combined map is maskloop's prediction painted as maskloop paints it (overlaps: the smaller one shows).
    expected = np.asarray(_nifti(write_combined_map(ours, names, live.phantom.affine)).dataobj)
    assert np.array_equal(label, expected)
    for name, mask in ours.items():
        assert not ((label == names[name]) & ~mask).any(), name

    # As a .seg.nrrd (Slicer's result_extension) nothing is flattened: every structure equals maskloop's, overlaps too.
    nrrd_path, params = client.infer(registry.CLASSICAL_MODEL_NAME, case, {"result_extension": ".nrrd"})
    _fresh_headers(client)
    assert nrrd_path is not None
    ours = _prediction_masks(live, case, names)
    segments = read_label_upload(
        os.path.basename(nrrd_path),
        Path(nrrd_path).read_bytes(),
        shape=live.phantom.volume.shape,
        affine=live.phantom.affine,
        label_info=None,
        schema_indices=names,
        parents={},
    )
    for name, mask in ours.items():
        assert np.array_equal(segments[name].astype(bool), mask), name


def _seg_nrrd(path: Path, masks: dict[str, np.ndarray], affine: np.ndarray) -> None:
    """A Slicer-style .seg.nrrd: one layer per group of disjoint segments (pancreas overlaps its parts)."""
    layers = [
        [(name, masks[name]) for name in PANCREAS_PARTS],
        [("pancreas", masks["pancreas"])],
    ]
    shape = next(iter(masks.values())).shape
    data = np.zeros((len(layers), *shape), dtype=np.uint8)
    header: dict[str, Any] = {}
    lps = np.diag([-1.0, -1.0, 1.0])
    number = 0
    for layer_index, layer in enumerate(layers):
        for value, (name, mask) in enumerate(layer, start=1):
            data[layer_index][mask] = value
            header[f"Segment{number}_ID"] = name
            header[f"Segment{number}_Name"] = name
            header[f"Segment{number}_Layer"] = str(layer_index)
            header[f"Segment{number}_LabelValue"] = str(value)
            header[f"Segment{number}_Color"] = "0.5 0.5 0.5"
            header[f"Segment{number}_Extent"] = " ".join(f"0 {s - 1}" for s in shape)
            number += 1
    directions = np.full((4, 3), np.nan)
    directions[1:] = (lps @ affine[:3, :3]).T
    header.update(
        {
            "kinds": ["list", "domain", "domain", "domain"],
            "space": "left-posterior-superior",
            "space directions": directions,
            "space origin": lps @ affine[:3, 3],
            "encoding": "gzip",
        }
    )
    nrrd.write(str(path), data, header)


def test_overlapping_seg_nrrd_round_trips_without_flattening(live: Live) -> None:
    client = _signed_in(live, "lead", "slicer-nrrd", live.side_url)
    case = "nrrd-1"
    before = _case_task(live, case)["head_version_id"]
    masks = {name: live.phantom.masks[name].astype(bool) for name in (*PANCREAS_PARTS, "pancreas")}
    assert all(masks[part].any() for part in PANCREAS_PARTS)
    assert (masks["pancreas"] & masks["pancreas_head"]).any()  # the overlap that a combined map would lose
    path = Path(client._tmpdir) / "pancreas.seg.nrrd"
    _seg_nrrd(path, masks, live.phantom.affine)
    saved = client.save_label(case, str(path), tag="final", params={})
    _fresh_headers(client)
    assert saved["image"] == case
    head = int(_case_task(live, case)["head_version_id"])
    assert head != before and _version(live, head)["author"]["display_name"] == "Lead"
    for name, expected in masks.items():
        stored = read_mask(live.stack.client, live.stack.headers["lead"], head, name)
        assert np.array_equal(stored, expected), name
