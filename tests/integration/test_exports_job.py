"""The export job end to end: API request, the cpu pipeline run in-process on a committed database, download."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest

from backend.imaging import layouts
from tests.factories import read_mask, small_phantom, upload_masks, upload_scan
from tests.integration.worker_stack import Stack, build_stack


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    with build_stack(tmp_path_factory.mktemp("exports")) as built:
        yield built


def _members(content: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(content), mode="r:gz") as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def _run_export(stack: Stack, body: dict[str, Any]) -> tuple[dict[str, Any], dict[str, bytes]]:
    from worker.pipelines import export

    created = stack.client.post(f"/api/projects/{stack.project.id}/exports", headers=stack.headers["lead"], json=body)
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    early = stack.client.get(f"/api/exports/{job_id}/download", headers=stack.headers["viewer"])
    assert early.status_code == 409
    export.run(job_id)
    job = stack.job(job_id)
    assert job["status"] == "succeeded", job
    assert job["kind"] == "export" and job["queue"] == "cpu" and job["progress"] == 100.0
    download = stack.client.get(f"/api/exports/{job_id}/download", headers=stack.headers["viewer"])
    assert download.status_code == 200, download.text
    assert download.headers["content-type"] == "application/gzip"
    assert len(download.content) == job["result"]["archive_bytes"]
    assert stack.blobs.exists(job["result"]["archive_digest"])
    members = _members(download.content)
    assert len(members) == job["result"]["file_count"]
    return job, members


def test_pants_export_job_produces_a_downloadable_archive(stack: Stack) -> None:
    lead = stack.headers["lead"]
    phantoms = {"job_ras": small_phantom(1, "RAS"), "job_lps": small_phantom(2, "LPS")}
    versions = {}
    for case, ph in phantoms.items():
        scan = upload_scan(stack.client, lead, stack.project.id, ph, case, metadata={"site": "JHH"})
        versions[case] = upload_masks(stack.client, lead, scan["id"], ph.masks, ph.affine)
    job, members = _run_export(stack, {"format": "pants", "version": "head"})
    top = "workers-pants"
    manifest = json.loads(members[f"{top}/manifest.json"])
    assert manifest["format"] == "pants" and manifest["maskloop_version"] and manifest["created_at"]
    assert {s["case_id"]: s["label_version_id"] for s in manifest["scans"]} == {
        case: v["id"] for case, v in versions.items()
    }
    assert job["result"]["scans_exported"] == 2 and job["result"]["paint_order"] == manifest["paint_order"]
    assert f"{top}/metadata.xlsx" in members and f"{top}/metadata.csv" in members
    header = members[f"{top}/metadata.csv"].decode().splitlines()[0].split(",")
    assert header[0] == "BDMAP ID" and header[-3:] == ["label_version_id", "version_kind", "version_author"]
    for case, ph in phantoms.items():
        image = nib.Nifti1Image.from_bytes(_gunzip(members[f"{top}/ImageTr/{case}/ct.nii.gz"]))
        assert np.array_equal(np.asarray(image.dataobj), ph.volume)
        for name in ("pancreas", "pancreas_head", "veins"):
            data = members[f"{top}/LabelTr/{case}/segmentations/{name}.nii.gz"]
            mask_img = nib.Nifti1Image.from_bytes(_gunzip(data))
            assert np.allclose(mask_img.affine, ph.affine, atol=1e-5)
            served = read_mask(stack.client, lead, versions[case]["id"], name)
            assert np.array_equal(np.asarray(mask_img.dataobj) > 0, served)
            assert np.array_equal(served, ph.masks[name])


def test_nnunet_export_job_archive_validates(stack: Stack, tmp_path: Path) -> None:
    lead = stack.headers["lead"]
    ph = small_phantom(3, "RAS")
    scan = upload_scan(stack.client, lead, stack.project.id, ph, "job_nn")
    upload_masks(stack.client, lead, scan["id"], ph.masks, ph.affine)
    body = {
        "format": "nnunet",
        "version": "head",
        "scan_ids": [scan["id"]],
        "structures": ["pancreas", "pancreas_head", "liver"],
    }
    job, members = _run_export(stack, {**body, "dataset_id": 5, "dataset_name": "Job"})
    for name, content in members.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    root = tmp_path / "Dataset005_Job"
    assert layouts.validate_nnunet_dataset(root) == []
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["job_nn_0000.nii.gz"]
    assert job["result"]["structures"] == ["liver", "pancreas", "pancreas_head"]


def test_cli_export_writes_the_folder_in_process(stack: Stack, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from backend.cli import app

    lead = stack.headers["lead"]
    ph = small_phantom(4, "IPL")
    upload_masks(
        stack.client, lead, upload_scan(stack.client, lead, stack.project.id, ph, "cli_ipl")["id"], ph.masks, ph.affine
    )
    runner = CliRunner()
    args = ["export", "--project", "workers", "--format", "msd", "--case", "cli_ipl", "--structures", "liver,veins"]
    unapproved = runner.invoke(app, [*args, "--out", str(tmp_path / "approved")])  # the default: approved only
    assert unapproved.exit_code == 2 and "has a version to export (approved)" in unapproved.output
    args += ["--version", "head"]
    out = tmp_path / "release"
    result = runner.invoke(app, [*args, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "exported 1 scans" in result.output
    # The folder is exactly --out (not --out/<project>-<format>/).
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "SHA256SUMS",
        "cases.csv",
        "dataset.json",
        "imagesTr",
        "labelsTr",
        "manifest.json",
    ]
    msd = json.loads((out / "dataset.json").read_text())
    assert msd["labels"] == {"0": "background", "1": "liver", "2": "veins"}
    label = nib.Nifti1Image.from_bytes(_gunzip((out / "labelsTr" / "cli_ipl.nii.gz").read_bytes()))
    assert "".join(nib.aff2axcodes(label.affine)) == "IPL"
    assert np.array_equal(np.asarray(label.dataobj) == 2, ph.masks["veins"])
    bad = runner.invoke(app, [*args[:4], "nifti", "--out", str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown export format" in bad.output
    neither = runner.invoke(app, ["export", "--project", "workers"])
    assert neither.exit_code == 2
    occupied = runner.invoke(app, [*args, "--out", str(out)])  # never mixed into a non-empty folder
    assert occupied.exit_code == 2 and "not an empty folder" in occupied.output


def _gunzip(data: bytes) -> bytes:
    import gzip

    return gzip.decompress(data)


def test_export_job_archive_is_named_by_folder_name_and_carries_the_card(stack: Stack) -> None:
    import hashlib

    lead = stack.headers["lead"]
    ph = small_phantom(6, "RAS")
    scan = upload_scan(stack.client, lead, stack.project.id, ph, "job_card")
    upload_masks(stack.client, lead, scan["id"], ph.masks, ph.affine)
    body = {"format": "msd", "version": "head", "scan_ids": [scan["id"]], "folder_name": "release-v1"}
    job, members = _run_export(stack, {**body, "structures": ["liver", "pancreas"]})
    assert job["result"]["archive_name"].startswith("release-v1-job")
    assert {name.split("/", 1)[0] for name in members} == {"release-v1"}
    sums = members["release-v1/SHA256SUMS"].decode().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in sums}
    assert set(listed) == {name.split("/", 1)[1] for name in members} - {"SHA256SUMS"}
    for name, digest in listed.items():
        assert hashlib.sha256(members[f"release-v1/{name}"]).hexdigest() == digest
    readme = members["release-v1/README.md"].decode()
    assert "1 cases exported." in readme and "job_card" in readme
