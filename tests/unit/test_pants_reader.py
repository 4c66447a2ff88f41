"""Tests for backend.imaging.pants: PanTS folder layout, metadata sheets and normalisation."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import openpyxl
import pytest

from backend.core.errors import InvalidInput
from backend.imaging.pants import (
    NormalisedMetadata,
    normalise_metadata,
    read_metadata_sheet,
    scan_pants_folder,
)

SCHEMA_PATH = Path("/work/shared/reference/pants-label-schema.json")
STRUCTURES = ["aorta", "liver", "pancreas", "pancreatic_lesion", "spleen"]

HEADER = [
    "BDMAP ID",
    "shape",
    "spacing",
    "ct phase",
    "sex",
    "age",
    "manufacturer",
    "manufacturer model",
    "study type",
    "site",
    "site detail",
    "site nationality",
    "study year",
    "tumor?",
    "number of pancreatic lesion instances",
]
ROWS = [
    [
        "PanTS_00000002",
        "(512, 512, 120)",
        "(0.7, 0.7, 0.8)",
        "Venous",
        " M ",
        " 63 ",
        "SIEMENS",
        "SOMATOM Force",
        "CT abdomen",
        "S1",
        "Hospital A; Hospital B",
        "US",
        "2012; 2016; 2020",
        "1",
        "2",
    ],
    [
        "PanTS_00000001",
        "(512, 333, 200)",
        "(0.625, 0.625, 0.8)",
        "Non-contrast",
        "f",
        "47.0",
        "GE MEDICAL SYSTEMS",
        "",
        "",
        "S2",
        "",
        "",
        "",
        "0",
        "0",
    ],
    ["PanTS_00000003", "", "", "", "", "", "", "", "", "", "", "", "", "", ""],
]


def _nii(path: Path, shape: tuple[int, int, int] = (4, 4, 3), value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.full(shape, value, dtype=np.int16), np.eye(4)), path)


def _case(root: Path, case_id: str, split: str = "Tr", masks: tuple[str, ...] = ()) -> None:
    _nii(root / f"Image{split}" / case_id / "ct.nii.gz")
    for name in masks:
        path = root / f"Label{split}" / case_id / "segmentations" / name
        if name.endswith((".nii", ".nii.gz")):
            _nii(path, value=1)
        else:
            path.write_text("not an image")


def _write_csv(path: Path, header: list[str], rows: list[list[str]], bom: bool = False) -> None:
    import csv
    import io

    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(("\ufeff" if bom else "") + buf.getvalue(), encoding="utf-8")


def _write_xlsx(path: Path, header: list[str], rows: list[list[object]]) -> None:
    book = openpyxl.Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(header)
    for row in rows:
        sheet.append(row)
    book.save(path)


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    root = tmp_path / "PanTS"
    _case(root, "PanTS_00000002", masks=("aorta.nii.gz", "liver.nii.gz", "pancreas.nii.gz", "extra_thing.nii.gz"))
    _case(root, "PanTS_00000001", masks=("liver.nii.gz", "spleen.nii", "notes.txt", ".DS_Store"))
    _case(root, "PanTS_00000003", split="Te")
    (root / "ImageTr" / ".DS_Store").write_text("x")
    (root / "ImageTr" / "README.txt").write_text("stray file next to the cases")
    _nii(root / "LabelTr" / "PanTS_00000002" / "combined_labels.nii.gz")
    _write_xlsx(root / "metadata.xlsx", HEADER, ROWS)  # type: ignore[arg-type]
    return root


def test_scan_layout(dataset: Path) -> None:
    cases = scan_pants_folder(dataset, STRUCTURES)
    assert [c.case_id for c in cases] == ["PanTS_00000001", "PanTS_00000002", "PanTS_00000003"]
    assert [c.split for c in cases] == ["train", "train", "test"]
    one, two, three = cases
    assert one.image_path == dataset.resolve() / "ImageTr" / "PanTS_00000001" / "ct.nii.gz"
    assert three.image_path == dataset.resolve() / "ImageTe" / "PanTS_00000003" / "ct.nii.gz"
    assert list(two.structure_paths) == ["aorta", "liver", "pancreas"]
    assert two.structure_paths["pancreas"].name == "pancreas.nii.gz"
    assert two.missing_structures == ["pancreatic_lesion", "spleen"]
    assert two.unknown_files == ["extra_thing.nii.gz"]
    assert list(one.structure_paths) == ["liver", "spleen"]
    assert one.structure_paths["spleen"].name == "spleen.nii"
    assert one.unknown_files == ["notes.txt"]
    assert one.missing_structures == ["aorta", "pancreas", "pancreatic_lesion"]
    assert three.structure_paths == {}
    assert three.missing_structures == STRUCTURES
    assert all(p.is_file() for c in cases for p in c.structure_paths.values())


def test_metadata_from_xlsx(dataset: Path) -> None:
    cases = {c.case_id: c for c in scan_pants_folder(dataset, STRUCTURES)}
    two = cases["PanTS_00000002"]
    assert two.raw_metadata["sex"] == " M "
    assert two.raw_metadata["age"] == " 63 "
    assert two.raw_metadata["BDMAP ID"] == "PanTS_00000002"
    meta = two.metadata
    assert meta.sex == "M"
    assert meta.age == 63
    assert meta.phase == "venous"
    assert meta.manufacturer == "Siemens"
    assert meta.manufacturer_model == "SOMATOM Force"
    assert meta.header_spacing == (0.7, 0.7, 0.8)
    assert meta.header_shape == (512, 512, 120)
    assert meta.slice_thickness is None  # never copied from spacing
    assert meta.tumor is True
    assert meta.lesion_instances == 2
    assert meta.site == "S1" and meta.site_detail == "Hospital A; Hospital B" and meta.nationality == "US"
    assert meta.study_year == "2012; 2016; 2020"
    one = cases["PanTS_00000001"].metadata
    assert (one.sex, one.age, one.phase, one.manufacturer, one.tumor) == ("F", 47, "non-contrast", "GE", False)
    assert one.manufacturer_model is None and one.site_detail is None
    three = cases["PanTS_00000003"]
    assert three.raw_metadata["sex"] == ""
    assert three.metadata == NormalisedMetadata()


def test_metadata_csv_with_bom_and_xlsx_preferred(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    _case(root, "PanTS_00000001")
    _write_csv(root / "metadata.csv", HEADER, [ROWS[1]], bom=True)
    (case,) = scan_pants_folder(root, STRUCTURES)
    assert case.raw_metadata["BDMAP ID"] == "PanTS_00000001"
    assert case.metadata.manufacturer == "GE"
    _write_xlsx(root / "metadata.xlsx", HEADER, [["PanTS_00000001", *[""] * 5, "Philips"]])
    (case,) = scan_pants_folder(root, STRUCTURES)
    assert case.metadata.manufacturer == "Philips"


def test_no_metadata_sheet(tmp_path: Path) -> None:
    _case(tmp_path, "PanTS_00000009")
    (case,) = scan_pants_folder(tmp_path, STRUCTURES)
    assert case.raw_metadata == {}
    assert case.metadata == NormalisedMetadata()


def test_case_without_ct_rejected(tmp_path: Path) -> None:
    _case(tmp_path, "PanTS_00000001")
    (tmp_path / "ImageTr" / "PanTS_00000007").mkdir()
    with pytest.raises(InvalidInput, match=r"case PanTS_00000007 .*has no ct\.nii\.gz"):
        scan_pants_folder(tmp_path, STRUCTURES)


def test_root_without_image_folders_rejected(tmp_path: Path) -> None:
    (tmp_path / "LabelTr").mkdir()
    with pytest.raises(InvalidInput, match="neither ImageTr nor ImageTe"):
        scan_pants_folder(tmp_path, STRUCTURES)
    with pytest.raises(InvalidInput, match="does not exist"):
        scan_pants_folder(tmp_path / "nope", STRUCTURES)


def test_case_in_two_splits_rejected(tmp_path: Path) -> None:
    _case(tmp_path, "PanTS_00000001")
    _case(tmp_path, "PanTS_00000001", split="Te")
    with pytest.raises(InvalidInput, match="more than one split"):
        scan_pants_folder(tmp_path, STRUCTURES)


def test_symlink_escaping_root_rejected(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    _nii(outside / "ct.nii.gz")
    _nii(outside / "secret.nii.gz")
    root = tmp_path / "root"
    _case(root, "PanTS_00000001")

    (root / "ImageTr" / "PanTS_00000002").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidInput, match="points outside the dataset folder"):
        scan_pants_folder(root, STRUCTURES)
    (root / "ImageTr" / "PanTS_00000002").unlink()

    seg = root / "LabelTr" / "PanTS_00000001" / "segmentations"
    seg.mkdir(parents=True)
    (seg / "liver.nii.gz").symlink_to(outside / "secret.nii.gz")
    with pytest.raises(InvalidInput, match=r"mask file of case PanTS_00000001 .*points outside"):
        scan_pants_folder(root, STRUCTURES)
    (seg / "liver.nii.gz").unlink()

    (root / "metadata.csv").symlink_to(outside / "secret.nii.gz")
    with pytest.raises(InvalidInput, match=r"metadata sheet .*points outside"):
        scan_pants_folder(root, STRUCTURES)
    (root / "metadata.csv").unlink()

    # A symlink that stays inside the root is fine.
    _nii(root / "shared" / "liver.nii.gz", value=1)
    (seg / "liver.nii.gz").symlink_to(root / "shared" / "liver.nii.gz")
    (case,) = scan_pants_folder(root, STRUCTURES)
    assert list(case.structure_paths) == ["liver"]
    # The path inside the dataset is reported, not the link target.
    assert (
        case.structure_paths["liver"]
        == root.resolve() / "LabelTr" / "PanTS_00000001" / "segmentations" / "liver.nii.gz"
    )


def test_unsafe_case_name_rejected(tmp_path: Path) -> None:
    _case(tmp_path, "PanTS_00000001")
    _nii(tmp_path / "ImageTr" / "x\\..\\evil" / "ct.nii.gz")
    with pytest.raises(InvalidInput, match="unsafe case name"):
        scan_pants_folder(tmp_path, STRUCTURES)


# --- metadata sheets -----------------------------------------------------------------------------


def test_read_metadata_sheet_csv_and_xlsx_agree(tmp_path: Path) -> None:
    rows = [*ROWS, ["  ", "(1, 1, 1)"]]  # a row without an id is ignored
    _write_csv(tmp_path / "m.csv", HEADER, rows)
    _write_xlsx(tmp_path / "m.xlsx", HEADER, rows)  # type: ignore[arg-type]
    a = read_metadata_sheet(tmp_path / "m.csv")
    b = read_metadata_sheet(tmp_path / "m.xlsx")
    assert a == b
    assert sorted(a) == ["PanTS_00000001", "PanTS_00000002", "PanTS_00000003"]
    assert a["PanTS_00000002"]["spacing"] == "(0.7, 0.7, 0.8)"


def test_read_metadata_xlsx_numeric_cells(tmp_path: Path) -> None:
    _write_xlsx(tmp_path / "m.xlsx", ["BDMAP ID", "age", "tumor?", "spacing"], [["PanTS_1", 63, 1.0, None]])
    row = read_metadata_sheet(tmp_path / "m.xlsx")["PanTS_1"]
    assert row == {"BDMAP ID": "PanTS_1", "age": "63", "tumor?": "1", "spacing": ""}


def test_read_metadata_sheet_errors(tmp_path: Path) -> None:
    _write_csv(tmp_path / "nokey.csv", ["case", "age"], [["x", "1"]])
    with pytest.raises(InvalidInput, match="key column 'BDMAP ID' not found"):
        read_metadata_sheet(tmp_path / "nokey.csv")
    _write_csv(tmp_path / "dup.csv", ["BDMAP ID", "age"], [["A", "1"], ["B", "2"], ["A", "3"]])
    with pytest.raises(InvalidInput, match=r"'A' appears twice \(rows 2 and 4\)"):
        read_metadata_sheet(tmp_path / "dup.csv")
    (tmp_path / "m.json").write_text("{}")
    with pytest.raises(InvalidInput, match=r"must be \.csv or \.xlsx"):
        read_metadata_sheet(tmp_path / "m.json")
    (tmp_path / "broken.xlsx").write_bytes(b"not a zip")
    with pytest.raises(InvalidInput, match=r"not a readable \.xlsx"):
        read_metadata_sheet(tmp_path / "broken.xlsx")


# --- normalisation -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("SIEMENS", "Siemens"),
        ("Siemens Healthineers", "Siemens"),
        ("siemens", "Siemens"),
        ("GE MEDICAL SYSTEMS", "GE"),
        ("GE Healthcare", "GE"),
        ("ge medical systems, llc", "GE"),
        ("Philips", "Philips"),
        ("Philips Medical Systems", "Philips"),
        ("TOSHIBA", "Toshiba/Canon"),
        ("Canon Medical Systems", "Toshiba/Canon"),
        ("  Acme Scanners  ", "Acme Scanners"),
        ("", None),
        ("   ", None),
    ],
)
def test_manufacturer_canonical(raw: str, canonical: str | None) -> None:
    assert normalise_metadata({"manufacturer": raw}).manufacturer == canonical


@pytest.mark.parametrize(
    ("raw", "phase"),
    [
        ("Non-contrast", "non-contrast"),
        ("Venous", "venous"),
        (" arterial ", "arterial"),
        ("Delay", "delay"),
        ("Delayed", "delay"),
        ("Portal venous phase", "venous"),
        ("", None),
        ("who knows", None),
    ],
)
def test_phase_canonical(raw: str, phase: str | None) -> None:
    assert normalise_metadata({"ct phase": raw}).phase == phase


@pytest.mark.parametrize(
    ("raw", "age"),
    [("63", 63), ("63.0", 63), (" 63 ", 63), ("063Y", 63), ("", None), ("unknown", None), ("-4", None)],
)
def test_age(raw: str, age: int | None) -> None:
    assert normalise_metadata({"age": raw}).age == age


@pytest.mark.parametrize(
    ("raw", "sex"), [("M", "M"), (" F", "F"), ("m ", "M"), ("female", "F"), ("", None), ("O", None)]
)
def test_sex(raw: str, sex: str | None) -> None:
    assert normalise_metadata({"sex": raw}).sex == sex


@pytest.mark.parametrize(("raw", "tumor"), [("1", True), ("0", False), ("1.0", True), (" 0 ", False), ("", None)])
def test_tumor_flag(raw: str, tumor: bool | None) -> None:
    assert normalise_metadata({"tumor?": raw}).tumor is tumor


def test_spacing_shape_and_slice_thickness_are_separate() -> None:
    meta = normalise_metadata({"spacing": "(0.625, 0.625, 0.8)", "shape": "(512, 333, 200)"})
    assert meta.header_spacing == (0.625, 0.625, 0.8)
    assert meta.header_shape == (512, 333, 200)
    assert meta.slice_thickness is None
    meta = normalise_metadata({"Spacing": "[0.7 0.7 1.25]", "Slice Thickness": " 2.5 "})
    assert meta.header_spacing == (0.7, 0.7, 1.25)
    assert meta.slice_thickness == 2.5
    bad = normalise_metadata({"spacing": "(0.7, 0.7)", "shape": "(512, 512.5, 3)"})
    assert bad.header_spacing is None and bad.header_shape is None


def test_lesion_instances_and_non_text_values() -> None:
    meta = normalise_metadata({"number of pancreatic lesion instances": "3.0", "age": 71, "tumor?": 1})
    assert meta.lesion_instances == 3
    assert meta.age == 71
    assert meta.tumor is True
    assert normalise_metadata({"number of pancreatic lesion instances": "1.5"}).lesion_instances is None
    assert normalise_metadata({}) == NormalisedMetadata()


def test_schema_structures_scan(dataset: Path) -> None:
    schema = json.loads(SCHEMA_PATH.read_text()) if SCHEMA_PATH.exists() else None
    if schema is None:
        pytest.skip("shared PanTS schema not present")
    names = [s["name"] for s in schema["structures"]]
    cases = {c.case_id: c for c in scan_pants_folder(dataset, names)}
    two = cases["PanTS_00000002"]
    assert list(two.structure_paths) == ["aorta", "liver", "pancreas"]
    assert len(two.missing_structures) == 28 - 3
    assert two.missing_structures[0] == "adrenal_gland_left"
