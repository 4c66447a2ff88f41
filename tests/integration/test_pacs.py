"""The hospital round trip against a real PACS (Orthanc + DICOMweb) and a real worker stack (PostgreSQL, Redis,
Celery): a synthetic CT written with pydicom is stored on the PACS; maskloop finds it with QIDO-RS, picks the
series by its rules, imports it (geometry and HU identical to the source), pre-annotates it, approves a version and
stores it back as DICOM SEG; QIDO then lists the SEG, which references the series and reads back with highdicom
voxel for voxel. De-identified intake keeps the identifier map for leads only; a NIfTI scan's CT is stored first.
Bad input: a host off the allow-list, an unreachable PACS, wrong credentials, a study with no CT series, a series
with a missing slice: clear errors and nothing stored."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from backend.auth import service as auth
from backend.imaging.phantom import Phantom, generate_phantom
from backend.models import Job, PacsSeries, PacsSource, Scan
from backend.projects import service as projects
from backend.registry import service as registry
from tests.conftest import PASSWORD
from tests.factories import post_patch, read_mask, read_nifti, upload_masks, upload_scan
from tests.integration.worker_stack import Stack, build_stack
from tests.orthanc import OrthancServer, Patient, ct_series, free_port, mr_series

pytestmark = pytest.mark.slow

SHAPE, SPACING = (48, 40, 16), (3.5, 3.0, 5.0)


@dataclass
class Live:
    """The stack, the PACS, a closed port on an allowed host and the source study written to the PACS."""

    stack: Stack
    pacs: OrthancServer
    closed_port: int
    phantom: Phantom
    study_uid: str
    thin_series: list[Any]


def _phantom() -> Phantom:
    return generate_phantom(SHAPE, SPACING, seed=11, lesion=False, orientation="LPS")


@pytest.fixture(scope="module")
def live(orthanc: OrthancServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    closed = free_port()
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MASKLOOP_PACS_ALLOWED_HOSTS", f"{orthanc.host}, 127.0.0.1:{closed}")
        with build_stack(tmp_path_factory.mktemp("pacs")) as stack:
            stack.start_worker("pacs")
            phantom = _phantom()
            patient = Patient("PID-ROUNDTRIP")
            study = generate_uid()
            frame = generate_uid()
            thin = ct_series(
                phantom.volume, phantom.affine, patient, study_uid=study, series_number=3,
                description="Abdomen 5.0 Portal venous", contrast="IOPAMIDOL", frame_uid=frame,
            )  # fmt: skip
            # The same anatomy with slices twice as thick (8 of them), a localizer and a coronal reformat.
            thick_affine = phantom.affine @ np.diag([1.0, 1.0, 2.0, 1.0])
            thick = ct_series(
                phantom.volume[:, :, ::2], thick_affine, patient, study_uid=study, series_number=2,
                description="Abdomen 10.0 Portal venous", contrast="IOPAMIDOL", frame_uid=frame,
            )  # fmt: skip
            scout = ct_series(
                phantom.volume[:, :, :1], phantom.affine, patient, study_uid=study, series_number=1,
                description="Topogram", image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
            )  # fmt: skip
            coronal_affine = phantom.affine[:, [0, 2, 1, 3]]
            coronal = ct_series(
                np.transpose(phantom.volume, (0, 2, 1)), coronal_affine, patient, study_uid=study, series_number=4,
                description="Cor 3.0 venous", image_type=("DERIVED", "SECONDARY", "REFORMATTED"),
            )  # fmt: skip
            orthanc.store([*scout, *thick, *thin, *coronal])
            yield Live(stack, orthanc, closed, phantom, study, thin)


def _ok(response: Any, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()) if response.content else {}


def _project(stack: Stack, slug: str) -> tuple[int, dict[str, dict[str, str]]]:
    """A new project with a lead, an annotator and a viewer of its own, and their bearer headers."""
    with stack.factory() as db:
        admin = auth.get_user_by_email(db, "admin@example.org")
        project = projects.create_project(db, slug, slug.title(), admin)
        headers = {}
        for role in ("lead", "annotator", "viewer"):
            user = auth.create_user(db, f"{role}-{slug}@example.org", PASSWORD, f"{role} {slug}")
            projects.set_membership(db, project.id, user, role, admin)
            headers[role] = {"Authorization": f"Bearer {auth.issue_access_token(user, stack.settings)[0]}"}
        # The stack's lead leads it too, so Stack.wait_job follows its jobs.
        projects.set_membership(db, project.id, auth.get_user_by_email(db, "lead@example.org"), "lead", admin)
        db.commit()
        return project.id, headers


def _configure(live: Live, project_id: int, headers: dict[str, str], **body: Any) -> Any:
    payload = {
        "base_url": live.pacs.dicomweb_url,
        "username": live.pacs.username,
        "password": live.pacs.password,
        **body,
    }
    return live.stack.client.put(f"/api/projects/{project_id}/pacs", headers=headers, json=payload)


def _pacs_jobs(live: Live) -> int:
    with live.stack.factory() as db:
        return int(db.scalar(select(func.count()).select_from(Job).where(Job.kind == "pacs")) or 0)


def _approve(live: Live, scan_id: int) -> int:
    """Annotator starts, brushes and submits; the lead approves. Returns the approved version id."""
    client, stack = live.stack.client, live.stack
    annotator, lead = stack.headers["annotator"], stack.headers["lead"]
    _ok(client.post(f"/api/scans/{scan_id}/transitions", headers=annotator, json={"action": "start"}))
    head = _ok(client.get(f"/api/scans/{scan_id}/task", headers=lead))["head_version_id"]
    box = np.ones((3, 3, 2), dtype=bool)
    version = _ok(post_patch(client, annotator, scan_id, head, [("liver", (20, 18, 6), box)], "brush"), 201)
    _ok(client.post(f"/api/scans/{scan_id}/transitions", headers=annotator, json={"action": "submit"}))
    _ok(client.post(f"/api/scans/{scan_id}/transitions", headers=lead, json={"action": "start_review"}))
    _ok(
        client.post(
            f"/api/scans/{scan_id}/reviews", headers=lead, json={"decision": "approve", "version_id": version["id"]}
        ),
        201,
    )
    return int(version["id"])


def _seg_of(pacs: OrthancServer, study_uid: str, description_part: str) -> hd.seg.Segmentation:
    """The one SEG instance QIDO lists in the study (its series description naming the version), read back."""
    client = pacs.client()
    found = [
        s for s in client.search_for_series(study_uid, search_filters={"Modality": "SEG"})
        if description_part in str(s.get("0008103E", {}).get("Value", [""])[0])
    ]  # fmt: skip
    assert len(found) == 1, found
    series_uid = found[0]["0020000E"]["Value"][0]
    [instance] = client.search_for_instances(study_uid, series_uid)
    ds = client.retrieve_instance(study_uid, series_uid, instance["00080018"]["Value"][0])
    return hd.seg.Segmentation.from_dataset(ds)


def _assert_voxels_equal(seg: hd.seg.Segmentation, source_uids: list[str], masks: dict[str, np.ndarray]) -> None:
    """Every segment, read with highdicom on the source slices in scan order, equals its structure's mask."""
    numbers = {}
    for item in seg.SegmentSequence:
        label = str(item.SegmentLabel)
        name = str(getattr(item, "TrackingID", label)) if label not in masks else label
        numbers[name] = int(item.SegmentNumber)
    assert set(numbers) == set(masks), (sorted(numbers), sorted(masks))
    for name, number in numbers.items():
        pixels = seg.get_pixels_by_source_instance(
            source_sop_instance_uids=source_uids, segment_numbers=[number], ignore_spatial_locations=True
        )
        volume = np.transpose(pixels[..., 0], (2, 1, 0)).astype(bool)  # (slices, rows, cols) -> data[i, j, k]
        np.testing.assert_array_equal(volume, masks[name], err_msg=name)


