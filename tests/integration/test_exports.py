"""Exports on real PostgreSQL: PanTS round trip through the importer, version choice, formats, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.blobstore import LocalBlobStore
from backend.exports import service as exports
from backend.imaging import dicom_seg, layouts
from backend.imaging.nifti import Geometry, to_nifti_gz
from backend.imaging.phantom import Phantom, generate_phantom
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import LabelVersion, Project, Scan, ScanTask, User
from backend.projects import service as projects
from backend.registry import service as registry
from backend.scans import service as scans
from tests.conftest import World

METADATA = {"BDMAP ID": "x", "ct phase": "Venous", "sex": " F", "age": "63", "site": "JHH", "tumor?": "1"}


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int, str]]:
    """Capture tasks sent to the broker instead of sending them."""
    from backend.core import queue

    calls: list[tuple[str, int, str]] = []

    def send(name: str, job_id: int, q: str, attempt: int = 0) -> str:
        calls.append((name, job_id, q))
        return f"job-{job_id}-{attempt}"

    monkeypatch.setattr(queue, "send", send)
    return calls


def _phantom(orientation: str, seed: int) -> Phantom:
    if orientation[2] in "SI":
        return generate_phantom((48, 48, 24), (4.0, 4.0, 8.0), seed=seed, orientation=orientation)
    return generate_phantom((24, 48, 48), (8.0, 4.0, 4.0), seed=seed, orientation=orientation)


def _scan(
    db: Session,
    blobs: LocalBlobStore,
    project: Project,
    actor: User,
    ph: Phantom,
    case_id: str,
    *,
    missing: tuple[str, ...] = (),
    kind: str = "import",
) -> tuple[Scan, LabelVersion]:
    scan = scans.import_nifti(
        db,
        blobs,
        project,
        actor,
        to_nifti_gz(ph.volume, ph.affine),
        f"{case_id}.nii.gz",
        case_id=case_id,
        raw_metadata={**METADATA, "BDMAP ID": case_id},
    )
    masks = {n: m for n, m in ph.masks.items() if n not in missing}
    version = labels.create_version(
        db, blobs, scan, author=labels.Author(user_id=actor.id), kind=kind, masks=masks, missing=missing
    )
    return scan, version


def _export(
    db: Session, blobs: LocalBlobStore, project: Project, out: Path, **request: Any
) -> tuple[dict[str, Any], Path]:
    params = exports.validate_request(
        db,
        project,
        fmt=request.pop("fmt", "pants"),
        version=request.pop("version", "head"),
        structures=request.pop("structures", None),
        scan_ids=request.pop("scan_ids", None),
        flt=None,
        **request,
    )
    plan = exports.plan_export(db, project, params)
    ticks: list[tuple[int, int, str]] = []
    root = out / exports.dataset_folder_name(plan)
    manifest = exports.write_export(blobs, plan, root, progress=lambda *a: ticks.append(a))
    assert [t[0] for t in ticks] == list(range(1, len(plan.cases) + 1))
    assert sorted(p.name for p in out.iterdir()) == [root.name]  # written exactly where asked
    return manifest, root


def test_pants_export_reimports_identically_including_overlaps_and_orientation(
    db: Session, blobs: LocalBlobStore, world: World, tmp_path: Path
) -> None:
    lead = world.users["lead"]
    phantoms = {"case_ras": _phantom("RAS", 1), "case_ipl": _phantom("IPL", 2), "case_lps": _phantom("LPS", 3)}
    originals = {
        case: _scan(db, blobs, world.project, lead, ph, case, missing=("gall_bladder",) if case == "case_lps" else ())
        for case, ph in phantoms.items()
    }
    manifest, root = _export(db, blobs, world.project, tmp_path / "out")
    assert manifest["format"] == "pants" and manifest["version"] == "head"
    assert manifest["paint_order"].index("pancreas") < manifest["paint_order"].index("pancreatic_lesion")
    assert {s["case_id"]: s["label_version_id"] for s in manifest["scans"]} == {
        case: version.id for case, (_, version) in originals.items()
    }
    assert (root / "metadata.csv").exists() and (root / "metadata.xlsx").exists()
    assert not (root / "LabelTr" / "case_lps" / "segmentations" / "gall_bladder.nii.gz").exists()

    admin = world.users["platform_admin"]
    second = projects.create_project(db, "second", "Second", admin)
    report = scans.import_pants_dataset(db, blobs, second, admin, root)
    assert sorted(report.imported) == sorted(phantoms)
    assert "gall_bladder" in report.missing_structures["case_lps"]
    assert "gall_bladder" not in report.missing_structures["case_ras"]
    schema = projects.structures_of(db, second.id)
    for case, ph in phantoms.items():
        scan_a, version_a = originals[case]
        scan_b = db.query(Scan).filter_by(project_id=second.id, case_id=case).one()
        assert scan_b.orientation == scan_a.orientation == ph_orientation(ph)
        assert np.array_equal(np.asarray(scan_b.affine), np.asarray(scan_a.affine))
        assert scan_b.image_digest == scan_a.image_digest  # the CT is the stored file, byte for byte
        version_b = labels.get_version(db, scan_b.head_version_id or 0)
        rows_b = {e.structure_id: e for e in version_b.structures}
        for structure in schema:
            entry_b = rows_b[structure.id]
            if structure.name in ph.masks and not (case == "case_lps" and structure.name == "gall_bladder"):
                assert entry_b.status == "present", (case, structure.name)
                mask_b = labels.read_mask(blobs, scan_b, entry_b)
                assert np.array_equal(mask_b, ph.masks[structure.name]), (case, structure.name)
            else:
                assert entry_b.status == "missing", (case, structure.name)
        # Overlaps survived: the pancreas still contains its head and the lesion voxels.
        head = labels.read_mask(blobs, scan_b, rows_b[projects.find_structure(schema, "pancreas_head").id])
        pancreas = labels.read_mask(blobs, scan_b, rows_b[projects.find_structure(schema, "pancreas").id])
        assert head.any() and np.all(pancreas[head])
        # combined_labels.nii.gz is the documented paint order (labels.combined_map's default order).
        combined = _nii(str(root / "LabelTr" / case / "combined_labels.nii.gz"))
        expected, _ = labels.combined_map(db, blobs, version_a)
        assert np.array_equal(np.asarray(combined.dataobj), expected)
        assert np.allclose(combined.affine, ph.affine, atol=1e-5)
        assert scan_b.raw_metadata["label_version_id"] in (str(version_a.id), version_a.id)
        assert scan_b.raw_metadata["version_author"] == f"user:{lead.email}"
        assert scan_b.site == "JHH" and scan_b.sex == "F" and scan_b.age == 63 and scan_b.tumor is True


def ph_orientation(ph: Phantom) -> str:
    """The axis code of a phantom's affine."""
    return "".join(str(c) for c in nib.aff2axcodes(ph.affine))


