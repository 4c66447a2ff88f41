"""DICOM SEG with standard codes: the PanTS code table, coded segments read back by highdicom, the private scheme,
dciodvfy on the exported SEG and CT, and reading a SEG (ours, a real one from pydicom-data) back onto a scan grid."""

from __future__ import annotations

import json
import os
from io import BytesIO
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pytest
from pydicom import dcmread
from pydicom.sr.codedict import codes

from backend.core.errors import InvalidInput
from backend.imaging import dciodvfy, dicom_codes, dicom_seg
from backend.imaging.dicom_codes import Concept, NamedCode, SegmentCoding, StructureCode
from backend.imaging.nifti import Geometry
from backend.imaging.phantom import Phantom, generate_phantom

SCHEMA = Path(__file__).resolve().parents[2] / "backend" / "projects" / "pants_schema.json"
PANTS = json.loads(SCHEMA.read_text())["structures"]
SIDES = {"left": codes.SCT.Left, "right": codes.SCT.Right}


def _require_dciodvfy() -> None:
    """Skip without dicom3tools, except in CI (where .ci/run installs it): there its absence fails."""
    if dciodvfy.available():
        return
    if os.environ.get("CI"):
        pytest.fail("dciodvfy (Debian dicom3tools) is missing in CI")
    pytest.skip("dciodvfy is not installed (apt-get install -y dicom3tools)")


def _phantom() -> Phantom:
    return generate_phantom((48, 48, 16), (3.0, 3.0, 6.0), seed=3, duct=True)


def _all_pants_masks(ph: Phantom) -> dict[str, np.ndarray]:
    """A mask for every PanTS structure: the phantom's, and small boxes for the ones it does not draw."""
    masks = {name: ph.masks[name] for name in ph.masks}
    for index, item in enumerate(s for s in PANTS if s["name"] not in masks):
        box = np.zeros(ph.volume.shape, dtype=bool)
        x, y = 2 + 4 * (index % 10), 2 + 4 * (index // 10)
        box[x : x + 3, y : y + 3, 2 + index % 10 : 5 + index % 10] = True
        masks[item["name"]] = box
    return {s["name"]: masks[s["name"]] for s in PANTS}


def _export(tmp_path: Path, specs: list[dicom_seg.SegmentSpec], masks: list[np.ndarray], ph: Phantom) -> Path:
    series = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("case-1", "seed"))
    dicom_seg.write_datasets(series, tmp_path / "CT")
    seg = dicom_seg.segmentation(
        series,
        list(zip(specs, masks, strict=True)),
        manual=True,
        algorithm_name="",
        algorithm_version="",
        series_uid=dicom_seg.uid("s"),
        sop_uid=dicom_seg.uid("i"),
    )
    path = tmp_path / "seg.dcm"
    path.write_bytes(dicom_seg.seg_to_bytes(seg))
    return path


def test_every_pants_structure_has_a_snomed_ct_code() -> None:
    names = [s["name"] for s in PANTS]
    assert len(names) == 28
    for name in names:
        code = dicom_codes.DEFAULT_CODES[name]
        assert code.standard and code.type.scheme == "SCT", name
        # Every code fits DICOM's value representations.
        for concept in (code.category, code.type, code.modifier, code.region):
            if concept is not None:
                assert Concept.from_json(concept.to_json(), name) == concept
        side = name.rsplit("_", 1)[-1]
        if side in SIDES:
            assert code.modifier is not None and code.modifier.to_code() == SIDES[side], name
        else:
            assert code.modifier is None, name
    table = dicom_codes.DEFAULT_CODES
    assert table["liver"].type.to_code() == codes.SCT.Liver
    assert table["postcava"].type.to_code() == codes.SCT.InferiorVenaCava
    assert table["kidney_left"].type == table["kidney_right"].type
    assert table["pancreas_head"].type.value == "64163001"
    lesion = table["pancreatic_lesion"]
    assert lesion.category.to_code() == codes.cid7150.MorphologicallyAbnormalStructure
    assert lesion.type.to_code() == codes.SCT.Neoplasm
    assert lesion.region is not None and lesion.region.to_code() == codes.SCT.Pancreas
    assert table["aorta"].category.to_code() == codes.cid7150.AnatomicalStructure
    assert dicom_codes.coded_fraction(table[n] for n in names) == 1.0


