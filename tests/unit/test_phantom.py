"""Tests of the synthetic abdominal CT phantom generator and the PanTS-layout writer."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from openpyxl import load_workbook

from backend.imaging.phantom import (
    METADATA_COLUMNS,
    PHANTOM_STRUCTURES,
    Phantom,
    generate_phantom,
    write_pants_dataset,
)

SMALL = (48, 48, 24)
SPACING = (3.0, 3.0, 4.0)

EXPECTED_COLUMNS = [
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


def _world_centroid(ph: Phantom, name: str) -> np.ndarray:
    """World (RAS mm) centroid of a structure mask."""
    idx = np.argwhere(ph.masks[name]).mean(axis=0)
    return np.asarray(ph.affine[:3, :3] @ idx + ph.affine[:3, 3])


def test_structures_are_pants_names_and_masks_match_volume() -> None:
    """Every PanTS-named structure has a boolean mask of the volume's shape."""
    ph = generate_phantom(SMALL, SPACING, seed=0)
    assert set(ph.masks) == set(PHANTOM_STRUCTURES)
    assert ph.volume.dtype == np.int16
    assert ph.volume.shape == SMALL
    assert ph.affine.shape == (4, 4) and ph.affine.dtype == np.float64
    np.testing.assert_allclose(np.diag(ph.affine)[:3], SPACING)
    for name, m in ph.masks.items():
        assert m.dtype == bool and m.shape == SMALL, name
        assert m.any(), name


def test_same_seed_gives_identical_phantoms() -> None:
    """Generation is deterministic for equal arguments."""
    a = generate_phantom(SMALL, SPACING, seed=7)
    b = generate_phantom(SMALL, SPACING, seed=7)
    assert np.array_equal(a.volume, b.volume)
    assert np.array_equal(a.affine, b.affine)
    for name in PHANTOM_STRUCTURES:
        assert np.array_equal(a.masks[name], b.masks[name]), name


def test_different_seeds_give_different_anatomy() -> None:
    """The seed changes organ geometry, not only the noise."""
    a = generate_phantom(SMALL, SPACING, seed=0, noise_hu=0.0)
    b = generate_phantom(SMALL, SPACING, seed=1, noise_hu=0.0)
    assert not np.array_equal(a.volume, b.volume)
    assert not np.array_equal(a.masks["liver"], b.masks["liver"])
    assert not np.array_equal(a.masks["pancreatic_lesion"], b.masks["pancreatic_lesion"])


@pytest.mark.parametrize("seed", [0, 1, 2, 5, 15, 21])  # lesions in head, body and tail
def test_pancreas_is_union_of_disjoint_parts_and_lesion(seed: int) -> None:
    """pancreas == head | body | tail | lesion; the parts are disjoint; the lesion lies in one part."""
    ph = generate_phantom(SMALL, SPACING, seed=seed)
    m = ph.masks
    head, body, tail, les = m["pancreas_head"], m["pancreas_body"], m["pancreas_tail"], m["pancreatic_lesion"]
    assert np.array_equal(m["pancreas"], head | body | tail | les)
    assert not (head & body).any()
    assert not (head & tail).any()
    assert not (body & tail).any()
    assert ph.has_lesion and les.any()
    assert not (les & ~m["pancreas"]).any()
    overlapped = [name for name, part in (("head", head), ("body", body), ("tail", tail)) if (part & les).any()]
    assert len(overlapped) == 1
    # The lesion replaces pancreas tissue: it lies inside the pancreas drawn without a lesion.
    plain = generate_phantom(SMALL, SPACING, seed=seed, lesion=False)
    assert not (les & ~plain.masks["pancreas"]).any()
    assert np.array_equal(m["pancreas"], plain.masks["pancreas"])
    # head is on the patient's right (-x), tail towards the spleen (+x)
    # Head on the patient's right (+x in RAS+), tail towards the spleen on the left.
    assert _world_centroid(ph, "pancreas_head")[0] > _world_centroid(ph, "pancreas_body")[0]
    assert _world_centroid(ph, "pancreas_body")[0] > _world_centroid(ph, "pancreas_tail")[0]


