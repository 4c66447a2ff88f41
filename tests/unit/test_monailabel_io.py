"""MONAI Label label codecs (issue 14 item 2): combined .nii.gz maps and 3D Slicer .seg.nrrd files to and from
per-structure masks, the parent rule, geometry checks and bounded decoding."""

from __future__ import annotations

import gzip
import io
import zlib
from pathlib import Path

import nrrd
import numpy as np
import pytest

from backend.core.errors import InvalidInput, PayloadTooLarge
from backend.imaging import monailabel_io as mio
from backend.imaging import monailabel_write as mwrite
from backend.imaging.nifti import to_nifti_gz

SHAPE = (12, 10, 8)
AFFINE = np.array([[0.8, 0.0, 0.0, -100.0], [0.0, 0.8, 0.0, -90.0], [0.0, 0.0, 2.5, 30.0], [0.0, 0.0, 0.0, 1.0]])
SCHEMA = {"liver": 1, "pancreas": 2, "pancreas_head": 3, "pancreas_body": 4, "pancreas_tail": 5}
PARENTS = {"pancreas_head": "pancreas", "pancreas_body": "pancreas", "pancreas_tail": "pancreas"}
COLOURS = {"liver": "#aa3311", "pancreas": (230, 200, 40), "pancreas_head": (0.1, 0.2, 0.3)}


def _masks() -> dict[str, np.ndarray]:
    """Liver apart; pancreas overlapping its head, body and tail (parts inside the parent)."""
    m = {s: np.zeros(SHAPE, dtype=bool) for s in SCHEMA}
    m["liver"][0:4, 0:4, 0:4] = True
    m["pancreas"][5:11, 3:7, 2:6] = True
    m["pancreas_head"][5:7, 3:7, 2:6] = True
    m["pancreas_body"][7:9, 3:7, 2:6] = True
    m["pancreas_tail"][9:11, 3:6, 2:5] = True
    return m


def _read(name: str, data: bytes, label_info: list[tuple[str, int]] | None = None, **kw: object) -> dict:
    args: dict = {"shape": SHAPE, "affine": AFFINE, "label_info": label_info, "schema_indices": SCHEMA}
    args["parents"] = PARENTS
    args.update(kw)
    return mio.read_label_upload(name, data, **args)