def test_pacs_round_trip_search_retrieve_preannotate_approve_stow(live: Live) -> None:
    stack, client = live.stack, live.stack.client
    lead, viewer = stack.headers["lead"], stack.headers["viewer"]
    project_id = stack.project.id

    # The source: the host is allowed; the password is stored encrypted and never returned.
    assert client.get(f"/api/projects/{project_id}/pacs", headers=lead).status_code == 404
    source = _ok(_configure(live, project_id, lead))
    assert source["has_password"] and "password" not in source and source["base_url"] == live.pacs.dicomweb_url
    with stack.factory() as db:
        row = db.scalar(select(PacsSource).where(PacsSource.project_id == project_id))
        assert row is not None and row.secret and live.pacs.password not in row.secret
    assert _configure(live, project_id, viewer).status_code == 403

    # QIDO: the study by patient id; its series with the rules' verdict.
    studies = _ok(
        client.get(f"/api/projects/{project_id}/pacs/studies", headers=lead, params={"patient_id": "PID-ROUNDTRIP"})
    )
    [study] = studies["items"]
    assert study["study_uid"] == live.study_uid and study["accession"] == "ACC0001" and "CT" in study["modalities"]
    assert _ok(
        client.get(f"/api/projects/{project_id}/pacs/studies", headers=lead, params={"description": "ABDOMEN PELVIS"})
    )["items"]
    series = _ok(client.get(f"/api/projects/{project_id}/pacs/studies/{live.study_uid}/series", headers=lead))["items"]
    by_number = {s["number"]: s for s in series}
    assert [s["number"] for s in series if s["chosen"]] == [3]  # thinnest axial venous series
    assert by_number[1]["reason"] == "a localizer (scout) image" and not by_number[4]["eligible"]
    assert by_number[3]["phase"] == "venous" and by_number[3]["slice_thickness_mm"] == pytest.approx(5.0)

    # Retrieval: a job with progress, then the scan; geometry and HU identical to the source.
    launched = _ok(
        client.post(f"/api/projects/{project_id}/pacs/retrievals", headers=lead, json={"study_uid": live.study_uid}),
        201,
    )
    assert launched["outcome"] == "queued" and launched["series_number"] == 3 and launched["instances"] == SHAPE[2]
    job = stack.wait_job(launched["job_id"])
    assert job["status"] == "succeeded", (job["error"], job["message"])
    assert job["result"]["outcome"] == "imported" and job["progress"] == 100
    scan_id = job["result"]["scan_id"]
    scan = _ok(client.get(f"/api/scans/{scan_id}", headers=lead))
    assert scan["shape"] == list(SHAPE)
    np.testing.assert_allclose(np.asarray(scan["affine"]), live.phantom.affine, atol=1e-4)
    assert (scan["site"], scan["manufacturer"], scan["sex"], scan["age"], scan["phase"]) == (
        "Saint Example Hospital", "Siemens", "F", 63, "venous",
    )  # fmt: skip
    volume = read_nifti(client.get(f"/api/scans/{scan_id}/volume", headers=lead).content)
    np.testing.assert_array_equal(np.asarray(volume.dataobj), live.phantom.volume)
    np.testing.assert_allclose(volume.affine, live.phantom.affine, atol=1e-4)
    with stack.factory() as db:
        stored = db.get(Scan, scan_id)
        assert stored is not None and stored.source_series_uid == live.thin_series[0].SeriesInstanceUID
        assert stored.source_study_uid == live.study_uid

    # Deduplicated by SeriesInstanceUID: asking again finds the scan, no new job.
    jobs_before = _pacs_jobs(live)
    again = _ok(
        client.post(f"/api/projects/{project_id}/pacs/retrievals", headers=lead, json={"study_uid": live.study_uid})
    )
    assert again["outcome"] == "exists" and again["scan_id"] == scan_id and _pacs_jobs(live) == jobs_before

    # Pre-annotation with the real worker (the classical HU model), then the review path to an approved version.
    with stack.factory() as db:
        model = registry.ensure_classical_model(db, stack.blobs, project_id)
        db.commit()
        assert model is not None
        model_name = model.name
    body = {"model": model_name, "scan_ids": [scan_id]}
    response = client.post(f"/api/projects/{project_id}/preannotate", headers=lead, json=body)
    assert response.status_code == 201, response.text
    [pre] = response.json()
    assert stack.wait_job(pre["id"])["status"] == "succeeded"
    approved = _approve(live, scan_id)

    # STOW of the approved version as SEG; QIDO lists it in the study, referencing the source series.
    queued = _ok(client.post(f"/api/scans/{scan_id}/pacs/stow", headers=lead, json={}), 202)
    assert queued["version_id"] == approved
    stow_job = stack.wait_job(queued["job_id"])
    assert stow_job["status"] == "succeeded", (stow_job["error"], stow_job["message"])
    assert stow_job["result"]["referenced_series_uid"] == live.thin_series[0].SeriesInstanceUID
    seg = _seg_of(live.pacs, live.study_uid, f"v{approved}")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == live.thin_series[0].SeriesInstanceUID
    assert seg.PatientID == "PID-ROUNDTRIP" and seg.StudyInstanceUID == live.study_uid
    present = {
        s["name"]: read_mask(client, lead, approved, s["name"])
        for s in _ok(client.get(f"/api/versions/{approved}", headers=lead))["structures"]
        if s["status"] == "present" and s["voxel_count"] > 0
    }
    assert "liver" in present and len(present) >= 2
    _assert_voxels_equal(seg, [str(ds.SOPInstanceUID) for ds in live.thin_series], present)