def test_lesion_is_hypodense() -> None:
    """Lesion HU is clearly below the surrounding pancreas."""
    ph = generate_phantom(SMALL, SPACING, seed=2)
    les = ph.masks["pancreatic_lesion"]
    rest = ph.masks["pancreas"] & ~les & ~ph.masks["veins"]
    les_mean = float(ph.volume[les].mean())
    rest_mean = float(ph.volume[rest].mean())
    assert 0.0 <= les_mean <= 30.0
    assert les_mean < rest_mean - 10.0


def test_no_lesion_option() -> None:
    """lesion=False leaves an empty lesion mask and the same pancreas parts."""
    ph = generate_phantom(SMALL, SPACING, seed=4, lesion=False)
    assert not ph.has_lesion
    assert not ph.masks["pancreatic_lesion"].any()
    m = ph.masks
    assert np.array_equal(m["pancreas"], m["pancreas_head"] | m["pancreas_body"] | m["pancreas_tail"])
    with_lesion = generate_phantom(SMALL, SPACING, seed=4, lesion=True)
    assert np.array_equal(with_lesion.masks["liver"], m["liver"])


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_anatomy_sides_in_world_coordinates(orientation: str) -> None:
    """RAS+ (+x = patient right): liver right (+x), spleen left (-x), lungs superior, kidneys posterior, aorta
    left of the IVC."""
    ph = generate_phantom(SMALL, SPACING, seed=3, orientation=orientation)
    liver = _world_centroid(ph, "liver")
    spleen = _world_centroid(ph, "spleen")
    assert liver[0] > 5.0
    assert spleen[0] < -5.0
    world_x_of_liver = ph.affine[0, 0] * np.argwhere(ph.masks["liver"])[:, 0] + ph.affine[0, 3]
    assert (world_x_of_liver > 0).mean() > 0.8
    assert _world_centroid(ph, "lung_left")[2] > liver[2]
    assert _world_centroid(ph, "lung_left")[0] < 0 < _world_centroid(ph, "lung_right")[0]
    assert _world_centroid(ph, "kidney_left")[0] < 0 < _world_centroid(ph, "kidney_right")[0]
    assert _world_centroid(ph, "kidney_left")[1] < 0 and _world_centroid(ph, "kidney_right")[1] < 0
    assert _world_centroid(ph, "aorta")[0] < _world_centroid(ph, "postcava")[0]


