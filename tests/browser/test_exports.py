"""The exports page: a lead queues a PanTS export, follows the job (run by `maskloop serve`'s solo worker) until
it succeeds and downloads a non-empty .tar.gz with the session's token; 4xx errors are shown; an nnU-Net export
with chosen options (test split in its own folders, ignore label, dataset id/name, structures) shows its dataset
card and downloads an archive that holds exactly that; an annotator gets no Exports link and "Not allowed" on the
URL."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import Any

import httpx
import nibabel as nib
import numpy as np
import pytest
from playwright.sync_api import Page, expect

from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import generate_phantom
from tests.browser.conftest import (
    ANNOTATOR,
    LEAD,
    SHAPE,
    SPACING,
    LabelledScan,
    Server,
    screenshot,
    sign_in_with_token,
    wait_ready,
)
from tests.factories import upload_masks

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_lead_exports_pants_and_downloads_the_archive(page: Page, server: Server, make_scan: Any) -> None:
    labelled: LabelledScan = make_scan("RAS", seed=61)
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-exports").click()
    expect(page.get_by_test_id("export-form")).to_be_visible()
    wait_ready(page)
    # The version choice lists what the API advertises (last approved first and preselected, head, promoted models).
    advertised = server.get(f"/api/projects/{server.project_id}/export-options", LEAD)
    options = page.get_by_test_id("export-version").locator("option").evaluate_all("els => els.map(e => e.value)")
    assert options == advertised["versions"] and options[:2] == ["approved", "head"]
    expect(page.get_by_test_id("export-version")).to_have_value("approved")
    # A 4xx from the server is shown as it is (an unknown scan id).
    page.get_by_test_id("export-scans").select_option("ids")
    page.get_by_test_id("export-scan-ids").fill("999999")
    page.get_by_test_id("export-start").click()
    expect(page.get_by_test_id("export-error")).to_contain_text("999999")
    expect(page.get_by_test_id("export-error")).to_contain_text("not found")
    # A PanTS export of the new scan's head version, two structures.
    page.get_by_test_id("export-format").select_option("pants")
    page.get_by_test_id("export-version").select_option("head")
    page.get_by_test_id("export-all-structures").uncheck()
    page.get_by_test_id("export-structure-liver").check()
    page.get_by_test_id("export-structure-spleen").check()
    page.get_by_test_id("export-scan-ids").fill(str(labelled.id))
    page.get_by_test_id("export-start").click()
    expect(page.get_by_test_id("export-error")).to_be_hidden()
    jobs = server.get(f"/api/projects/{server.project_id}/jobs?kind=export&page_size=5", LEAD)["items"]
    job = jobs[0]
    assert job["params"]["format"] == "pants" and job["params"]["scan_ids"] == [labelled.id]
    assert sorted(job["params"]["structures"]) == ["liver", "spleen"]
    row = page.get_by_test_id(f"export-row-{job['id']}")
    expect(row).to_be_visible()
    # The solo worker runs it; the page follows the job until it has succeeded.
    expect(page.get_by_test_id(f"export-status-{job['id']}")).to_have_attribute(
        "data-status", "succeeded", timeout=180_000
    )
    assert server.get(f"/api/jobs/{job['id']}", LEAD)["status"] == "succeeded"
    screenshot(page, "lead-exports")
    with page.expect_download() as info:
        page.get_by_test_id(f"export-download-{job['id']}").click()
    download = info.value
    assert download.suggested_filename.endswith(".tar.gz")
    data = Path(download.path()).read_bytes()
    assert len(data) > 0
    hooked = page.evaluate("window.maskloop.exports().lastDownload")
    assert hooked["job"] == job["id"] and hooked["bytes"] == len(data)
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        names = tar.getnames()
    assert any(labelled.scan["case_id"] in n for n in names), names[:20]


def test_annotator_has_no_exports_page(page: Page, server: Server) -> None:
    sign_in_with_token(page, server, ANNOTATOR)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    expect(page.get_by_test_id("worklist")).to_be_visible()
    expect(page.get_by_test_id("nav-exports")).to_have_count(0)
    page.goto(f"{server.base}/#/exports?project={server.project_id}")
    wait_ready(page)
    refusal = page.get_by_test_id("not-allowed")
    expect(refusal).to_contain_text("Not allowed")
    expect(refusal).to_contain_text("exports page")
    expect(refusal).to_contain_text("annotator")
    expect(page.get_by_test_id("export-form")).to_have_count(0)
    # The API agrees.
    response = httpx.post(
        f"{server.base}/api/projects/{server.project_id}/exports",
        json={"format": "pants"},
        headers=server.headers(ANNOTATOR),
        timeout=30,
    )
    assert response.status_code in (403, 404)


def import_in_split(server: Server, seed: int, split: str, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """A phantom imported in a split, its masks (less `drop`, which are then missing) as the first version."""
    phantom = generate_phantom(SHAPE, SPACING, seed=seed)
    case = f"EXPORT_{split.upper()}_{seed}_{os.getpid()}"
    with server.client() as client:
        lead = server.headers(LEAD)
        created = client.post(
            f"/api/projects/{server.project_id}/scans",
            headers=lead,
            files={"file": (f"{case}.nii.gz", to_nifti_gz(phantom.volume, phantom.affine), "application/gzip")},
            data={"case_id": case, "split": split},
        )
        assert created.status_code == 201, created.text
        masks = {k: v for k, v in phantom.masks.items() if v.any() and k not in drop}
        upload_masks(client, lead, created.json()["id"], masks, phantom.affine)  # type: ignore[arg-type]
    return dict(created.json())


def test_nnunet_export_with_chosen_options_holds_what_was_asked(page: Page, server: Server) -> None:
    train = import_in_split(server, 81, "train")
    test = import_in_split(server, 82, "test", drop=("spleen",))
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/exports?project={server.project_id}")
    wait_ready(page)
    advertised = server.get(f"/api/projects/{server.project_id}/export-options", LEAD)
    assert advertised["splits"]["test"] >= 1 and advertised["splits"]["train"] >= 1
    # The form offers what the API advertises, with its defaults.
    for testid, values, default in (
        ("export-format", advertised["formats"], advertised["formats"][0]),
        ("export-test-split", advertised["test_split_modes"], advertised["default_test_split"]),
    ):
        got = page.get_by_test_id(testid).locator("option").evaluate_all("els => els.map(e => e.value)")
        assert got == values, testid
        expect(page.get_by_test_id(testid)).to_have_value(default)
    expect(page.get_by_test_id("export-project-counts")).to_contain_text(f"test {advertised['splits']['test']}")
    # nnU-Net options appear with the format; the ignore label is on by default.
    expect(page.get_by_test_id("export-nnunet-options")).to_be_hidden()
    page.get_by_test_id("export-format").select_option("nnunet")
    expect(page.get_by_test_id("export-nnunet-options")).to_be_visible()
    expect(page.get_by_test_id("export-ignore-label")).to_be_checked()
    expect(page.get_by_test_id("export-folder-name")).to_be_hidden()
    page.get_by_test_id("export-version").select_option("head")
    page.get_by_test_id("export-test-split").select_option("separate")
    page.get_by_test_id("export-dataset-id").fill("18")
    page.get_by_test_id("export-dataset-name").fill("BrowserSplits")
    page.get_by_test_id("export-all-structures").uncheck()
    for name in ("liver", "spleen", "pancreas"):
        page.get_by_test_id(f"export-structure-{name}").check()
    page.get_by_test_id("export-scans").select_option("ids")
    page.get_by_test_id("export-scan-ids").fill(f"{train['id']}, {test['id']}")
    page.get_by_test_id("export-start").click()
    expect(page.get_by_test_id("export-error")).to_be_hidden()
    job = server.get(f"/api/projects/{server.project_id}/jobs?kind=export&page_size=1", LEAD)["items"][0]
    params = job["params"]
    assert params["format"] == "nnunet" and params["version"] == "head" and params["test_split"] == "separate"
    assert params["ignore_label"] is True and params["dataset_id"] == 18 and params["dataset_name"] == "BrowserSplits"
    assert sorted(params["scan_ids"]) == sorted([train["id"], test["id"]])
    expect(page.get_by_test_id(f"export-status-{job['id']}")).to_have_attribute(
        "data-status", "succeeded", timeout=180_000
    )
    result = server.get(f"/api/jobs/{job['id']}", LEAD)["result"]

    # The dataset card's figures: one case per folder, the test case with a missing structure under `ignore`.
    card = page.get_by_test_id(f"export-card-{job['id']}")
    card.locator("summary").click()
    expect(page.get_by_test_id(f"export-card-{job['id']}-exported")).to_have_text(
        "2 (training folders 1, test folders 1)"
    )
    expect(page.get_by_test_id(f"export-card-{job['id']}-missing")).to_contain_text("1 · label 4 “ignore”")
    expect(page.get_by_test_id(f"export-card-{job['id']}-sha256")).to_have_text(result["archive_digest"])
    screenshot(page, "lead-exports-nnunet")

    with page.expect_download() as info:
        page.get_by_test_id(f"export-download-{job['id']}").click()
    data = Path(info.value.path()).read_bytes()
    assert hashlib.sha256(data).hexdigest() == result["archive_digest"]
    files: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            assert handle is not None
            files[member.name] = handle.read()
    top = "Dataset018_BrowserSplits"
    assert all(name.startswith(top + "/") for name in files), list(files)[:5]
    names = {name[len(top) + 1 :] for name in files}
    tr, ts = train["case_id"], test["case_id"]
    # The test case only in the test folders, the training case only in the training folders.
    assert {f"imagesTr/{tr}_0000.nii.gz", f"labelsTr/{tr}.nii.gz"} <= names
    assert {f"imagesTs/{ts}_0000.nii.gz", f"labelsTs/{ts}.nii.gz"} <= names
    assert not [n for n in names if ts in n and ("imagesTr/" in n or "labelsTr/" in n)]
    assert not [n for n in names if tr in n and ("imagesTs/" in n or "labelsTs/" in n)]
    assert {"README.md", "SHA256SUMS", "cases.csv", "dataset.json"} <= names
    dataset = json.loads(files[f"{top}/dataset.json"])
    assert set(dataset["labels"]) == {"background", "liver", "spleen", "pancreas", "ignore"}
    assert dataset["labels"]["ignore"] == 4 and dataset["labels"]["background"] == 0
    assert dataset["numTraining"] == 1
    # Where the spleen is missing, every voxel not labelled with another structure is `ignore`: no background.
    labels = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(files[f"{top}/labelsTs/{ts}.nii.gz"])).dataobj)
    assert 0 not in np.unique(labels) and 4 in np.unique(labels)
    assert dataset["labels"]["spleen"] not in np.unique(labels)
    # The training case keeps background.
    labels_tr = np.asarray(nib.Nifti1Image.from_bytes(gzip.decompress(files[f"{top}/labelsTr/{tr}.nii.gz"])).dataobj)
    assert 0 in np.unique(labels_tr) and 4 not in np.unique(labels_tr)
    # SHA256SUMS lists every other file with its digest.
    listed = {}
    for line in files[f"{top}/SHA256SUMS"].decode().splitlines():
        digest, name = line.split(None, 1)
        listed[name.lstrip("*")] = digest
    assert set(listed) == names - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256(files[f"{top}/{name}"]).hexdigest() == digest, name
    readme = files[f"{top}/README.md"].decode()
    assert ts in readme and tr in readme
