"""Release-grade exports: honest splits, nnU-Net's ignore label, the approved version, the dataset card, checksums."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from backend.core.blobstore import LocalBlobStore
from backend.exports import service as exports
from backend.imaging import layouts
from backend.imaging.phantom import Phantom
from backend.labels import service as labels
from backend.models import LabelVersion, Scan
from backend.projects import service as projects
from backend.scans import service as scans
from tests.conftest import World
from tests.integration.test_exports import _approve, _phantom, _scan

NAMES = ["liver", "pancreas", "pancreas_head", "veins", "pancreatic_lesion"]  # schema order
MISSING = "veins"


@dataclass
class Release:
    """Train cases t1 (approved v1, head v2), t2 (approved, veins missing), t3 (never approved); test cases x1, x2."""

    phantoms: dict[str, Phantom]
    approved: dict[str, LabelVersion]
    heads: dict[str, int]
    scans: dict[str, Scan]


@pytest.fixture
def release(db: Session, blobs: LocalBlobStore, world: World) -> Release:
    lead = world.users["lead"]
    plan = {
        "t1": ("train", "JHH", "venous"),
        "t2": ("train", "UCSF", "arterial"),
        "t3": ("train", "JHH", "venous"),
        "x1": ("test", "JHH", "arterial"),
        "x2": ("test", "UCSF", "venous"),
    }
    phantoms, approved, heads, rows = {}, {}, {}, {}
    for index, (case, (split, site, phase)) in enumerate(plan.items()):
        ph = _phantom("RAS" if index % 2 else "LPS", index + 1)
        scan, version = _scan(db, blobs, world.project, lead, ph, case, missing=(MISSING,) if case == "t2" else ())
        scan.split, scan.site, scan.phase = split, site, phase
        phantoms[case], rows[case], heads[case] = ph, scan, version.id
        if case != "t3":
            approved[case] = version
    # t1 was edited after the version that got approved: its head is not the approved version.
    edited = labels.create_version(
        db,
        blobs,
        rows["t1"],
        author=labels.Author(user_id=lead.id),
        kind="human",
        base_version_id=approved["t1"].id,
        masks={"liver": np.zeros(phantoms["t1"].volume.shape, dtype=bool)},
    )
    heads["t1"] = edited.id
    for case, version in approved.items():
        _approve(db, rows[case], version)
    db.flush()
    return Release(phantoms, approved, heads, rows)


def _export(db: Session, blobs: LocalBlobStore, world: World, root: Path, **request: Any) -> dict[str, Any]:
    params = exports.validate_request(
        db,
        world.project,
        fmt=request.pop("fmt"),
        version=request.pop("version", exports.DEFAULT_VERSION),
        structures=request.pop("structures", NAMES),
        scan_ids=None,
        flt=None,
        **request,
    )
    return exports.write_export(blobs, exports.plan_export(db, world.project, params), root)


def _nii(path: Path) -> np.ndarray:
    image: Any = nib.load(str(path))
    return np.asarray(image.dataobj)


def _paint(ph: Phantom, values: dict[str, int], order: list[str], missing: tuple[str, ...] = ()) -> np.ndarray:
    masks = {n: (None if n in missing else ph.masks[n]) for n in NAMES}
    return layouts.paint_combined(masks, [layouts.LabelSpec(n, values[n]) for n in order], ph.volume.shape)


def _cases_csv(root: Path) -> list[dict[str, str]]:
    with (root / "cases.csv").open(encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _check_card(root: Path, manifest: dict[str, Any]) -> list[dict[str, str]]:
    """The card's counts equal its rows, the rows equal the exported scans, and SHA256SUMS covers every file."""
    rows = _cases_csv(root)
    assert [r["case_id"] for r in rows] == [s["case_id"] for s in manifest["scans"]]
    readme = (root / "README.md").read_text(encoding="utf-8")
    assert f"{len(rows)} cases exported." in readme
    folders = {f: sum(r["folder"] == f for r in rows) for f in {r["folder"] for r in rows}}
    per_folder = re.search(r"^Per folder: (.*)\.$", readme, flags=re.M)
    assert per_folder is not None
    assert dict((f, int(n)) for f, n in (part.split(" ") for part in per_folder[1].split(", "))) == folders
    # The split table and the site/phase table count the same rows.
    counts = readme.split("## Counts", 1)[1].split("### Site and phase", 1)[0]
    split_rows = re.findall(r"^\| (\w+) \| (train|test) \| (\d+) \|$", counts, flags=re.M)
    assert sum(int(n) for *_, n in split_rows) == len(rows)
    for split, folder, n in split_rows:
        assert int(n) == sum(r["split"] == split and r["folder"] == folder for r in rows)
    sites = readme.split("### Site and phase", 1)[1].split("## Label schema", 1)[0]
    site_rows = re.findall(r"^\| (\w+) \| (\w+) \| ([\d |]+) \|$", sites, flags=re.M)
    assert sum(int(cells.split(" | ")[-1]) for *_, cells in site_rows) == len(rows)
    for site, phase, cells in site_rows:
        assert int(cells.split(" | ")[-1]) == sum(r["site"] == site and r["phase"] == phase for r in rows)
    for row in rows:  # the version id exported per scan is in the card
        assert f"| {row['case_id']} | {row['split']} | {row['folder']} | {row['site']} | {row['phase']} | " in readme
        assert f"| {row['label_version_id']} |" in readme
    listed = dict(line.split("  ", 1)[::-1] for line in (root / "SHA256SUMS").read_text().splitlines())
    files = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()} - {"SHA256SUMS"}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((root / name).read_bytes()).hexdigest() == digest, name
    return rows