def test_exported_seg_codes_every_structure_and_keeps_overlaps(tmp_path: Path) -> None:
    ph = _phantom()
    masks = _all_pants_masks(ph)
    specs = [dicom_seg.SegmentSpec(s["name"], s["color"], s["group"] == "lesion") for s in PANTS]
    path = _export(tmp_path, specs, list(masks.values()), ph)
    parsed = hd.seg.segread(path)
    assert parsed.number_of_segments == 28
    for number, item in enumerate(PANTS, start=1):
        name, expected = item["name"], dicom_codes.DEFAULT_CODES[item["name"]]
        desc = parsed.get_segment_description(number)
        assert desc.segment_label == name  # the whole name, not cut to 16 characters
        assert desc.segmented_property_type == expected.type.to_code()
        assert desc.segmented_property_category == expected.category.to_code()
        if expected.modifier is not None:
            modifier = desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence[0]
            assert (modifier.CodeValue, modifier.CodingSchemeDesignator) == (expected.modifier.value, "SCT")
        regions = [hd.sr.CodedConcept.from_dataset(r) for r in desc.get("AnatomicRegionSequence", [])]
        assert regions == ([expected.region.to_code()] if expected.region else [])
        rgb = hd.color.CIELabColor.from_dicom_value(desc.RecommendedDisplayCIELabValue).to_rgb()
        assert "#{:02x}{:02x}{:02x}".format(*rgb) == item["color"]
    assert "CodingSchemeIdentificationSequence" not in dcmread(path)  # no private code was needed
    # Read back onto the scan grid: every structure voxel for voxel, overlapping ones included.
    back = dicom_seg.read_segments(path, Geometry.from_affine(ph.volume.shape, ph.affine))
    assert list(back) == list(masks)
    assert (back["pancreas"] & back["pancreas_head"]).any()
    for name, mask in masks.items():
        assert np.array_equal(back[name], mask), name


def test_exported_seg_and_ct_pass_dciodvfy(tmp_path: Path) -> None:
    _require_dciodvfy()
    ph = _phantom()
    masks = _all_pants_masks(ph)
    specs = [dicom_seg.SegmentSpec(s["name"], s["color"], s["group"] == "lesion") for s in PANTS]
    seg = _export(tmp_path, specs, list(masks.values()), ph)
    ct = sorted((tmp_path / "CT").iterdir())[0]
    assert dcmread(ct).ImageType == ["DERIVED", "SECONDARY", "AXIAL"]
    assert dciodvfy.errors(seg) == []
    assert dciodvfy.errors(ct) == []