def test_deidentified_intake_keeps_the_map_for_leads_and_stow_references_the_original(live: Live) -> None:
    stack, client = live.stack, live.stack.client
    project_id, headers = _project(stack, "deid")
    lead = headers["lead"]
    _ok(_configure(live, project_id, lead, deidentify=True))
    launched = _ok(
        client.post(f"/api/projects/{project_id}/pacs/retrievals", headers=lead, json={"study_uid": live.study_uid}),
        201,
    )
    original_series = live.thin_series[0].SeriesInstanceUID
    assert original_series not in str(stack.job(launched["job_id"])["params"])
    job = stack.wait_job(launched["job_id"])
    assert job["status"] == "succeeded", (job["error"], job["message"])
    scan = _ok(client.get(f"/api/scans/{job['result']['scan_id']}", headers=lead))
    assert scan["case_id"].startswith("R") and "PID-ROUNDTRIP" not in str(scan)
    raw = scan["raw_metadata"]
    assert not {"dicom AccessionNumber", "dicom StudyDate", "dicom SeriesDescription"} & set(raw)
    assert raw["dicom PatientID"] == scan["case_id"].split("_")[0] and raw["deidentified"].startswith("DICOM PS3.15")
    assert (scan["site"], scan["sex"], scan["age"], scan["phase"]) == ("Saint Example Hospital", "F", 63, "venous")
    with stack.factory() as db:
        stored = db.get(Scan, scan["id"])
        assert stored is not None and stored.source_series_uid not in (None, original_series)
        research_series = stored.source_series_uid

    # The identifier map: leads only.
    rows = _ok(client.get(f"/api/projects/{project_id}/pacs/identities", headers=lead))["items"]
    mapped = {(r["kind"], r["original"]): r["research"] for r in rows}
    assert mapped[("series", original_series)] == research_series
    assert mapped[("patient", "PID-ROUNDTRIP")] == scan["case_id"].split("_")[0]
    assert client.get(f"/api/projects/{project_id}/pacs/identities", headers=headers["annotator"]).status_code == 403

    # A version sent back to the source PACS references the original series (re-identified there only).
    liver = np.zeros(SHAPE, dtype=bool)
    liver[10:30, 8:25, 3:9] = True
    version = upload_masks(client, lead, scan["id"], {"liver": liver}, live.phantom.affine, kind="import")
    queued = _ok(
        client.post(f"/api/scans/{scan['id']}/pacs/stow", headers=lead, json={"version_id": version["id"]}), 202
    )
    done = stack.wait_job(queued["job_id"])
    assert done["status"] == "succeeded", (done["error"], done["message"])
    assert done["result"]["referenced_series_uid"] == research_series and original_series not in str(done["result"])
    seg = _seg_of(live.pacs, live.study_uid, f"v{version['id']}")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == original_series
    _assert_voxels_equal(seg, [str(ds.SOPInstanceUID) for ds in live.thin_series], {"liver": liver})