def _approve(db: Session, scan: Scan, version: LabelVersion) -> None:
    task = db.get(ScanTask, scan.id)
    assert task is not None
    task.approved_version_id = version.id
    task.state = "approved"
    db.flush()


@pytest.mark.blobs  # also on the S3 blob store (moto_server)
def test_version_choice_approved_and_structure_subset(
    db: Session, blobs: LocalBlobStore, world: World, tmp_path: Path
) -> None:
    lead = world.users["lead"]
    first, v1 = _scan(db, blobs, world.project, lead, _phantom("RAS", 1), "a1")
    second, _ = _scan(db, blobs, world.project, lead, _phantom("RAS", 2), "a2")
    empty_liver = np.zeros(tuple(first.shape), dtype=bool)
    v2 = labels.create_version(
        db,
        blobs,
        first,
        author=labels.Author(user_id=lead.id),
        kind="human",
        base_version_id=v1.id,
        masks={"liver": empty_liver},
    )
    assert first.head_version_id == v2.id
    _approve(db, first, v1)
    manifest, root = _export(
        db, blobs, world.project, tmp_path / "o", version="approved", structures=["liver", "pancreas"]
    )
    assert [s["label_version_id"] for s in manifest["scans"]] == [v1.id]  # approved, not the head
    assert manifest["skipped"] == [{"scan_id": second.id, "case_id": "a2", "reason": "not approved"}]
    assert [s["name"] for s in manifest["structures"]] == ["liver", "pancreas"]
    files = sorted(p.name for p in (root / "LabelTr" / "a1" / "segmentations").iterdir())
    assert files == ["liver.nii.gz", "pancreas.nii.gz"]
    liver = np.asarray(_nii(str(root / "LabelTr" / "a1" / "segmentations" / "liver.nii.gz")).dataobj)
    assert liver.dtype == np.uint8 and liver.any()  # v1's liver, not v2's empty one
    head, _ = _export(db, blobs, world.project, tmp_path / "h", version="head", structures=["liver"])
    assert {s["case_id"]: s["label_version_id"] for s in head["scans"]}["a1"] == v2.id