def test_nnunet_export_honours_splits_ignore_label_and_approved_versions(
    db: Session, blobs: LocalBlobStore, world: World, release: Release, tmp_path: Path
) -> None:
    root = tmp_path / "Dataset018_Release"
    manifest = _export(db, blobs, world, root, fmt="nnunet", dataset_id=18, dataset_name="Release")
    assert layouts.validate_nnunet_dataset(root) == []
    # Test cases only in the test folders, training cases only in the training folders.
    assert sorted(p.name for p in (root / "imagesTs").iterdir()) == ["x1_0000.nii.gz", "x2_0000.nii.gz"]
    assert sorted(p.name for p in (root / "labelsTs").iterdir()) == ["x1.nii.gz", "x2.nii.gz"]
    assert sorted(p.name for p in (root / "imagesTr").iterdir()) == ["t1_0000.nii.gz", "t2_0000.nii.gz"]
    data = json.loads((root / "dataset.json").read_text())
    assert data["numTraining"] == 2
    values = {n: i for i, n in enumerate(NAMES, start=1)}
    assert data["labels"] == {"background": 0, **values, "ignore": len(NAMES) + 1}
    assert max(data["labels"].values()) == data["labels"]["ignore"]
    # The default version is the last approved one (t1's head is newer); t3 was never approved: skipped.
    assert {s["case_id"]: s["label_version_id"] for s in manifest["scans"]} == {
        c: v.id for c, v in release.approved.items()
    }
    assert manifest["skipped"] == [{"scan_id": release.scans["t3"].id, "case_id": "t3", "reason": "not approved"}]
    order = manifest["paint_order"]
    for case, ph in release.phantoms.items():
        if case == "t3":
            continue
        folder = "labelsTs" if case.startswith("x") else "labelsTr"
        label = _nii(root / folder / f"{case}.nii.gz")
        if case == "t2":  # veins missing: every voxel not labelled with another structure is ignore
            painted = _paint(ph, values, order, missing=(MISSING,))
            assert np.array_equal(label, np.where(painted == 0, len(NAMES) + 1, painted))
            assert not np.any(label == 0) and np.any(label == len(NAMES) + 1)
        else:  # the documented paint order, ignore nowhere
            assert np.array_equal(label, _paint(ph, values, order))
    rows = _check_card(root, manifest)
    assert [r["ignore_label_applied"] for r in rows] == ["False", "True", "False", "False"]
    readme = (root / "README.md").read_text()
    assert "| t2 | train | veins |" in readme and "`ignore` = 6" in readme
    assert "| " + str(release.scans["t3"].id) + " | t3 | not approved |" in readme
    assert " → ".join(order) in " → ".join(re.findall(r"^\d+\. (\w+)$", readme, flags=re.M))