def test_structures_without_a_standard_code_use_the_documented_private_scheme(tmp_path: Path) -> None:
    ph = _phantom()
    long_name = "left_" + "x" * 70  # past the 64 characters of a segment label
    custom = {
        "liver": None,  # the table's code
        "hepatic_cyst_cluster": None,  # no standard code: private
        long_name: None,
        "my_liver_part": {  # the schema's own code
            "category": {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"},
            "type": {"scheme": "SCT", "value": "71854001", "meaning": "Colon"},
        },
    }
    specs = [dicom_seg.SegmentSpec(name, "#336699", code=code) for name, code in custom.items()]
    path = _export(tmp_path, specs, [ph.masks["liver"], ph.masks["spleen"], ph.masks["aorta"], ph.masks["stomach"]], ph)
    ds = dcmread(path)
    types = [item.SegmentedPropertyTypeCodeSequence[0] for item in ds.SegmentSequence]
    assert (types[0].CodingSchemeDesignator, types[0].CodeValue) == ("SCT", codes.SCT.Liver.value)
    assert (types[1].CodingSchemeDesignator, types[1].CodeMeaning) == ("99MASKLOOP", "hepatic_cyst_cluster")
    # 20 characters: the first 7, '-' and 8 hex digits of the name's SHA-1 (16, DICOM's limit).
    assert types[1].CodeValue == dicom_codes.private_value("hepatic_cyst_cluster") == "hepatic-7a789d34"
    assert len(types[2].CodeValue) <= 16 and types[2].CodeValue == dicom_codes.private_value(long_name)
    assert ds.SegmentSequence[2].SegmentLabel == long_name[:64]
    assert ds.SegmentSequence[2].SegmentDescription == long_name
    assert types[3].CodeValue == "71854001"
    scheme = ds.CodingSchemeIdentificationSequence[0]
    assert scheme.CodingSchemeDesignator == "99MASKLOOP" and scheme.CodingSchemeName == "maskloop structure codes"
    # Read back: the full name, and each segment matches its structure by code.
    parsed = dicom_seg.parse_seg(path)
    assert [s.label for s in parsed.segments] == list(custom)
    named = [NamedCode(n, (), dicom_codes.structure_code(n, c)) for n, c in custom.items()]
    assert [dicom_codes.match_segment(s.coding(), named) for s in parsed.segments] == list(custom)
    if dciodvfy.available():
        assert dciodvfy.errors(path) == []


def test_schema_codes_are_validated() -> None:
    with pytest.raises(InvalidInput, match="needs a type"):
        StructureCode.from_json({"category": {"scheme": "SCT", "value": "1", "meaning": "x"}})
    with pytest.raises(InvalidInput, match="at most 16"):
        StructureCode.from_json(
            {
                "category": {"scheme": "SCT", "value": "91723000", "meaning": "Anatomical Structure"},
                "type": {"scheme": "SCT", "value": "1" * 17, "meaning": "x"},
            }
        )
    with pytest.raises(InvalidInput, match="unknown fields"):
        StructureCode.from_json({"category": {}, "type": {}, "colour": "red"})
    code = dicom_codes.DEFAULT_CODES["kidney_left"]
    assert StructureCode.from_json(code.to_json()) == code


def test_segments_match_by_code_then_name_else_unknown() -> None:
    table = dicom_codes.DEFAULT_CODES
    named = [NamedCode(s["name"], tuple(s["aliases"]), table[s["name"]]) for s in PANTS]
    kidney = StructureCode(
        Concept("SRT", "T-D000A", "Anatomical Structure"), Concept("SRT", "T-71000", "Kidney"), dicom_codes.RIGHT
    )
    assert dicom_codes.match_segment(SegmentCoding(1, "whatever", kidney), named) == "kidney_right"
    # A neoplasm without a region is the only lesion structure; one in the liver is not the pancreatic lesion.
    neoplasm = StructureCode(dicom_codes.MORPHOLOGICALLY_ABNORMAL, Concept.of(codes.SCT.Neoplasm))
    assert dicom_codes.match_segment(SegmentCoding(2, "Tumour 1", neoplasm), named) == "pancreatic_lesion"
    in_liver = StructureCode(neoplasm.category, neoplasm.type, region=Concept.of(codes.SCT.Liver))
    assert dicom_codes.match_segment(SegmentCoding(3, "Tumour 2", in_liver), named) is None
    # By name: the label, or the code meaning with its side.
    unknown = StructureCode(
        dicom_codes.ANATOMICAL_STRUCTURE, Concept("99OTHER", "42", "Adrenal gland"), dicom_codes.LEFT
    )
    assert dicom_codes.match_segment(SegmentCoding(4, "seg 4", unknown), named) == "adrenal_gland_left"
    assert dicom_codes.match_segment(SegmentCoding(5, "Common Bile Duct", None), named) == "common_bile_duct"
    assert dicom_codes.match_segment(SegmentCoding(6, "CBD", None), named) == "common_bile_duct"  # an alias
    assert dicom_codes.match_segment(SegmentCoding(7, "brain", None), named) is None


def test_a_real_seg_from_pydicom_data_reads_onto_its_grid() -> None:
    """pydicom-data's liver.dcm (legacy SNOMED-RT codes, 3 frames of 512x512) onto the grid of its CT slices."""
    from pydicom.data import get_testdata_file

    try:
        source = get_testdata_file("liver.dcm", download=False)
    except Exception as exc:  # pragma: no cover - depends on the environment
        pytest.skip(f"pydicom-data's liver.dcm is not available offline: {exc}")
    if source is None:
        pytest.skip("pydicom-data's liver.dcm is not installed")
    parsed = dicom_seg.parse_seg(Path(source))
    assert parsed.series_uids == ["1.2.392.200103.20080913.113635.1.2009.6.22.21.43.10.23430.1"]
    [segment] = parsed.segments
    named = [NamedCode(s["name"], (), dicom_codes.DEFAULT_CODES[s["name"]]) for s in PANTS]
    assert dicom_codes.match_segment(segment.coding(), named) == "liver"  # SRT T-62000 is SCT 10200004
    # The CT grid: 512x512 slices of 0.810547 mm, 1 mm apart from z = -128.69 (LPS), as RAS.
    affine = np.diag([-0.810547, -0.810547, 1.0, 1.0])
    affine[:3, 3] = [235.2, 226.8, -128.69]
    masks = parsed.masks(Geometry.from_affine((512, 512, 3), affine))
    frames = np.asarray(dcmread(source).pixel_array)
    assert masks[1].sum(axis=(0, 1)).tolist() == frames.sum(axis=(1, 2)).tolist()
    assert np.array_equal(masks[1][:, :, 0], frames[0].T.astype(bool))
    # A grid the frames do not lie on is refused, naming the file.
    shifted = affine.copy()
    shifted[0, 3] += 0.4
    with pytest.raises(InvalidInput, match=r"liver\.dcm: a SEG frame does not lie on the scan's voxel grid"):
        parsed.masks(Geometry.from_affine((512, 512, 3), shifted))


def test_non_seg_and_unsupported_segs_are_refused(tmp_path: Path) -> None:
    ph = _phantom()
    series = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("c", "s"))
    paths = dicom_seg.write_datasets(series, tmp_path / "CT")
    with pytest.raises(InvalidInput, match=r"0001\.dcm: not a DICOM SEG \(modality CT\)"):
        dicom_seg.parse_seg(paths[0])
    garbage = tmp_path / "notes.dcm"
    garbage.write_bytes(b"hello")
    with pytest.raises(InvalidInput, match=r"notes\.dcm: not a DICOM file"):
        dicom_seg.parse_seg(garbage)


