"""Scan space <-> model space: exact geometry of the inverse for RAS, LPS, IPL and anisotropic scans."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from backend.imaging.phantom import generate_phantom
from worker.models.preprocessing import Preprocessing, labels_to_model_space, to_model_space, to_scan_space

torch.set_num_threads(min(2, torch.get_num_threads()))


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b)))


def test_preprocessing_json_round_trip() -> None:
    prep = Preprocessing(target_spacing=(1.0, 2.0, 3.0), hu_window=(-100.0, 200.0), orientation="RAS")
    assert Preprocessing.from_json(prep.to_json()) == prep
    assert Preprocessing.from_json({}) == Preprocessing()
    with pytest.raises(ValueError):
        Preprocessing(target_spacing=(1.0, 0.0, 1.0))
    with pytest.raises(ValueError):
        Preprocessing(hu_window=(10.0, -10.0))


@pytest.mark.parametrize(
    ("shape", "spacing", "orientation", "target"),
    [
        ((64, 64, 40), (3.5, 3.5, 4.0), "RAS", (3.0, 3.0, 3.0)),
        ((64, 64, 40), (3.5, 3.5, 4.0), "LPS", (3.0, 3.0, 3.0)),
        ((48, 48, 20), (3.0, 3.0, 7.0), "LPS", (2.5, 2.5, 2.5)),
        ((20, 48, 48), (7.0, 3.0, 3.0), "IPL", (3.0, 3.0, 3.0)),
    ],
)
def test_round_trip_of_masks_keeps_shape_and_dice(
    shape: tuple[int, int, int], spacing: tuple[float, float, float], orientation: str, target: tuple[float, ...]
) -> None:
    ph = generate_phantom(shape, spacing, seed=3, orientation=orientation)
    names = ["liver", "lung_left", "spleen"]
    masks = np.stack([ph.masks[n] for n in names])
    prep = Preprocessing(target_spacing=(target[0], target[1], target[2]))
    image, info = to_model_space(ph.volume, ph.affine, prep)
    labels = labels_to_model_space(masks, ph.affine, prep)
    assert image.shape == (1, *info.model_shape)
    assert labels.shape == (len(names), *info.model_shape)
    assert float(image.min()) >= 0.0 and float(image.max()) <= 1.0
    # model space is RAS with the target spacing
    assert np.allclose(np.abs(np.diag(info.model_affine)[:3]), target, atol=1e-4)
    assert np.all(np.diag(info.model_affine)[:3] > 0)
    back = to_scan_space(labels, info)
    assert back.shape == (len(names), *ph.volume.shape)
    assert back.dtype == np.float32
    for c, name in enumerate(names):
        assert _dice(back[c] > 0.5, masks[c]) > 0.95, name


@pytest.mark.parametrize("orientation", ["RAS", "LPS", "PIR"])
def test_inverse_is_geometrically_exact(orientation: str) -> None:
    """A field linear in world coordinates, sampled on the model grid, comes back identical on the scan grid."""
    ph = generate_phantom((30, 26, 22), (2.0, 3.0, 5.0), seed=0, orientation=orientation)
    prep = Preprocessing(target_spacing=(2.5, 2.5, 2.5))
    _, info = to_model_space(ph.volume, ph.affine, prep)

    def world(shape: tuple[int, ...], affine: np.ndarray) -> np.ndarray:
        idx = np.indices(shape).reshape(3, -1).astype(np.float64)
        return (affine[:3, :3] @ idx + affine[:3, 3:]).reshape((3, *shape))

    model_world = world(info.model_shape, info.model_affine).astype(np.float32)
    back = to_scan_space(model_world, info)
    expected = world(ph.volume.shape, ph.affine)
    assert back.shape == expected.shape
    # interior voxels: trilinear interpolation of a linear field is exact (border voxels are clamped)
    inner = (slice(None), slice(2, -2), slice(2, -2), slice(2, -2))
    assert np.abs(back[inner] - expected[inner]).max() < 1e-3


def test_to_scan_space_rejects_wrong_shape() -> None:
    ph = generate_phantom((16, 16, 8), (4.0, 4.0, 4.0), seed=0)
    _, info = to_model_space(ph.volume, ph.affine, Preprocessing(target_spacing=(4.0, 4.0, 4.0)))
    with pytest.raises(ValueError):
        to_scan_space(np.zeros((1, 3, 3, 3), dtype=np.float32), info)


def test_intensity_scaling_is_monais_to_the_bit_and_leaves_the_input_alone() -> None:
    from monai.transforms import ScaleIntensityRange

    from worker.models.preprocessing import scale_intensity

    rng = np.random.default_rng(5)
    hu = torch.from_numpy(rng.uniform(-1200, 1500, size=(1, 30, 20, 10)).astype(np.float32))
    hu[0, 0, 0, :3] = torch.tensor([-175.0, 250.0, 37.5])  # the window edges map to exactly 0 and 1
    before = hu.clone()
    ours = scale_intensity(hu, (-175.0, 250.0))
    theirs = ScaleIntensityRange(a_min=-175.0, a_max=250.0, b_min=0.0, b_max=1.0, clip=True)(hu)
    assert torch.equal(ours, torch.as_tensor(theirs))
    assert torch.equal(hu, before)
    assert ours[0, 0, 0, 0] == 0.0 and ours[0, 0, 0, 1] == 1.0 and ours.dtype == torch.float32