def test_a_nifti_scan_is_stored_as_a_ct_series_before_its_seg(live: Live) -> None:
    stack, client = live.stack, live.stack.client
    project_id, headers = _project(stack, "nifti")
    lead = headers["lead"]
    _ok(_configure(live, project_id, lead))
    phantom = generate_phantom((32, 28, 10), (4.0, 4.0, 6.0), seed=2, lesion=False)
    scan = upload_scan(client, lead, project_id, phantom, "nifti-case")
    masks = {"liver": phantom.masks["liver"], "spleen": phantom.masks["spleen"]}
    version = upload_masks(client, lead, scan["id"], masks, phantom.affine, kind="import")
    before = live.pacs.instance_count()
    queued = _ok(
        client.post(f"/api/scans/{scan['id']}/pacs/stow", headers=lead, json={"version_id": version["id"]}), 202
    )
    done = stack.wait_job(queued["job_id"])
    assert done["status"] == "succeeded", (done["error"], done["message"])
    assert done["result"]["ct_series_generated"] and live.pacs.instance_count() == before + 10 + 1
    ct_series_uid = done["result"]["referenced_series_uid"]
    [found] = live.pacs.client().search_for_series(search_filters={"SeriesInstanceUID": ct_series_uid})
    study_uid = found["0020000D"]["Value"][0]
    seg = _seg_of(live.pacs, study_uid, f"v{version['id']}")
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == ct_series_uid
    instances = live.pacs.client().search_for_instances(study_uid, ct_series_uid, fields=["InstanceNumber"])
    ordered = [i["00080018"]["Value"][0] for i in sorted(instances, key=lambda i: i["00200013"]["Value"][0])]
    _assert_voxels_equal(seg, ordered, masks)