def test_tissue_values_without_noise() -> None:
    """Noise-free phantom has the documented HU per tissue and a body filling most of the axial FOV."""
    ph = generate_phantom((64, 64, 32), (2.0, 2.0, 3.0), seed=0, noise_hu=0.0)
    v, m = ph.volume, ph.masks
    assert v[0, 0, 0] == -1000
    assert set(np.unique(v[m["liver"] & ~m["veins"]]).tolist()) == {60}
    assert set(np.unique(v[m["spleen"] & ~m["veins"]]).tolist()) == {50}
    assert set(np.unique(v[m["lung_left"]]).tolist()) == {-800}
    assert set(np.unique(v[m["aorta"]]).tolist()) == {150}
    assert set(np.unique(v[m["pancreas_body"]]).tolist()) == {40}
    assert {30, 150} <= set(np.unique(v[m["kidney_left"]]).tolist())
    body = v[:, :, v.shape[2] // 2] > -500
    assert body.mean() > 0.5
    assert body.any(axis=1).mean() > 0.85  # left-right extent of the body


def test_noise_std() -> None:
    """noise_hu sets the standard deviation of the added noise."""
    clean = generate_phantom(SMALL, SPACING, seed=5, noise_hu=0.0)
    noisy = generate_phantom(SMALL, SPACING, seed=5, noise_hu=20.0)
    diff = noisy.volume.astype(np.float64) - clean.volume
    assert 18.0 < diff.std() < 22.0


@pytest.mark.parametrize("orientation", ["LPS", "IPL", "LAS", "SRP"])
def test_reoriented_phantom_matches_ras_after_canonicalisation(orientation: str) -> None:
    """Any axis code stores the same world anatomy; as_closest_canonical recovers the RAS phantom."""
    ras_shape = (40, 36, 20)
    ras_spacing = (3.0, 2.5, 4.0)
    ras = generate_phantom(ras_shape, ras_spacing, seed=11, orientation="RAS")
    ornt = nib.orientations.axcodes2ornt(tuple(orientation))
    shape = tuple(ras_shape[int(ax)] for ax, _ in ornt)
    spacing = tuple(ras_spacing[int(ax)] for ax, _ in ornt)
    other = generate_phantom(shape, spacing, seed=11, orientation=orientation)
    assert other.volume.shape == shape
    assert nib.aff2axcodes(other.affine) == tuple(orientation)
    np.testing.assert_allclose(nib.affines.voxel_sizes(other.affine), spacing)

    canon = nib.as_closest_canonical(nib.Nifti1Image(other.volume, other.affine))
    np.testing.assert_allclose(canon.affine, ras.affine, atol=1e-9)
    assert np.array_equal(np.asanyarray(canon.dataobj), ras.volume)
    for name in PHANTOM_STRUCTURES:
        img = nib.as_closest_canonical(nib.Nifti1Image(other.masks[name].astype(np.uint8), other.affine))
        assert np.array_equal(np.asanyarray(img.dataobj).astype(bool), ras.masks[name]), name
        assert other.masks[name].flags.c_contiguous


def test_invalid_orientation_rejected() -> None:
    """Axis codes must name each of L/R, A/P, S/I once."""
    for bad in ("RAR", "XYZ", "RA", "oblique"):
        with pytest.raises(ValueError):
            generate_phantom(SMALL, SPACING, orientation=bad)


def test_anatomy_scales_with_field_of_view() -> None:
    """The same anatomy is drawn at any resolution (organ volume fractions are close)."""
    lo = generate_phantom((40, 40, 20), (4.0, 4.0, 6.0), seed=0)
    hi = generate_phantom((80, 80, 40), (2.0, 2.0, 3.0), seed=0)
    for name in ("liver", "spleen", "stomach", "lung_right"):
        assert abs(lo.masks[name].mean() - hi.masks[name].mean()) < 0.15 * hi.masks[name].mean(), name


def _load(path: Path) -> nib.Nifti1Image:
    """Load a NIfTI-1 file."""
    img = nib.load(path)
    assert isinstance(img, nib.Nifti1Image)
    return img


def _read(path: Path) -> np.ndarray:
    """Load a NIfTI file's raw array."""
    return np.asanyarray(_load(path).dataobj)


def test_write_pants_dataset_layout_and_defects(tmp_path: Path) -> None:
    """PanTS layout: images, per-structure masks, a left-out file, float masks, LPS case, metadata.csv."""
    calls: list[tuple[int, int]] = []
    ids = write_pants_dataset(
        tmp_path,
        n_cases=4,
        shape=(32, 32, 16),
        spacing=(4.0, 4.0, 6.0),
        seed=3,
        missing_structure={1: "spleen"},
        float_masks_cases={2},
        orientations={3: "LPS"},
        progress=lambda done, total: calls.append((done, total)),
    )
    assert ids == [f"PanTS_{i:08d}" for i in range(1, 5)]
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]

    with (tmp_path / "metadata.csv").open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == EXPECTED_COLUMNS
        rows = {r["BDMAP ID"]: r for r in reader}
    assert list(METADATA_COLUMNS) == EXPECTED_COLUMNS
    assert sorted(rows) == ids
    assert sum(r["tumor?"] == "1" for r in rows.values()) == 2

    for i, case in enumerate(ids):
        ct_path = tmp_path / "ImageTr" / case / "ct.nii.gz"
        img = _load(ct_path)
        assert img.get_data_dtype() == np.int16
        hdr = img.header
        assert int(hdr["sform_code"]) == 1 and int(hdr["qform_code"]) == 1
        assert hdr.get_xyzt_units()[0] == "mm"
        assert rows[case]["shape"] == str(tuple(int(n) for n in img.shape))
        assert rows[case]["spacing"] == str(tuple(float(z) for z in hdr.get_zooms()))
        seg = tmp_path / "LabelTr" / case / "segmentations"
        present = {p.name.removesuffix(".nii.gz") for p in seg.glob("*.nii.gz")}
        expected = set(PHANTOM_STRUCTURES) - ({"spleen"} if i == 1 else set())
        assert present == expected
        lesion = _read(seg / "pancreatic_lesion.nii.gz")
        assert (lesion > 0.5).any() == (rows[case]["tumor?"] == "1")
        assert rows[case]["number of pancreatic lesion instances"] == ("1" if rows[case]["tumor?"] == "1" else "0")
        liver = _read(seg / "liver.nii.gz")
        if i == 2:
            assert liver.dtype == np.float32
            assert set(np.unique(liver).tolist()) == {0.0, np.float32(0.9999)}
        else:
            assert liver.dtype == np.uint8
            assert set(np.unique(liver).tolist()) == {0, 1}
        assert liver.shape == img.shape

    assert nib.aff2axcodes(_load(tmp_path / "ImageTr" / ids[3] / "ct.nii.gz").affine) == ("L", "P", "S")
    assert nib.aff2axcodes(_load(tmp_path / "ImageTr" / ids[0] / "ct.nii.gz").affine) == ("R", "A", "S")


