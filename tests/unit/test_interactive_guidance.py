"""The interactive model's geometry, guidance channels, clicker and refusals (no trained weights needed).

An "oracle" network that answers with its previous-mask channel checks the whole crop → reorder → resample →
restore chain of ``refine`` in RAS, LPS, IPL and oblique scans without any training.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.apps.deepgrow.transforms import AddGuidanceSignald
from nibabel.orientations import axcodes2ornt

from backend.imaging.phantom import generate_phantom
from worker.models.interactive import (
    ClicksOutOfVolume,
    InteractiveConfig,
    InteractiveError,
    InteractiveRequest,
    InvalidRequest,
    LoadedInteractiveModel,
    TooManyClicks,
    UnknownStructure,
    WeightsMissing,
    load_interactive_model,
    load_interactive_model_bytes,
    refine,
    voxel_to_world,
    world_to_voxel,
)
from worker.models.interactive.clicker import dice, next_click
from worker.models.interactive.geodesic import geodesic_distance, geodesic_maps
from worker.models.interactive.guidance import click_signal
from worker.models.interactive.refine import prepare_request

SHAPE = (96, 96, 48)
SPACING = (3.0, 3.0, 4.0)


class PreviousChannel(torch.nn.Module):
    """Answers with the previous-mask channel as logits: what refine returns is then the previous mask itself."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits +/-10 from the previous mask."""
        return (x[:, 3:4] - 0.5) * 20.0


def _oracle(**overrides: object) -> LoadedInteractiveModel:
    cfg = InteractiveConfig(keep_clicked_components=False, **overrides)  # type: ignore[arg-type]
    return LoadedInteractiveModel(
        network=PreviousChannel(), config=cfg, structures=("liver", "spleen", "aorta"), weights_sha256="oracle"
    )