def test_nnunet_regions_with_ignore_and_without_the_ignore_label(
    db: Session, blobs: LocalBlobStore, world: World, release: Release, tmp_path: Path
) -> None:
    root = tmp_path / "Dataset019_Regions"
    manifest = _export(
        db, blobs, world, root, fmt="nnunet", dataset_id=19, dataset_name="Regions", nnunet_labels="regions"
    )
    assert layouts.validate_nnunet_dataset(root) == []
    data = json.loads((root / "dataset.json").read_text())
    ignore = data["labels"]["ignore"]
    assert ignore == manifest["ignore_label"]["value"] == max(v for vs in data["labels"].values() for v in np.ravel(vs))
    t2 = _nii(root / "labelsTr" / "t2.nii.gz")
    decoded = layouts.decode_label_map(t2, data["labels"])
    assert MISSING not in decoded or not decoded[MISSING].any()
    for name in NAMES:
        if name != MISSING:
            assert np.array_equal(decoded[name], release.phantoms["t2"].masks[name]), name
    assert np.array_equal(t2 == ignore, ~np.any([release.phantoms["t2"].masks[n] for n in NAMES if n != MISSING], 0))
    assert not np.any(_nii(root / "labelsTr" / "t1.nii.gz") == ignore)
    plain_root = tmp_path / "Dataset020_Plain"
    plain = _export(db, blobs, world, plain_root, fmt="nnunet", dataset_id=20, dataset_name="Plain", ignore_label=False)
    assert (
        plain["ignore_label"] is None
        and "ignore" not in json.loads((plain_root / "dataset.json").read_text())["labels"]
    )
    assert np.any(_nii(plain_root / "labelsTr" / "t2.nii.gz") == 0)
    assert "painted as background (the ignore label was turned off" in (plain_root / "README.md").read_text()


def test_msd_export_lists_test_cases_and_missing_structures(
    db: Session, blobs: LocalBlobStore, world: World, release: Release, tmp_path: Path
) -> None:
    root = tmp_path / "msd"
    manifest = _export(db, blobs, world, root, fmt="msd", version="head")
    data = json.loads((root / "dataset.json").read_text())
    assert data["numTraining"] == 3 and data["numTest"] == 2
    assert [t["image"] for t in data["training"]] == [f"./imagesTr/{c}.nii.gz" for c in ("t1", "t2", "t3")]
    assert data["test"] == ["./imagesTs/x1.nii.gz", "./imagesTs/x2.nii.gz"]
    assert sorted(p.name for p in (root / "labelsTs").iterdir()) == ["x1.nii.gz", "x2.nii.gz"]
    assert not (root / "imagesTr" / "x1.nii.gz").exists()
    assert {s["case_id"]: s["label_version_id"] for s in manifest["scans"]}["t1"] == release.heads["t1"]
    values = {n: i for i, n in enumerate(NAMES, start=1)}
    t2 = _nii(root / "labelsTr" / "t2.nii.gz")  # MSD unchanged: the missing veins are background
    assert np.array_equal(t2, _paint(release.phantoms["t2"], values, manifest["paint_order"], missing=(MISSING,)))
    assert manifest["cases_with_missing_structures"] == ["t2"]
    readme = (root / "README.md").read_text()
    assert "painted as background (the Decathlon format has no ignore label)" in readme
    _check_card(root, manifest)