def _same(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    assert set(a) == set(b)
    for k in a:
        assert a[k].dtype == bool and a[k].shape == SHAPE
        assert np.array_equal(a[k], b[k]), k


def test_combined_map_round_trip_keeps_parts_and_parent_rule() -> None:
    masks = _masks()
    data = mwrite.write_combined_map(masks, SCHEMA, AFFINE)
    assert data[:2] == b"\x1f\x8b"
    got = _read("C:\\Users\\doc\\Desktop\\label.nii.gz", data)
    # Parts are written on top of their parent; the parent rule restores the whole pancreas.
    _same(got, masks)


def test_parent_rule_on_a_combined_map_with_label_info() -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[5:7, 3:7, 2:6] = 7  # client index of the head
    labels[8:10, 3:7, 2:6] = 9  # client index of pancreas (the rest)
    data = to_nifti_gz(labels, AFFINE)
    got = _read("/home/u/x.nii.gz", data, [("background", 0), ("pancreas_head", 7), ("pancreas", 9)])
    assert set(got) == {"pancreas_head", "pancreas"}  # absent structures are left to the caller (base's mask)
    assert np.array_equal(got["pancreas_head"], labels == 7)
    assert np.array_equal(got["pancreas"], (labels == 7) | (labels == 9))


def test_seg_nrrd_round_trip_keeps_overlaps_as_separate_segments() -> None:
    masks = _masks()
    data = mwrite.write_seg_nrrd(masks, SCHEMA, COLOURS, AFFINE)
    got = _read("/tmp/Segmentation.seg.nrrd", data)
    _same(got, masks)
    # Readable by pynrrd: a layered 4D array with Slicer's segment fields, the pancreas on its own layer.
    header = nrrd.read_header(io.BytesIO(data))
    assert header["sizes"][0] >= 2 and list(header["sizes"][1:]) == list(SHAPE)
    assert header["kinds"][0] == "list"
    names = {header[f"Segment{n}_Name"] for n in range(5)}
    assert names == set(SCHEMA)
    layer_of = {header[f"Segment{n}_Name"]: header[f"Segment{n}_Layer"] for n in range(5)}
    assert layer_of["pancreas"] != layer_of["pancreas_head"]
    assert header["Segment0_Color"].split()[0] == f"{0xAA / 255:.6g}"


def test_seg_nrrd_is_readable_by_pynrrd_in_lps(tmp_path: Path) -> None:
    masks = {"liver": _masks()["liver"]}
    data = mwrite.write_seg_nrrd(masks, SCHEMA, {}, AFFINE)
    path = tmp_path / "l.seg.nrrd"
    path.write_bytes(data)
    arr, header = nrrd.read(str(path))
    assert arr.shape == SHAPE and header["space"] == "left-posterior-superior"
    assert np.array_equal(arr == 1, masks["liver"])
    assert np.allclose(header["space origin"], [100.0, 90.0, 30.0])
    assert np.allclose(header["space directions"], np.diag([-0.8, -0.8, 2.5]))


def _slicer_file(layers: np.ndarray, fields: dict[str, str], origin_lps: list[float] | None = None) -> bytes:
    """A .seg.nrrd as Slicer writes it (4D layered, LPS)."""
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE
    header = {
        "type": "unsigned char",
        "space": "left-posterior-superior",
        "kinds": ["list", "domain", "domain", "domain"],
        "space directions": np.vstack([np.full((1, 3), np.nan), lps[:3, :3].T]),
        "space origin": np.array(origin_lps if origin_lps is not None else lps[:3, 3]),
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        **fields,
    }
    buf = io.BytesIO()
    nrrd.write(buf, layers, header)
    return buf.getvalue()


def test_slicer_layered_file_with_label_values_and_cropped_extent() -> None:
    masks = _masks()
    sub = (slice(4, 12), slice(2, 8), slice(1, 7))  # a cropped extent holding the pancreas
    layers = np.zeros((2, 8, 6, 6), dtype=np.uint8)
    layers[0][masks["pancreas"][sub]] = 1
    layers[1][masks["pancreas_head"][sub]] = 1
    layers[1][masks["pancreas_tail"][sub]] = 2
    origin = (np.diag([-1.0, -1.0, 1.0, 1.0]) @ AFFINE @ np.array([4, 2, 1, 1.0]))[:3]
    fields = {
        "Segment0_Name": "Pancreas", "Segment0_LabelValue": "1", "Segment0_Layer": "0",
        "Segment1_Name": "pancreas_head", "Segment1_LabelValue": "1", "Segment1_Layer": "1",
        "Segment2_Name": "pancreas_tail", "Segment2_LabelValue": "2", "Segment2_Layer": "1",
    }  # fmt: skip
    got = _read("Segmentation.seg.nrrd", _slicer_file(layers, fields, list(origin)))
    assert set(got) == {"pancreas", "pancreas_head", "pancreas_tail"}
    for s in got:
        assert np.array_equal(got[s], masks[s]), s


def test_wrong_shape_is_refused_naming_both_shapes() -> None:
    data = to_nifti_gz(np.zeros((12, 10, 9), dtype=np.uint8), AFFINE)
    with pytest.raises(InvalidInput) as exc:
        _read("label.nii.gz", data)
    assert "(12, 10, 9)" in exc.value.message and "(12, 10, 8)" in exc.value.message


def test_wrong_affine_is_refused_naming_the_difference() -> None:
    moved = AFFINE.copy()
    moved[0, 3] += 3.0
    with pytest.raises(InvalidInput) as exc:
        _read("label.nii.gz", to_nifti_gz(np.zeros(SHAPE, dtype=np.uint8), moved))
    assert "affine" in exc.value.message and "3 mm" in exc.value.message
    flipped = np.diag([-0.8, 0.8, 2.5, 1.0])
    seg = mwrite.write_seg_nrrd({"liver": _masks()["liver"]}, SCHEMA, {}, flipped)
    with pytest.raises(InvalidInput) as exc:
        _read("x.seg.nrrd", seg)
    assert "orientation" in exc.value.message and "LAS" in exc.value.message


def test_seg_nrrd_too_big_for_the_scan_is_refused() -> None:
    big = {"liver": np.ones((12, 10, 9), dtype=bool)}
    with pytest.raises(InvalidInput) as exc:
        _read("x.seg.nrrd", mwrite.write_seg_nrrd(big, SCHEMA, {}, AFFINE))
    assert "(12, 10, 9)" in exc.value.message and "(12, 10, 8)" in exc.value.message


@pytest.mark.parametrize(
    "name,data",
    [
        ("label.nii.gz", b""),
        ("label.nii.gz", b"this is not an image at all, just words" * 20),
        ("label.nii.gz", gzip.compress(b"garbage" * 100, mtime=0)),
        ("label.seg.nrrd", b"NRRD0004\ntype: banana\n\n"),
        ("label.seg.nrrd", b"NRRD0004\ndimension: 3\n"),  # no end of header
        ("label.png", b"\x89PNG\r\n\x1a\n"),
    ],
)
def test_garbage_is_refused_with_invalid_input(name: str, data: bytes) -> None:
    with pytest.raises(InvalidInput) as exc:
        _read(name, data)
    assert exc.value.code == "invalid_input"


def test_truncated_and_bomb_nrrd_refused_before_inflating() -> None:
    good = mwrite.write_seg_nrrd({"liver": _masks()["liver"]}, SCHEMA, {}, AFFINE)
    with pytest.raises(InvalidInput):
        _read("x.seg.nrrd", good[:-20])
    # A header declaring a huge grid is refused (413) from the header alone.
    bomb = good.replace(b"sizes: 12 10 8", b"sizes: 40000 40000 40000", 1)
    with pytest.raises((PayloadTooLarge, InvalidInput)):
        _read("x.seg.nrrd", bomb)
    # More data than declared (a zero bomb behind a small header) is refused, never fully inflated.
    head, _, _ = good.partition(b"\n\n")
    comp = zlib.compressobj(6, zlib.DEFLATED, 31)
    body = comp.compress(b"\x00" * (50 << 20)) + comp.flush()
    with pytest.raises(InvalidInput) as exc:
        _read("x.seg.nrrd", head + b"\n\n" + body)
    assert "more data than its header declares" in exc.value.message


def test_unknown_names_and_stray_values_are_refused() -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[0, 0, 0] = 42
    with pytest.raises(InvalidInput) as exc:
        _read("l.nii.gz", to_nifti_gz(labels, AFFINE))
    assert "42" in exc.value.message
    with pytest.raises(InvalidInput) as exc:
        _read("l.nii.gz", to_nifti_gz(labels, AFFINE), [("spleen", 42)])
    assert "spleen" in exc.value.message
    seg = mwrite.write_seg_nrrd({"liver": _masks()["liver"]}, {"kidney": 1, "liver": 1}, {}, AFFINE)
    renamed = seg.replace(b"Segment0_Name:=liver", b"Segment0_Name:=kidney")
    with pytest.raises(InvalidInput) as exc:
        _read("l.seg.nrrd", renamed)
    assert "kidney" in exc.value.message


def test_base_name_and_format() -> None:
    assert mio.base_name("C:\\a\\b\\label.seg.nrrd") == "label.seg.nrrd"
    assert mio.base_name("/tmp/x/y.nii.gz") == "y.nii.gz"
    assert mio.label_format("/tmp/x.bin", b"NRRD0005\n") == "nrrd"


def test_plain_nrrd_label_map_in_ras_and_old_style_layers() -> None:
    masks = _masks()
    labels = np.zeros(SHAPE, dtype=np.uint16)
    labels[masks["liver"]] = 1
    labels[masks["pancreas_head"]] = 3
    header = {
        "type": "unsigned short",
        "space": "right-anterior-superior",
        "space directions": AFFINE[:3, :3].T,
        "space origin": AFFINE[:3, 3],
        "encoding": "raw",
    }
    buf = io.BytesIO()
    nrrd.write(buf, labels, header)
    got = _read("label.nrrd", buf.getvalue())
    assert np.array_equal(got["liver"], masks["liver"])
    assert np.array_equal(got["pancreas"], masks["pancreas_head"])  # parent rule
    # Slicer before 4.11: one segment per layer, value 1, no LabelValue/Layer fields.
    layers = np.stack([masks["pancreas"], masks["pancreas_body"]]).astype(np.uint8)
    old = _slicer_file(layers, {"Segment0_Name": "pancreas", "Segment1_Name": "pancreas_body"})
    got = _read("old.seg.nrrd", old)
    assert np.array_equal(got["pancreas"], masks["pancreas"])
    assert np.array_equal(got["pancreas_body"], masks["pancreas_body"])


def test_label_info_names_match_case_insensitively_and_bad_indices_are_refused() -> None:
    labels = np.zeros(SHAPE, dtype=np.uint8)
    labels[_masks()["liver"]] = 1
    data = to_nifti_gz(labels, AFFINE)
    got = _read("l.nii.gz", data, [("Background", 0), ("Liver", 1)])
    assert set(got) == {"liver"} and np.array_equal(got["liver"], _masks()["liver"])
    for info in ([("liver", "x")], [("liver", -1)], [("liver", 1), ("pancreas", 1)]):
        with pytest.raises(InvalidInput):
            _read("l.nii.gz", data, info)  # type: ignore[arg-type]


def test_combined_map_paint_order() -> None:
    a = np.zeros(SHAPE, dtype=bool)
    a[0:6] = True
    b = np.zeros(SHAPE, dtype=bool)
    b[4:8] = True
    idx = {"liver": 1, "pancreas": 2}
    for order, winner in ((["liver", "pancreas"], 2), (["pancreas", "liver"], 1), (None, 2)):
        got = mwrite.write_combined_map({"liver": a, "pancreas": b}, idx, AFFINE, order=order)
        labels = _read("c.nii.gz", got, [("liver", 1), ("pancreas", 2)], parents={})
        assert bool(labels["liver"][5, 0, 0]) == (winner == 1)
