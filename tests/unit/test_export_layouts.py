"""Pure export writers: paint order, nnU-Net v2 validation and region labels, MSD json, DICOM series and SEG."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import highdicom as hd
import nibabel as nib
import numpy as np
import pytest
from pydicom import dcmread

from backend.imaging import dicom_seg, layouts
from backend.imaging.dicom import load_dicom_series
from backend.imaging.nifti import Geometry, to_nifti_gz
from backend.imaging.phantom import Phantom, generate_phantom

ORDER = [layouts.LabelSpec("pancreas", 17), layouts.LabelSpec("pancreas_head", 19), layouts.LabelSpec("veins", 27)]


def _phantom(orientation: str = "RAS", seed: int = 3) -> Phantom:
    shape, spacing = ((64, 64, 32), (3.0, 3.0, 6.0)) if orientation[2] in "SI" else ((32, 64, 64), (6.0, 3.0, 3.0))
    return generate_phantom(shape, spacing, seed=seed, orientation=orientation)


def test_paint_order_later_structures_win_where_they_overlap() -> None:
    shape = (4, 4, 2)
    pancreas = np.zeros(shape, bool)
    pancreas[:2] = True
    head = np.zeros(shape, bool)
    head[1:3] = True
    combined = layouts.paint_combined({"pancreas": pancreas, "pancreas_head": head, "veins": None}, ORDER, shape)
    assert combined.dtype == np.uint8
    assert set(np.unique(combined[0])) == {17}
    assert set(np.unique(combined[1])) == {19}  # overlap: the later structure wins
    assert set(np.unique(combined[2])) == {19}
    assert set(np.unique(combined[3])) == {0}
    reversed_order = list(reversed(ORDER))
    other = layouts.paint_combined({"pancreas": pancreas, "pancreas_head": head}, reversed_order, shape)
    assert set(np.unique(other[1])) == {17}


def _write_nnunet(root: Path, phantoms: dict[str, Phantom], regions: bool) -> dict[str, Any]:
    names = ["liver", "pancreas", "pancreas_head", "pancreas_body", "pancreatic_lesion", "veins"]
    specs = layouts.consecutive_labels(names)
    paint = [s for s in specs if s.name == "liver"] + [s for s in specs if s.name != "liver"]
    encoder = layouts.RegionEncoder(names) if regions else None
    for case_id, ph in phantoms.items():
        masks = {n: ph.masks[n] for n in names}
        shape = ph.volume.shape
        label = encoder.encode(masks, shape) if encoder else layouts.paint_combined(masks, paint, shape)
        layouts.write_nnunet_case(
            root,
            case_id,
            image_nii_gz=to_nifti_gz(ph.volume, ph.affine),
            affine=ph.affine,
            label_map=label,
        )
    if encoder:
        region_labels = encoder.regions()
        data = layouts.nnunet_dataset_json(
            region_labels,
            len(phantoms),
            name="t",
            description="",
            regions_class_order=list(range(1, len(region_labels) + 1)),
        )
    else:
        data = layouts.nnunet_dataset_json({s.name: s.value for s in specs}, len(phantoms), name="t", description="")
    layouts.write_json(root / "dataset.json", data)
    return data


def test_nnunet_paint_order_dataset_validates_and_decodes_to_the_paint_order_map(tmp_path: Path) -> None:
    root = tmp_path / layouts.nnunet_folder_name(7, "Phantoms")
    phantoms = {"case_a": _phantom("RAS", 1), "case_b": _phantom("LPS", 2)}
    data = _write_nnunet(root, phantoms, regions=False)
    assert layouts.validate_nnunet_dataset(root) == []
    assert data["channel_names"] == {"0": "CT"} and data["file_ending"] == ".nii.gz"
    assert data["labels"]["background"] == 0 and data["numTraining"] == 2
    assert sorted((root / "imagesTr").iterdir())[0].name == "case_a_0000.nii.gz"
    label_img = _nii(str(root / "labelsTr" / "case_b.nii.gz"))
    assert np.allclose(label_img.affine, phantoms["case_b"].affine, atol=1e-5)
    decoded = layouts.decode_label_map(np.asarray(label_img.dataobj), data["labels"])
    masks = phantoms["case_b"].masks
    # pancreas lost the voxels painted over by its parts and the lesion: the map follows the paint order.
    parts = masks["pancreas_head"] | masks["pancreas_body"] | masks["pancreatic_lesion"] | masks["veins"]
    assert np.array_equal(decoded["pancreas"], masks["pancreas"] & ~parts)
    assert np.array_equal(decoded["pancreatic_lesion"], masks["pancreatic_lesion"] & ~masks["veins"])
    assert np.array_equal(decoded["veins"], masks["veins"])
    assert decoded["pancreas"].sum() < masks["pancreas"].sum()


def test_nnunet_region_labels_keep_overlaps_exactly(tmp_path: Path) -> None:
    root = tmp_path / "Dataset008_Regions"
    phantoms = {"r1": _phantom("RAS", 4), "r2": _phantom("IPL", 5)}
    data = _write_nnunet(root, phantoms, regions=True)
    assert layouts.validate_nnunet_dataset(root) == []
    assert all(isinstance(v, list) for k, v in data["labels"].items() if k != "background")
    for case_id, ph in phantoms.items():
        label = np.asarray(_nii(str(root / "labelsTr" / f"{case_id}.nii.gz")).dataobj)
        decoded = layouts.decode_label_map(label, data["labels"])
        for name, mask in decoded.items():
            assert np.array_equal(mask, ph.masks[name]), (case_id, name)


def test_nnunet_validator_reports_each_documented_rule(tmp_path: Path) -> None:
    root = tmp_path / "Dataset009_Broken"
    _write_nnunet(root, {"c1": _phantom("RAS", 1), "c2": _phantom("RAS", 2)}, regions=False)
    (root / "labelsTr" / "c2.nii.gz").unlink()
    (root / "imagesTr" / "c1_0000.nii.gz").rename(root / "imagesTr" / "c1.nii.gz")
    data = json.loads((root / "dataset.json").read_text())
    data["labels"]["veins"] = 9
    data["numTraining"] = 5
    (root / "dataset.json").write_text(json.dumps(data))
    errors = "\n".join(layouts.validate_nnunet_dataset(root))
    assert "consecutive integers" in errors
    assert "c1.nii.gz is not named" in errors
    assert "case c2 has an image but no labelsTr" in errors
    assert "numTraining is 5" in errors
    bad_name = tmp_path / "Dataset1_x"
    bad_name.mkdir()
    assert any("DatasetXXX_Name" in e for e in layouts.validate_nnunet_dataset(bad_name))


def test_nnunet_validator_catches_geometry_mismatch(tmp_path: Path) -> None:
    root = tmp_path / "Dataset010_Geo"
    ph = _phantom("RAS", 1)
    _write_nnunet(root, {"g": ph}, regions=False)
    shifted = ph.affine.copy()
    shifted[0, 3] += 5.0
    label = np.asarray(_nii(str(root / "labelsTr" / "g.nii.gz")).dataobj)
    (root / "labelsTr" / "g.nii.gz").write_bytes(to_nifti_gz(label, shifted))
    assert layouts.validate_nnunet_dataset(root) == ["case g: image and label affines differ"]


def test_msd_dataset_json_shape() -> None:
    data = layouts.msd_dataset_json(
        layouts.consecutive_labels(["liver", "pancreas"]), ["a", "b"], name="x", description=""
    )
    assert data["modality"] == {"0": "CT"}
    assert data["labels"] == {"0": "background", "1": "liver", "2": "pancreas"}
    assert data["numTraining"] == 2
    assert data["training"][1] == {"image": "./imagesTr/b.nii.gz", "label": "./labelsTr/b.nii.gz"}


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "IPL"])
def test_dicom_series_and_seg_round_trip_voxel_for_voxel(tmp_path: Path, orientation: str) -> None:
    ph = _phantom(orientation, 6)
    geometry = Geometry.from_affine(ph.volume.shape, ph.affine)
    ids = dicom_seg.SeriesIds.derive("case-1", "seed")
    series = dicom_seg.ct_series(ph.volume, ph.affine, ids)
    paths = dicom_seg.write_datasets(series, tmp_path / "CT")
    assert len(paths) == ph.volume.shape[2]
    # The series read back by the importer is the same volume in the same place (compared in RAS order).
    loaded = load_dicom_series(tmp_path / "CT")
    original = nib.as_closest_canonical(nib.Nifti1Image(ph.volume, ph.affine))
    reread = nib.as_closest_canonical(nib.Nifti1Image(loaded.data, loaded.geometry.affine))
    assert np.array_equal(np.asarray(original.dataobj), np.asarray(reread.dataobj))
    assert np.allclose(original.affine, reread.affine, atol=1e-4)
    first = dcmread(paths[0])
    assert first.RescaleType == "HU" and float(first.RescaleIntercept) <= -1024

    names = ["pancreas", "pancreas_head", "pancreatic_lesion", "liver", "veins"]
    segments = [(dicom_seg.SegmentSpec(n, "#1f77b4", n == "pancreatic_lesion"), ph.masks[n]) for n in names]
    assert (ph.masks["pancreas"] & ph.masks["pancreas_head"]).any()  # overlapping structures
    seg = dicom_seg.segmentation(
        series,
        segments,
        manual=False,
        algorithm_name="phantom-unet",
        algorithm_version="v2",
        series_uid=dicom_seg.uid("s"),
        sop_uid=dicom_seg.uid("i"),
    )
    data = dicom_seg.seg_to_bytes(seg)
    back = dicom_seg.read_segments(data, geometry)
    assert list(back) == names
    for name in names:
        assert np.array_equal(back[name], ph.masks[name]), name

    # The same through highdicom, by the referenced source instances.
    parsed = hd.seg.segread(_save(tmp_path, data))
    assert parsed.SegmentationType == "BINARY"
    desc = parsed.get_segment_description(1)
    assert desc.algorithm_type == hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC
    assert desc.segment_label == "pancreas"
    uids = [str(ds.SOPInstanceUID) for ds in series]
    stack = parsed.get_pixels_by_source_instance(uids, segment_numbers=[1, 2], combine_segments=False)
    for index, name in enumerate(["pancreas", "pancreas_head"]):
        assert np.array_equal(np.transpose(stack[..., index], (2, 1, 0)).astype(bool), ph.masks[name])


def _save(folder: Path, data: bytes) -> Path:
    path = folder / "seg.dcm"
    path.write_bytes(data)
    return path


def test_manual_segments_and_colours_from_the_schema() -> None:
    ph = _phantom("RAS", 2)
    series = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("c", "s"))
    seg = dicom_seg.segmentation(
        series,
        [(dicom_seg.SegmentSpec("liver", "#ff0000"), ph.masks["liver"])],
        manual=True,
        algorithm_name="",
        algorithm_version="",
        series_uid=dicom_seg.uid("a"),
        sop_uid=dicom_seg.uid("b"),
    )
    item = seg.SegmentSequence[0]
    assert item.SegmentAlgorithmType == "MANUAL"
    assert "SegmentationAlgorithmIdentificationSequence" not in item
    assert hd.color.CIELabColor.from_dicom_value(item.RecommendedDisplayCIELabValue).to_rgb() == (255, 0, 0)


def _nii(path: str) -> Any:
    """A NIfTI image from a file."""
    return nib.load(path)


@pytest.mark.parametrize("which", ["pancreatic_lesion", "empty"])
def test_single_segment_and_empty_seg_round_trip(which: str) -> None:
    ph = _phantom("LPS", 7)
    mask = ph.masks["pancreatic_lesion"] if which != "empty" else np.zeros(ph.volume.shape, dtype=bool)
    assert mask.any() == (which != "empty")
    series = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("one", "s"))
    seg = dicom_seg.segmentation(
        series,
        [(dicom_seg.SegmentSpec("pancreatic_lesion", "#00ff00", True), mask)],
        manual=True,
        algorithm_name="",
        algorithm_version="",
        series_uid=dicom_seg.uid("one-series"),
        sop_uid=dicom_seg.uid("one-sop"),
    )
    assert int(seg.NumberOfFrames) <= int(mask.any(axis=(0, 1)).sum()) or which == "empty"
    back = dicom_seg.read_segments(dicom_seg.seg_to_bytes(seg), Geometry.from_affine(ph.volume.shape, ph.affine))
    assert np.array_equal(back["pancreatic_lesion"], mask)


def test_msd_dataset_json_lists_test_cases_apart() -> None:
    data = layouts.msd_dataset_json(
        layouts.consecutive_labels(["liver"]), ["a"], name="x", description="", test_case_ids=["t1", "t2"]
    )
    assert data["numTraining"] == 1 and data["numTest"] == 2
    assert data["test"] == ["./imagesTs/t1.nii.gz", "./imagesTs/t2.nii.gz"]
    assert [t["image"] for t in data["training"]] == ["./imagesTr/a.nii.gz"]


def test_apply_ignore_marks_only_unlabelled_voxels_and_widens_the_type() -> None:
    label = np.array([[[0, 1], [2, 0]]], dtype=np.uint8)
    assert layouts.apply_ignore(label, 3).tolist() == [[[3, 1], [2, 3]]]
    wide = layouts.apply_ignore(label, 300)
    assert wide.dtype == np.uint16 and wide.tolist() == [[[300, 1], [2, 300]]]
    assert label.tolist() == [[[0, 1], [2, 0]]]  # the input is left alone
    assert layouts.is_test_split("Test") and layouts.is_test_split("ts") and not layouts.is_test_split("val")


def test_nnunet_validator_checks_test_folders_and_the_ignore_label(tmp_path: Path) -> None:
    root = tmp_path / "Dataset011_Split"
    ph, other = _phantom("RAS", 1), _phantom("RAS", 2)
    names = ["liver", "pancreas"]
    specs = layouts.consecutive_labels(names)
    for case, phantom, test in (("tr", ph, False), ("ts", other, True)):
        painted = layouts.paint_combined({n: phantom.masks[n] for n in names}, specs, phantom.volume.shape)
        layouts.write_nnunet_case(
            root,
            case,
            image_nii_gz=to_nifti_gz(phantom.volume, phantom.affine),
            affine=phantom.affine,
            label_map=layouts.apply_ignore(painted, 3) if test else painted,
            test=test,
        )
    data = layouts.nnunet_dataset_json({s.name: s.value for s in specs}, 1, name="s", description="", ignore_value=3)
    assert data["labels"] == {"background": 0, "liver": 1, "pancreas": 2, "ignore": 3}
    layouts.write_json(root / "dataset.json", data)
    assert layouts.validate_nnunet_dataset(root) == []
    assert sorted(p.name for p in (root / "imagesTs").iterdir()) == ["ts_0000.nii.gz"]
    data["labels"] = {"background": 0, "liver": 1, "ignore": 2, "pancreas": 3}
    layouts.write_json(root / "dataset.json", data)
    assert any("ignore label must be" in e for e in layouts.validate_nnunet_dataset(root))
    data["labels"] = {"background": 0, "liver": 1, "pancreas": 2}
    layouts.write_json(root / "dataset.json", data)
    assert layouts.validate_nnunet_dataset(root) == ["case ts: label values [3] are not declared"]
    (root / "imagesTr" / "ts_0000.nii.gz").write_bytes((root / "imagesTs" / "ts_0000.nii.gz").read_bytes())
    assert any("in both imagesTr and imagesTs" in e for e in layouts.validate_nnunet_dataset(root))