def _rotation_z(degrees: float) -> np.ndarray:
    t = np.radians(degrees)
    r = np.eye(4)
    r[:2, :2] = [[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]
    return r


def _centroid_mm(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    return np.asarray(voxel_to_world([np.argwhere(mask).mean(axis=0)], affine)[0])


def test_click_maps_equal_deepgrow_add_guidance_signal() -> None:
    """The fast click maps are DeepGrow's AddGuidanceSignald values: borders, duplicates and an empty channel."""
    shape = (40, 33, 27)
    positive = [(0, 0, 0), (10, 20, 5), (10, 20, 5), (39, 32, 26), (12, 18, 7)]
    for pos, neg, sigma in ((positive, [(20, 3, 13)], 2), ([], [(20, 3, 13), (1, 30, 2)], 3), (positive, [], 1)):
        ours = click_signal(shape, pos, neg, float(sigma))
        theirs = AddGuidanceSignald(sigma=sigma)(
            {"image": np.zeros((1, *shape), np.float32), "guidance": [[list(p) for p in pos], [list(p) for p in neg]]}
        )["image"][1:]
        np.testing.assert_allclose(ours, theirs, atol=1e-6)


def test_world_to_voxel_in_ras_lps_and_oblique() -> None:
    """mm → voxel through the affine; an LPS point is the RAS point with x and y negated; oblique affines too."""
    affine = generate_phantom(SHAPE, SPACING, seed=0, orientation="LPS").affine
    voxels = [(0, 0, 0), (10, 20, 30), (95, 95, 47)]
    for aff in (affine, _rotation_z(25.0) @ affine):
        ras = voxel_to_world(voxels, aff)
        lps = voxel_to_world(voxels, aff, frame="LPS")
        np.testing.assert_allclose(lps, ras * [-1, -1, 1])
        assert world_to_voxel(ras, aff) == voxels
        assert world_to_voxel(lps, aff, frame="LPS") == voxels
    with pytest.raises(InvalidRequest):
        world_to_voxel([(0, 0, 0)], affine, frame="XYZ")


def _stored(orientation: str, ras_shape: tuple[int, ...], ras_spacing: tuple[float, ...]) -> tuple[tuple, tuple]:
    """Shape and spacing of a RAS (shape, spacing) stored with other axis codes."""
    axes = [int(a) for a, _ in axcodes2ornt(tuple(orientation))]
    return tuple(ras_shape[a] for a in axes), tuple(ras_spacing[a] for a in axes)


# IPL swaps two axes (its own inverse); ASL permutes them cyclically (not its own inverse).
ORIENTATIONS = ["RAS", "LPS", "IPL", "ASL"]


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("oblique", [0.0, 20.0])
def test_guidance_lands_on_the_clicked_voxel(orientation: str, oblique: float) -> None:
    """A click given in mm (RAS and LPS frames) puts its Gaussian peak where the image shows the clicked tissue,
    at the clicked point in the world, whatever the storage order or obliquity."""
    shape, spacing = _stored(orientation, (96, 80, 48), (3.0, 2.5, 4.0))
    ph = generate_phantom(shape, spacing, seed=3, orientation=orientation, noise_hu=0.0)
    affine = _rotation_z(oblique) @ ph.affine
    spleen = ph.masks["spleen"]
    target_mm = _centroid_mm(spleen, affine)
    for frame, point in (("RAS", target_mm), ("LPS", target_mm * [-1, -1, 1])):
        (click,) = world_to_voxel([point], affine, frame=frame)
        assert spleen[click]
        req = InteractiveRequest(ph.volume, spacing, affine, "spleen", [click])  # type: ignore[arg-type]
        prepared = prepare_request(_oracle(), req)
        pos = prepared.input[1].numpy()
        peak = np.unravel_index(int(np.argmax(pos)), pos.shape)
        assert prepared.positive == [tuple(int(v) for v in peak)]
        assert prepared.input[2].abs().max() == 0  # no negative click
        # The model-grid voxel shows spleen (+50 HU, windowed) ...
        assert prepared.input[0][peak] == pytest.approx((50 + 175) / 425, abs=0.02)
        # ... and maps back to the clicked point (within a model voxel and a scan voxel).
        region = prepared.region
        canon = [0.0, 0.0, 0.0]
        for ax in range(3):
            canon[ax] = (peak[ax] + 0.5) * region.canonical_shape[ax] / region.model_shape[ax] - 0.5
        storage = [0.0, 0.0, 0.0]
        for axis, (target, flip) in enumerate(region.ornt):
            rel = canon[int(target)]
            storage[axis] = region.lo[axis] + (rel if flip > 0 else region.shape[axis] - 1 - rel)
        back = voxel_to_world([storage], affine)[0]
        assert np.linalg.norm(back - target_mm) < 0.5 * (3.0 * np.sqrt(3) + np.linalg.norm(spacing))


@pytest.mark.parametrize("orientation", ORIENTATIONS)
@pytest.mark.parametrize("oblique", [0.0, 30.0])
def test_refine_restores_the_region_exactly_where_it_was_read(orientation: str, oblique: float) -> None:
    """With a network that echoes the previous mask, the answer is that mask again, on the scan's own grid."""
    shape, spacing0 = _stored(orientation, SHAPE, SPACING)
    ph = generate_phantom(shape, spacing0, seed=5, orientation=orientation)
    affine = _rotation_z(oblique) @ ph.affine
    liver = ph.masks["liver"]
    (click,) = world_to_voxel([_centroid_mm(liver, affine)], affine)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    req = InteractiveRequest(ph.volume, spacing, affine, "liver", [click], previous=liver)  # type: ignore[arg-type]
    answer = refine(_oracle(), req)
    o, m = answer.origin, answer.mask
    assert m.dtype == bool and answer.structure == "liver"
    truth = liver[o[0] : o[0] + m.shape[0], o[1] : o[1] + m.shape[1], o[2] : o[2] + m.shape[2]]
    assert dice(m, truth) > 0.97
    assert truth.sum() > 0.95 * liver.sum()  # the region holds the previous mask
    # The same with the previous mask given as a box at an origin.
    idx = np.argwhere(liver)
    lo, hi = idx.min(axis=0), idx.max(axis=0) + 1
    boxed = InteractiveRequest(
        ph.volume,
        spacing,  # type: ignore[arg-type]
        affine,
        "liver",
        [click],
        previous=liver[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]],
        previous_origin=(int(lo[0]), int(lo[1]), int(lo[2])),
    )
    again = refine(_oracle(), boxed)
    assert again.origin == answer.origin and np.array_equal(again.mask, answer.mask)


def test_region_bounds() -> None:
    """A first click sees at least min_extent_mm; a region at the edge shifts inwards; at most max_size voxels."""
    ph = generate_phantom((160, 160, 80), (2.0, 2.0, 3.0), seed=1, noise_hu=0.0)
    model = _oracle()
    cfg = model.config
    req = InteractiveRequest(ph.volume, (2.0, 2.0, 3.0), ph.affine, "liver", [(0, 159, 40)])
    region = prepare_request(model, req).region
    assert region.lo[0] == 0 and region.hi[1] == 160
    side = cfg.min_extent_mm  # 192 mm per axis: 96 voxels of 2 mm, 64 of 3 mm
    assert region.shape == (int(side // 2.0), int(side // 2.0), min(80, int(side // 3.0)))
    assert all(s % cfg.divisor == 0 for s in region.padded_shape)
    far = InteractiveRequest(ph.volume, (2.0, 2.0, 3.0), ph.affine, "liver", [(0, 0, 0), (159, 159, 79)])
    region = prepare_request(model, far).region
    assert region.shape == (160, 160, 80)
    assert max(region.model_shape) <= cfg.max_size
    small = _oracle(max_size=64)
    region = prepare_request(small, far).region
    assert max(region.model_shape) <= 64 and region.shape[0] == 96  # 64 × 3 mm = 192 mm = 96 voxels


def test_bad_requests_raise_named_errors() -> None:
    """Unknown structure, clicks outside the volume, too many clicks, and other bad input: named ValueErrors."""
    ph = generate_phantom(SHAPE, SPACING, seed=2, noise_hu=0.0)
    model = _oracle(max_clicks=4)

    def req(**kw: object) -> InteractiveRequest:
        base: dict[str, object] = {
            "image": ph.volume,
            "spacing": SPACING,
            "affine": ph.affine,
            "structure": "liver",
            "positive": [(40, 40, 20)],
        }
        return InteractiveRequest(**{**base, **kw})  # type: ignore[arg-type]

    cases: list[tuple[type[InteractiveError], InteractiveRequest]] = [
        (UnknownStructure, req(structure="pancreas_head")),
        (ClicksOutOfVolume, req(positive=[(-1, 0, 0)])),
        (ClicksOutOfVolume, req(positive=[(10, 10, 10)], negative=[(96, 0, 0)])),
        (ClicksOutOfVolume, req(positive=[(0, 0, 48)])),
        (TooManyClicks, req(positive=[(1, 1, 1)] * 3, negative=[(2, 2, 2)] * 2)),
        (InvalidRequest, req(spacing=(1.0, 1.0, 1.0))),
        (InvalidRequest, req(positive=[], negative=[(3, 3, 3)])),
        (InvalidRequest, req(positive=[(1, 2)])),
        (InvalidRequest, req(positive=[(1.0, float("nan"), 2.0)])),
        (InvalidRequest, req(previous=np.ones((10, 10, 10), bool), previous_origin=(90, 0, 0))),
        (InvalidRequest, req(image=ph.volume[0])),
        (InvalidRequest, req(affine=np.zeros((4, 4)))),
    ]
    for error, bad in cases:
        with pytest.raises(error):
            refine(model, bad)
        assert issubclass(error, ValueError)
    # The limit itself is fine.
    refine(model, req(positive=[(40, 40, 20)] * 2, negative=[(5, 5, 5)] * 2))


def test_missing_or_foreign_weights_raise_weights_missing(tmp_path: Path) -> None:
    """No file, no sidecar, another architecture, corrupt bytes, no bytes: WeightsMissing with a clear message."""
    with pytest.raises(WeightsMissing, match="maskloop train --interactive --phantom"):
        load_interactive_model(tmp_path / "nothing.pt")
    weights = tmp_path / "w.pt"
    weights.write_bytes(b"not a torch file")
    with pytest.raises(WeightsMissing):
        load_interactive_model(weights)  # no sidecar
    weights.with_suffix(".json").write_text(json.dumps({"architecture": "unet", "structures": ["liver"]}))
    with pytest.raises(WeightsMissing, match="unet"):
        load_interactive_model(weights)
    weights.with_suffix(".json").write_text(json.dumps({"architecture": "interactive", "structures": ["liver"]}))
    with pytest.raises(WeightsMissing, match="not this interactive model"):
        load_interactive_model(weights)
    with pytest.raises(WeightsMissing):
        load_interactive_model_bytes(None, {}, ["liver"])


def test_simulated_clicker() -> None:
    """Clicks at the centre of the largest error region: positive in a miss, negative in a false positive."""
    truth = np.zeros((30, 30, 30), bool)
    truth[5:16, 5:16, 5:16] = True
    pred = np.zeros_like(truth)
    assert next_click(pred, truth) == ((10, 10, 10), True)
    pred = truth.copy()
    pred[20:27, 20:27, 20:27] = True  # a false positive blob
    pred[5, 5, 5] = False  # a tiny miss
    assert next_click(pred, truth) == ((23, 23, 23), False)
    assert next_click(truth, truth) is None
    edge = np.zeros((30, 30, 30), bool)
    edge[:, 10:15, 10:15] = True  # touches the volume's ends: its centre is mid-way, not at an end
    assert next_click(np.zeros_like(edge), edge) == ((14, 12, 12), True)
    assert dice(truth, truth) == 1.0 and dice(pred, truth) < 1.0


def test_geodesic_maps_follow_the_image() -> None:
    """Geodesic click maps: plain distances along the axes in a flat image; an edge costs more than the walk."""
    flat = np.zeros((20, 20, 20), np.float32)
    d = geodesic_distance(flat, [[(10, 10, 10)], []], gamma=100.0, spatial=1.0, smooth=0.0)
    assert d[0, 10, 10, 10] == 0 and d[0, 15, 10, 10] == pytest.approx(5) and d[0, 10, 10, 2] == pytest.approx(8)
    assert np.isinf(d[1]).all()
    two = flat.copy()
    two[13:] = 0.5  # an edge between x = 12 and 13
    maps = geodesic_maps(two, [(10, 10, 10)], [], gamma=100.0, tau=20.0, spatial=1.0, smooth=0.0)
    assert maps[0, 10, 10, 10] == 1.0 and not maps[1].any()
    assert maps[0, 13, 10, 10] < 0.2 < maps[0, 10, 10, 3]  # 3 voxels across the edge vs 7 inside