def test_bad_sources_and_studies_are_refused_and_store_nothing(live: Live) -> None:
    stack, client = live.stack, live.stack.client
    project_id, headers = _project(stack, "badpacs")
    lead = headers["lead"]
    url = f"/api/projects/{project_id}/pacs"

    # Off the allow-list (another port of an allowed host, another host), or not an http(s) URL: nothing stored.
    for base in (
        f"http://127.0.0.1:{live.pacs.port + 1}/dicom-web",
        "http://10.20.30.40/dicom-web",
        "http://localhost:8042",
    ):
        refused = client.put(url, headers=lead, json={"base_url": base})
        assert refused.status_code == 403 and refused.json()["error"] == "pacs_host_not_allowed", refused.text
    for base in ("ftp://127.0.0.1/x", f"http://u:p@{live.pacs.host}/dicom-web", "not a url"):
        assert client.put(url, headers=lead, json={"base_url": base}).status_code == 422, base
    assert client.get(url, headers=lead).status_code == 404

    # An unreachable PACS (an allowed host, nothing listening): a clear 504 for searches and retrievals, no job.
    _ok(client.put(url, headers=lead, json={"base_url": f"http://127.0.0.1:{live.closed_port}/dicom-web"}))
    jobs_before = _pacs_jobs(live)
    search = client.get(f"{url}/studies", headers=lead)
    assert search.status_code == 504 and search.json()["error"] == "pacs_unreachable", search.text
    assert "cannot be reached" in search.json()["detail"]
    retrieval = client.post(f"{url}/retrievals", headers=lead, json={"study_uid": live.study_uid})
    assert retrieval.status_code == 504 and _pacs_jobs(live) == jobs_before

    # Wrong credentials: the PACS's refusal, named.
    _ok(_configure(live, project_id, lead, password="wrong"))
    refused = client.get(f"{url}/studies", headers=lead)
    assert refused.status_code == 422 and "refused the credentials" in refused.json()["detail"], refused.text
    _ok(_configure(live, project_id, lead))

    # A study with no CT series: 422 naming each series and why, nothing queued.
    patient = Patient("PID-MR-ONLY", accession="ACC-MR")
    mr_study = generate_uid()
    live.pacs.store(mr_series(patient, study_uid=mr_study))
    no_ct = client.post(f"{url}/retrievals", headers=lead, json={"study_uid": mr_study})
    assert no_ct.status_code == 422 and "no axial CT series" in no_ct.json()["detail"], no_ct.text
    assert "modality MR, not CT" in no_ct.json()["detail"] and _pacs_jobs(live) == jobs_before
    missing_study = client.post(f"{url}/retrievals", headers=lead, json={"study_uid": "1.2.3.4.5.6.7"})
    assert missing_study.status_code == 404, missing_study.text

    # A series with a missing slice: the job fails naming the gap, and no scan or row is stored.
    gap_study = generate_uid()
    series = ct_series(
        live.phantom.volume, live.phantom.affine, Patient("PID-GAP"), study_uid=gap_study, series_number=5,
        description="Abdomen venous",
    )  # fmt: skip
    live.pacs.store(series[:7] + series[8:])
    launched = _ok(client.post(f"{url}/retrievals", headers=lead, json={"study_uid": gap_study}), 201)
    failed = stack.wait_job(launched["job_id"])
    assert failed["status"] == "failed" and "a slice may be missing" in failed["error"], failed
    assert "instance-000" in failed["error"]
    with stack.factory() as db:
        assert db.scalar(select(func.count()).select_from(Scan).where(Scan.project_id == project_id)) == 0
        assert db.scalar(select(func.count()).select_from(PacsSeries).where(PacsSeries.project_id == project_id)) == 0

    # A version of a scan in another project is not this scan's: 404; a scan without an approved version: 409.
    scan = upload_scan(client, lead, project_id, generate_phantom((16, 16, 4), (4.0, 4.0, 4.0), seed=1), "plain")
    assert client.post(f"/api/scans/{scan['id']}/pacs/stow", headers=lead, json={}).status_code == 409
    other = client.post(f"/api/scans/{scan['id']}/pacs/stow", headers=lead, json={"version_id": 999_999})
    assert other.status_code == 404, other.text
    assert client.post(f"/api/scans/{scan['id']}/pacs/stow", headers=headers["annotator"], json={}).status_code == 403