def test_a_fractional_seg_reads_where_it_passes_half(tmp_path: Path) -> None:
    ph = _phantom()
    series = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("f", "s"))
    probability = np.where(ph.masks["liver"], 0.8, 0.0) + np.where(ph.masks["spleen"], 0.3, 0.0)
    code = dicom_codes.DEFAULT_CODES["liver"]
    seg = hd.seg.Segmentation(
        source_images=series,
        pixel_array=np.transpose(probability, (2, 1, 0)).astype(np.float32),
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                1,
                "Liver",
                code.category.to_code(),
                code.type.to_code(),
                hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                hd.AlgorithmIdentificationSequence("m", codes.DCM.ArtificialIntelligence, "1"),
            )
        ],
        series_instance_uid=dicom_seg.uid("f"),
        series_number=3,
        sop_instance_uid=dicom_seg.uid("f", "i"),
        instance_number=1,
        manufacturer="other",
        manufacturer_model_name="other",
        software_versions="1",
        device_serial_number="1",
    )
    path = tmp_path / "fractional.dcm"
    seg.save_as(path)
    back = dicom_seg.read_segments(path, Geometry.from_affine(ph.volume.shape, ph.affine))
    assert np.array_equal(back["Liver"], ph.masks["liver"])  # 0.8 kept, the spleen's 0.3 not