def _model_prediction(db: Session, blobs: LocalBlobStore, world: World, scan: Scan, ph: Phantom) -> LabelVersion:
    model = registry.create_model(db, world.project.id, name="unet-x", architecture="classical", structures=["liver"])
    mv = registry.add_version(db, blobs, model, weights=None)
    registry.promote(db, mv, None, checked=False)
    version = labels.create_version(
        db,
        blobs,
        scan,
        author=labels.Author(user_id=None, model_version_id=mv.id),
        kind="model",
        base_version_id=scan.head_version_id,
        masks={
            "liver": ph.masks["liver"],
            "pancreas": ph.masks["pancreas"],
            "pancreas_head": ph.masks["pancreas_head"],
        },
        branch=True,
    )
    job = jobs.create_job(db, project_id=world.project.id, kind="preannotate", created_by=None, scan_id=scan.id)
    registry.record_prediction(db, job_id=job.id, scan=scan, model_version=mv, label_version=version, maps={})
    return version


@pytest.mark.blobs  # also on the S3 blob store (moto_server)
def test_model_version_exports_dicom_seg_with_automatic_segments(
    db: Session, blobs: LocalBlobStore, world: World, tmp_path: Path
) -> None:
    lead = world.users["lead"]
    ph = _phantom("LPS", 4)
    scan, _ = _scan(db, blobs, world.project, lead, ph, "m1")
    other, _ = _scan(db, blobs, world.project, lead, _phantom("RAS", 5), "m2")
    predicted = _model_prediction(db, blobs, world, scan, ph)
    manifest, root = _export(
        db,
        blobs,
        world.project,
        tmp_path / "d",
        fmt="dicom-seg",
        version="model:unet-x",
        structures=["liver", "pancreas", "pancreas_head"],
    )
    assert [s["label_version_id"] for s in manifest["scans"]] == [predicted.id]
    assert manifest["skipped"][0]["case_id"] == "m2" and "no prediction" in manifest["skipped"][0]["reason"]
    assert other.id == manifest["skipped"][0]["scan_id"]
    assert len(list((root / "m1" / "CT").iterdir())) == ph.volume.shape[2]
    seg_bytes = (root / "m1" / "SEG" / "seg.dcm").read_bytes()
    back = dicom_seg.read_segments(seg_bytes, Geometry.from_affine(ph.volume.shape, ph.affine))
    assert list(back) == ["liver", "pancreas", "pancreas_head"]  # overlapping pancreas/head stay separate
    for name, mask in back.items():
        assert np.array_equal(mask, ph.masks[name]), name
    from pydicom import dcmread

    seg = dcmread(root / "m1" / "SEG" / "seg.dcm")
    assert {item.SegmentAlgorithmType for item in seg.SegmentSequence} == {"AUTOMATIC"}
    assert seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0].AlgorithmName == "unet-x"


