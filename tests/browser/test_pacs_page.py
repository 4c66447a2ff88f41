"""The PACS page against a real Orthanc: a lead configures the project's DICOMweb source (the password is never
shown back), searches studies over QIDO-RS, sees the series with the choice rules' pick, retrieves it into a scan
(the job succeeds, run by `maskloop serve`'s solo worker), and a STOW of a scan with no approved version is refused
with the server's reason."""

from __future__ import annotations

import os

import numpy as np
import pytest
from playwright.sync_api import Page, expect
from pydicom.uid import generate_uid

from backend.imaging.phantom import generate_phantom
from tests.browser.conftest import LEAD, SHAPE, SPACING, Server, sign_in_with_token, wait_ready
from tests.orthanc import OrthancServer, Patient, ct_series

pytestmark = [pytest.mark.browser, pytest.mark.slow]


def test_lead_searches_the_pacs_and_retrieves_the_chosen_series(
    page: Page, server: Server, orthanc: OrthancServer
) -> None:
    phantom = generate_phantom(SHAPE, SPACING, seed=41, lesion=False)
    patient = Patient(f"PID-PACSPAGE-{os.getpid()}", accession="ACCPAGE")
    study, frame = generate_uid(), generate_uid()
    thin = ct_series(
        phantom.volume,
        phantom.affine,
        patient,
        study_uid=study,
        series_number=3,
        description="Abdomen venous",
        contrast="IOPAMIDOL",
        frame_uid=frame,
    )
    thick_affine = phantom.affine @ np.diag([1.0, 1.0, 2.0, 1.0])
    thick = ct_series(
        phantom.volume[:, :, ::2],
        thick_affine,
        patient,
        study_uid=study,
        series_number=2,
        description="Abdomen thick",
        contrast="IOPAMIDOL",
        frame_uid=frame,
    )
    orthanc.store([*thick, *thin])
    thin_uid = str(thin[0].SeriesInstanceUID)

    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/")
    wait_ready(page)
    page.get_by_test_id("nav-pacs").click()
    page.get_by_test_id("pacs-url").fill(orthanc.dicomweb_url)
    page.get_by_test_id("pacs-user").fill(orthanc.username)
    page.get_by_test_id("pacs-password").fill(orthanc.password)
    page.get_by_test_id("pacs-save").click()
    expect(page.get_by_test_id("pacs-source-note")).to_have_text("Saved with a stored password.")
    # Opened again: the password is stored, never shown back.
    page.reload()
    expect(page.get_by_test_id("pacs-source-note")).to_contain_text("with a stored password")
    expect(page.get_by_test_id("pacs-password")).to_have_value("")
    assert orthanc.password not in page.content()

    page.get_by_test_id("pacs-patient").fill(patient.patient_id)
    page.get_by_test_id("pacs-date").fill("2024-06-01 to 2024-06-30")
    page.get_by_test_id("pacs-search-go").click()
    row = page.get_by_test_id(f"pacs-study-{study}")
    expect(row).to_contain_text("ACCPAGE")
    page.get_by_test_id(f"pacs-series-{study}").click()
    chosen = page.get_by_test_id(f"pacs-series-row-{thin_uid}")
    expect(chosen).to_have_attribute("data-chosen", "true")
    expect(chosen).to_contain_text("the rules’ pick")
    expect(row.locator("li[data-chosen=false]")).to_have_count(1)

    page.get_by_test_id(f"pacs-retrieve-{thin_uid}").click()
    job = page.get_by_test_id("pacs-jobs").locator("li").first
    expect(job).to_have_attribute("data-status", "succeeded", timeout=240_000)
    job_id = int(str(job.get_attribute("data-testid")).rsplit("-", 1)[1])
    done = server.get(f"/api/jobs/{job_id}", LEAD)
    scan = server.get(f"/api/scans/{done['scan_id'] or done['result']['scan_id']}", LEAD)
    expect(job).to_contain_text(f"scan #{scan['id']}")

    # STOW needs an approved version: the refusal names the reason.
    page.get_by_test_id("pacs-stow-scan").fill(str(scan["id"]))
    page.get_by_test_id("pacs-stow-go").click()
    expect(page.get_by_test_id("pacs-stow-error")).to_contain_text("409")


def test_a_bad_search_is_explained_before_it_is_sent(page: Page, server: Server) -> None:
    sign_in_with_token(page, server, LEAD)
    page.goto(f"{server.base}/#/pacs?project={server.project_id}")
    page.get_by_test_id("pacs-date").fill("June")
    page.get_by_test_id("pacs-search-go").click()
    expect(page.get_by_test_id("pacs-search-error")).to_contain_text("study date")