def test_the_command_line_searches_retrieves_and_stows(live: Live) -> None:
    from typer.testing import CliRunner

    from backend import cli

    stack, client = live.stack, live.stack.client
    project_id, headers = _project(stack, "cli")
    _ok(_configure(live, project_id, headers["lead"]))
    runner, env = CliRunner(), {"COLUMNS": "300", "NO_COLOR": "1"}
    common = ["--project", "cli", "--as", "lead@example.org"]

    found = runner.invoke(cli.app, ["pacs", "search", *common, "--patient-id", "PID-ROUNDTRIP"], env=env)
    assert found.exit_code == 0 and live.study_uid in found.output and "1 studies" in found.output, found.output
    listed = runner.invoke(cli.app, ["pacs", "series", *common, "--study", live.study_uid], env=env)
    assert listed.exit_code == 0 and live.thin_series[0].SeriesInstanceUID in listed.output, listed.output
    retrieved = runner.invoke(cli.app, ["pacs", "retrieve", *common, "--study", live.study_uid, "--wait"], env=env)
    assert retrieved.exit_code == 0 and "queued as job" in retrieved.output, retrieved.output
    again = runner.invoke(cli.app, ["pacs", "retrieve", *common, "--study", live.study_uid], env=env)
    assert again.exit_code == 0 and "is already scan" in again.output, again.output

    with stack.factory() as db:
        scan = db.scalar(select(Scan).where(Scan.project_id == project_id))
        assert scan is not None
        scan_id, case_id = scan.id, scan.case_id
    liver = np.zeros(SHAPE, dtype=bool)
    liver[5:15, 5:15, 2:6] = True
    version = upload_masks(client, headers["lead"], scan_id, {"liver": liver}, live.phantom.affine, kind="import")
    args = ["pacs", "stow", *common, "--case", case_id, "--version", str(version["id"]), "--wait"]
    stowed = runner.invoke(cli.app, args, env=env)
    assert stowed.exit_code == 0 and "STOW queued as job" in stowed.output, stowed.output
    _assert_voxels_equal(
        _seg_of(live.pacs, live.study_uid, f"v{version['id']}"),
        [str(ds.SOPInstanceUID) for ds in live.thin_series],
        {"liver": liver},
    )
    refused = runner.invoke(cli.app, ["pacs", "search", "--project", "cli", "--as", "viewer-cli@example.org"], env=env)
    assert refused.exit_code == 2 and "may not import" in refused.output, refused.output