@pytest.mark.blobs  # also on the S3 blob store (moto_server)
def test_nnunet_and_msd_exports(db: Session, blobs: LocalBlobStore, world: World, tmp_path: Path) -> None:
    lead = world.users["lead"]
    phantoms = {"n1": _phantom("RAS", 1), "n2": _phantom("IPL", 2)}
    for case, ph in phantoms.items():
        _scan(db, blobs, world.project, lead, ph, case)
    names = ["liver", "pancreas", "pancreas_head", "veins", "pancreatic_lesion"]  # schema order
    manifest, root = _export(
        db, blobs, world.project, tmp_path / "nn", fmt="nnunet", structures=names, dataset_id=12, dataset_name="Panc"
    )
    assert root.name == "Dataset012_Panc"
    assert layouts.validate_nnunet_dataset(root) == []
    data = json.loads((root / "dataset.json").read_text())
    assert data["labels"] == {"background": 0, **{n: i for i, n in enumerate(names, start=1)}}
    assert manifest["label_values"] == {n: i for i, n in enumerate(names, start=1)}
    specs = [layouts.LabelSpec(n, manifest["label_values"][n]) for n in manifest["paint_order"]]
    for case, ph in phantoms.items():
        label = np.asarray(_nii(str(root / "labelsTr" / f"{case}.nii.gz")).dataobj)
        assert np.array_equal(label, layouts.paint_combined({n: ph.masks[n] for n in names}, specs, label.shape))
    regions_manifest, regions_root = _export(
        db, blobs, world.project, tmp_path / "rg", fmt="nnunet", structures=names, nnunet_labels="regions"
    )
    assert layouts.validate_nnunet_dataset(regions_root) == []
    region_labels = json.loads((regions_root / "dataset.json").read_text())["labels"]
    for case, ph in phantoms.items():
        label = np.asarray(_nii(str(regions_root / "labelsTr" / f"{case}.nii.gz")).dataobj)
        for name, mask in layouts.decode_label_map(label, region_labels).items():
            assert np.array_equal(mask, ph.masks[name]), (case, name)
    assert regions_manifest["nnunet_labels"] == "regions"
    msd_manifest, msd_root = _export(db, blobs, world.project, tmp_path / "msd", fmt="msd", structures=names)
    msd = json.loads((msd_root / "dataset.json").read_text())
    assert msd["modality"] == {"0": "CT"} and msd["numTraining"] == 2
    assert msd["labels"] == {"0": "background", **{str(i): n for i, n in enumerate(names, start=1)}}
    assert {t["image"] for t in msd["training"]} == {"./imagesTr/n1.nii.gz", "./imagesTr/n2.nii.gz"}
    assert (msd_root / "labelsTr" / "n2.nii.gz").exists() and msd_manifest["format"] == "msd"


def test_export_request_bad_input_is_4xx(
    client: TestClient, db: Session, blobs: LocalBlobStore, world: World, sent: list[tuple[str, int, str]]
) -> None:
    lead = world.users["lead"]
    scan, _ = _scan(db, blobs, world.project, lead, _phantom("RAS", 1), "b1")
    url = f"/api/projects/{world.project.id}/exports"
    headers = world.headers["lead"]

    def post(**body: Any) -> Any:
        return client.post(url, headers=headers, json=body)

    assert post(format="nifti-zip").status_code == 422
    assert "unknown export format" in post(format="nifti-zip").json()["detail"]
    bad_structure = post(format="pants", structures=["pancreas", "spleen_tip"])
    assert bad_structure.status_code == 422 and "spleen_tip" in bad_structure.json()["detail"]
    assert post(format="pants", version="latest").status_code == 422
    assert post(format="pants", version="model:nobody").status_code == 422
    model = registry.create_model(db, world.project.id, name="idle", architecture="classical", structures=["liver"])
    registry.promote(db, registry.add_version(db, blobs, model, weights=None), None, checked=False)
    idle = post(format="pants", version="model:idle")
    assert idle.status_code == 422 and "no predictions" in idle.json()["detail"]
    assert post(format="pants", version="approved").status_code == 422  # nothing approved yet
    assert post(format="pants", scan_ids=[scan.id + 10_000]).status_code == 404
    assert post(format="nnunet", dataset_name="bad name!").status_code == 422
    assert post(format="pants", nnunet_labels="sideways").status_code == 422
    assert client.post(url, headers=world.headers["annotator"], json={"format": "pants"}).status_code == 403
    assert client.post(url, headers=world.headers["outsider"], json={"format": "pants"}).status_code == 404
    assert sent == []

    by_filter = post(format="msd", version="head", filter={"site": "JHH", "q": "b1"})
    assert by_filter.status_code == 201 and by_filter.json()["params"]["scan_ids"] == [scan.id]
    assert post(format="msd", filter={"site": "nowhere"}).status_code == 422
    sent.clear()
    created = post(format="pants", version="head", scan_ids=[scan.id])
    assert created.status_code == 201, created.text
    job_id = created.json()["job_id"]
    assert sent == [("maskloop.export", job_id, "cpu")]
    assert created.json()["params"]["scan_ids"] == [scan.id]
    pending = client.get(f"/api/exports/{job_id}/download", headers=world.headers["viewer"])
    assert pending.status_code == 409 and "queued" in pending.json()["detail"]
    assert client.get(f"/api/exports/{job_id}/download", headers=world.headers["outsider"]).status_code == 404
    other = jobs.create_job(db, project_id=world.project.id, kind="attention", created_by=None)
    assert client.get(f"/api/exports/{other.id}/download", headers=world.headers["viewer"]).status_code == 404


def _nii(path: str) -> Any:
    """A NIfTI image from a file."""
    return nib.load(path)