def test_write_pants_dataset_is_deterministic(tmp_path: Path) -> None:
    """Same arguments write the same images, masks and metadata."""
    kwargs: dict[str, object] = {"n_cases": 2, "shape": (24, 24, 12), "spacing": (5.0, 5.0, 8.0), "seed": 9}
    write_pants_dataset(tmp_path / "a", **kwargs)  # type: ignore[arg-type]
    write_pants_dataset(tmp_path / "b", **kwargs)  # type: ignore[arg-type]
    for case in ("PanTS_00000001", "PanTS_00000002"):
        assert np.array_equal(
            _read(tmp_path / "a" / "ImageTr" / case / "ct.nii.gz"),
            _read(tmp_path / "b" / "ImageTr" / case / "ct.nii.gz"),
        )
    assert (tmp_path / "a" / "metadata.csv").read_text() == (tmp_path / "b" / "metadata.csv").read_text()
    first = _read(tmp_path / "a" / "ImageTr" / "PanTS_00000001" / "ct.nii.gz")
    second = _read(tmp_path / "a" / "ImageTr" / "PanTS_00000002" / "ct.nii.gz")
    assert not np.array_equal(first, second)


def test_write_pants_dataset_xlsx_and_test_split(tmp_path: Path) -> None:
    """split='Te' writes ImageTe/LabelTe; metadata.xlsx opens with the PanTS columns."""
    ids = write_pants_dataset(
        tmp_path, n_cases=2, shape=(24, 24, 12), spacing=(5.0, 5.0, 8.0), split="Te", metadata_format="xlsx"
    )
    assert not (tmp_path / "ImageTr").exists()
    assert (tmp_path / "ImageTe" / ids[0] / "ct.nii.gz").is_file()
    assert (tmp_path / "LabelTe" / ids[1] / "segmentations" / "pancreas.nii.gz").is_file()
    assert not (tmp_path / "metadata.csv").exists()
    ws = load_workbook(tmp_path / "metadata.xlsx").active
    assert ws is not None
    rows = list(ws.iter_rows(values_only=True))
    assert list(rows[0]) == EXPECTED_COLUMNS
    assert [r[0] for r in rows[1:]] == ids
    assert all(r[13] in (0, 1) for r in rows[1:])


def test_tumor_fraction_controls_tumour_cases(tmp_path: Path) -> None:
    """tumor_fraction=0 writes no lesion voxels; tumor_fraction=1 marks every case."""
    write_pants_dataset(tmp_path / "none", n_cases=2, shape=(24, 24, 12), spacing=(5.0, 5.0, 8.0), tumor_fraction=0.0)
    write_pants_dataset(tmp_path / "all", n_cases=2, shape=(24, 24, 12), spacing=(5.0, 5.0, 8.0), tumor_fraction=1.0)
    for case in ("PanTS_00000001", "PanTS_00000002"):
        none = _read(tmp_path / "none" / "LabelTr" / case / "segmentations" / "pancreatic_lesion.nii.gz")
        every = _read(tmp_path / "all" / "LabelTr" / case / "segmentations" / "pancreatic_lesion.nii.gz")
        assert not none.any()
        assert every.any()