def test_uids_are_deterministic() -> None:
    assert dicom_seg.uid("seed", "case", "study") == dicom_seg.uid("seed", "case", "study")
    assert dicom_seg.uid("seed", "case", "study") != dicom_seg.uid("seed", "case", "series")
    assert dicom_seg.uid("a", "bc") != dicom_seg.uid("ab", "c")
    value = dicom_seg.uid("x")
    assert value.startswith("2.25.") and len(value) <= 64


def _dense_reference(ct: list[Any], masks: list[np.ndarray]) -> Any:
    """What highdicom writes from the dense (slices, rows, columns, segments) array of the slab (the old writer)."""
    filled = np.flatnonzero(np.any([m.any(axis=(0, 1)) for m in masks], axis=0))
    k0, k1 = int(filled[0]), int(filled[-1]) + 1
    pixels = np.stack([np.transpose(m[:, :, k0:k1], (2, 1, 0)) for m in masks], axis=-1).astype(np.uint8)
    specs = [dicom_seg.SegmentSpec(f"s{n}", "#10a0ff") for n in range(len(masks))]
    return hd.seg.Segmentation(
        source_images=ct,
        pixel_array=pixels,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=n,
                segment_label=spec.name,
                segmented_property_category=codes.SCT.Organ,
                segmented_property_type=codes.SCT.Liver,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
            for n, spec in enumerate(specs, start=1)
        ],
        series_instance_uid="1.2.3",
        series_number=2,
        sop_instance_uid="1.2.4",
        instance_number=1,
        manufacturer="m",
        manufacturer_model_name="m",
        software_versions="1",
        device_serial_number="0",
        plane_positions=[
            hd.PlanePositionSequence(hd.CoordinateSystemNames.PATIENT, ct[k].ImagePositionPatient)
            for k in range(k0, k1)
        ],
    )