def test_test_split_exclude_and_merge(
    db: Session, blobs: LocalBlobStore, world: World, release: Release, tmp_path: Path
) -> None:
    excluded = _export(db, blobs, world, tmp_path / "ex", fmt="msd", test_split="exclude")
    assert [s["case_id"] for s in excluded["scans"]] == ["t1", "t2"]
    assert {s["case_id"]: s["reason"] for s in excluded["skipped"]} == {
        "t3": "not approved",
        "x1": "test split excluded",
        "x2": "test split excluded",
    }
    assert not (tmp_path / "ex" / "imagesTs").exists()
    merged = _export(db, blobs, world, tmp_path / "mg", fmt="nnunet", test_split="merge", dataset_name="Merged")
    assert {s["folder"] for s in merged["scans"]} == {"train"}
    assert json.loads((tmp_path / "mg" / "dataset.json").read_text())["numTraining"] == 4
    assert "do not report test scores" in (tmp_path / "mg" / "README.md").read_text()


def test_pants_export_with_a_test_split_reimports_identically(
    db: Session, blobs: LocalBlobStore, world: World, release: Release, tmp_path: Path
) -> None:
    root = tmp_path / "pants"
    manifest = _export(db, blobs, world, root, fmt="pants", structures=None)
    assert sorted(p.name for p in (root / "ImageTe").iterdir()) == ["x1", "x2"]
    assert sorted(p.name for p in (root / "ImageTr").iterdir()) == ["t1", "t2"]
    _check_card(root, manifest)
    admin = world.users["platform_admin"]
    second = projects.create_project(db, "reimport", "Re-import", admin)
    report = scans.import_pants_dataset(db, blobs, second, admin, root)
    assert sorted(report.imported) == ["t1", "t2", "x1", "x2"]
    assert MISSING in report.missing_structures["t2"]
    for case, version in release.approved.items():
        original = release.scans[case]
        back = db.query(Scan).filter_by(project_id=second.id, case_id=case).one()
        assert back.split == original.split and back.image_digest == original.image_digest
        assert np.array_equal(np.asarray(back.affine), np.asarray(original.affine))
        rows = {e.structure_id: e for e in labels.get_version(db, back.head_version_id or 0).structures}
        for structure in projects.structures_of(db, second.id):
            entry = rows[structure.id]
            if structure.name in release.phantoms[case].masks and not (case == "t2" and structure.name == MISSING):
                mask = labels.read_mask(blobs, back, entry)
                expected = labels.read_mask(blobs, original, labels.structure_entry(db, version, structure.name)[1])
                assert np.array_equal(mask, expected), (case, structure.name, int(mask.sum()), int(expected.sum()))
            else:
                assert entry.status == "missing", (case, structure.name)


def test_export_api_options_and_bad_input(client: TestClient, world: World, release: Release) -> None:
    url = f"/api/projects/{world.project.id}/exports"
    headers = world.headers["lead"]
    options = client.get(f"/api/projects/{world.project.id}/export-options", headers=headers).json()
    assert options["default_version"] == "approved" and options["versions"][:2] == ["approved", "head"]
    assert options["test_split_modes"] == ["separate", "exclude", "merge"] and options["ignore_label_default"] is True
    assert options["splits"] == {"test": 2, "train": 3} and options["approved_scans"] == 4
    created = client.post(url, headers=headers, json={"format": "msd", "folder_name": "release-v1"})
    assert created.status_code == 201, created.text
    params = created.json()["params"]
    assert params["version"] == "approved" and params["test_split"] == "separate" and params["ignore_label"] is True
    assert params["folder_name"] == "release-v1"
    for bad in (
        {"format": "msd", "folder_name": "../etc"},
        {"format": "msd", "folder_name": "a/b"},
        {"format": "nnunet", "folder_name": "mine"},
        {"format": "msd", "test_split": "shuffle"},
        {"format": "msd", "ignore_label": "maybe"},
    ):
        refused = client.post(url, headers=headers, json=bad)
        assert refused.status_code == 422, (bad, refused.text)
    assert (
        client.get(f"/api/projects/{world.project.id}/export-options", headers=world.headers["outsider"]).status_code
        == 404
    )