@pytest.mark.parametrize(("orientation", "even"), [("RAS", False), ("LPS", False), ("IPL", False), ("LPS", True)])
def test_frames_written_per_segment_equal_highdicoms_dense_layout(orientation: str, even: bool) -> None:
    # Odd frame sizes (bits run across frames) and even ones (each frame packed alone), a structure with gaps, an
    # empty one, overlaps, one segment alone.
    shape, spacing = ((45, 37, 13), (3.0, 3.0, 5.0)) if orientation != "IPL" else ((13, 37, 45), (5.0, 3.0, 3.0))
    if even:
        shape = (48, 40, 13)
    ph = generate_phantom(shape, spacing, seed=5, orientation=orientation)
    gaps = np.zeros(shape, dtype=bool)
    gaps[2:5, 3:9, 1] = True
    gaps[10:12, 1:3, shape[2] - 2] = True
    masks = [ph.masks["liver"], ph.masks["pancreas"], ph.masks["pancreas_head"], gaps, np.zeros(shape, dtype=bool)]
    ct = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("c", "s"))
    for chosen in (masks, masks[:1], masks[3:]):
        segments = [(dicom_seg.SegmentSpec(f"s{n}", "#10a0ff"), m) for n, m in enumerate(chosen)]
        ours = dicom_seg.segmentation(
            ct, segments, manual=True, algorithm_name="", algorithm_version="", series_uid="1.2.3", sop_uid="1.2.4"
        )
        reference = _dense_reference(ct, chosen)
        # The file as written (the per-frame items are encoded directly, not by pydicom from datasets), read back.
        written = dcmread(BytesIO(dicom_seg.seg_to_bytes(ours)))
        for seg in (written, ours):
            assert seg.NumberOfFrames == reference.NumberOfFrames
            assert seg.SegmentsOverlap == reference.SegmentsOverlap
            assert seg.get("DimensionOrganizationType") == reference.get("DimensionOrganizationType")
            assert str(seg.SharedFunctionalGroupsSequence) == str(reference.SharedFunctionalGroupsSequence)
            items, reference_items = seg.PerFrameFunctionalGroupsSequence, reference.PerFrameFunctionalGroupsSequence
            assert [str(i) for i in items] == [str(i) for i in reference_items]
            size = -(-int(seg.NumberOfFrames) * seg.Rows * seg.Columns // 8)  # the frames' bits; then padding
            assert len(seg.PixelData) == len(reference.PixelData)
            assert seg.PixelData[:size] == reference.PixelData[:size]
        # pydicom re-encoding the parsed file writes the same bytes (the direct encoding is pydicom's own).
        written.set_original_encoding(None, None)  # forces pydicom to convert and re-encode every element
        assert dicom_seg.seg_to_bytes(written) == dicom_seg.seg_to_bytes(ours)


def test_masks_given_as_boxes_or_loaders_write_the_same_seg() -> None:
    # Frames of 45 x 37 voxels do not end on byte boundaries: the bit stream runs across frames and segments.
    shape = (45, 37, 13)
    ph = generate_phantom(shape, (3.0, 3.0, 5.0), seed=5)
    ct = dicom_seg.ct_series(ph.volume, ph.affine, dicom_seg.SeriesIds.derive("c", "s"))
    masks = [ph.masks["liver"], ph.masks["pancreas"], ph.masks["pancreas_head"]]

    def box_of(mask: np.ndarray, pad: int) -> dicom_seg.MaskBox:
        """The mask cut to its bounding box widened by `pad` voxels (clipped to the grid), in Fortran order."""
        hits = np.argwhere(mask)
        low = np.maximum(hits.min(axis=0) - pad, 0)
        high = np.minimum(hits.max(axis=0) + 1 + pad, shape)
        box = np.asfortranarray(mask[low[0] : high[0], low[1] : high[1], low[2] : high[2]])
        return dicom_seg.MaskBox(shape, (int(low[0]), int(low[1]), int(low[2])), box)

    def written(sources: list[Any]) -> bytes:
        segments = [(dicom_seg.SegmentSpec(f"s{n}", "#10a0ff"), m) for n, m in enumerate(sources)]
        seg = dicom_seg.segmentation(
            ct, segments, manual=True, algorithm_name="", algorithm_version="", series_uid="1.2.3", sop_uid="1.2.4"
        )
        # What highdicom draws from its clock and at random, fixed.
        for keyword in ("ContentDate", "ContentTime", "InstanceCreationDate", "InstanceCreationTime"):
            setattr(seg, keyword, "")
        for item in seg.ContributingEquipmentSequence:
            item.ContributionDateTime = ""
        for item in (*seg.DimensionOrganizationSequence, *seg.DimensionIndexSequence):
            item.DimensionOrganizationUID = "1.2.5"
        return dicom_seg.seg_to_bytes(seg)

    expected = written(masks)
    assert written([box_of(m, 0) for m in masks]) == expected
    assert written([box_of(m, 2) for m in masks]) == expected
    loaded: list[int] = []

    def loader(index: int) -> Any:
        loaded.append(index)
        return box_of(masks[index], 1)

    assert written([lambda i=i: loader(i) for i in range(len(masks))]) == expected
    assert loaded == [0, 1, 2]  # each read once, in segment order
    wrong = dicom_seg.MaskBox((45, 37, 12), (0, 0, 0), np.ones((2, 2, 2), dtype=bool))
    with pytest.raises(InvalidInput, match="12"):
        written([masks[0], wrong])
