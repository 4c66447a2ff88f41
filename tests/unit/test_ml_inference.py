"""Networks, sliding-window inference, progress/cancel, device fallback, entropy and quantisation."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from backend.imaging.phantom import generate_phantom
from worker.models.inference import (
    InferenceCancelled,
    InferenceConfig,
    binary_entropy,
    count_windows,
    dequantise_unit,
    effective_roi,
    predict_probabilities,
    probabilities_to_masks,
    quantise_unit,
    select_device,
)
from worker.models.networks import ARCHITECTURES, build_network
from worker.models.preprocessing import Preprocessing

torch.set_num_threads(min(2, torch.get_num_threads()))

TINY_UNET = {"channels": (4, 8, 16), "num_res_units": 0}
PREP = Preprocessing(target_spacing=(8.0, 8.0, 10.0))
CFG = InferenceConfig(roi_size=(16, 16, 16), overlap=0.25, device="cpu")


@pytest.fixture(scope="module")
def phantom_small() -> tuple[np.ndarray, np.ndarray]:
    ph = generate_phantom((40, 36, 20), (8.0, 8.0, 10.0), seed=2, orientation="LPS")
    return ph.volume, ph.affine


def _tiny(out_channels: int = 3) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_network("unet", TINY_UNET, out_channels)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_build_network_outputs_one_channel_per_structure(architecture: str) -> None:
    config = TINY_UNET if architecture == "unet" else {"init_filters": 4, "blocks_down": (1, 1, 1), "blocks_up": (1, 1)}
    net = build_network(architecture, config, out_channels=5).eval()
    with torch.no_grad():
        out = net(torch.zeros(1, 1, 16, 16, 16))
    assert out.shape == (1, 5, 16, 16, 16)


def test_build_network_rejects_unknown_architecture() -> None:
    with pytest.raises(ValueError, match="unknown architecture 'vnet'"):
        build_network("vnet", {}, 2)
    with pytest.raises(ValueError):
        build_network("unet", {"norm": "layer"}, 2)


def test_inference_shape_range_and_progress(phantom_small: tuple[np.ndarray, np.ndarray]) -> None:
    volume, affine = phantom_small
    seen: list[float] = []
    timings: dict[str, float] = {}
    started = time.perf_counter()
    probs = predict_probabilities(_tiny(), volume, affine, PREP, CFG, progress=seen.append, timings=timings)
    assert 0 < timings["sliding_window_s"] < time.perf_counter() - started  # MONAI's call alone, inside the whole
    assert probs.shape == (3, *volume.shape)
    assert probs.dtype == np.float32
    assert float(probs.min()) >= 0.0 and float(probs.max()) <= 1.0
    # one progress call per window, strictly increasing, ending exactly at 1.0
    assert len(seen) == count_windows((40, 36, 20), CFG.roi_size, CFG.overlap) > 1
    assert all(b > a for a, b in itertools.pairwise(seen))
    assert seen[-1] == 1.0
    masks = probabilities_to_masks(probs)
    assert masks.dtype == bool and masks.shape == probs.shape


def test_count_windows_matches_monai() -> None:
    # 40 -> starts 0, 12, 24 (interval 12); 36 -> 0, 12, 20; 20 -> 0, 4 -> 3 * 3 * 2 windows
    assert count_windows((40, 36, 20), (16, 16, 16), 0.25) == 18
    assert count_windows((10, 10, 10), (16, 16, 16), 0.25) == 1  # padded up to one window


def test_effective_roi_shrinks_instead_of_padding(phantom_small: tuple[np.ndarray, np.ndarray]) -> None:
    assert effective_roi((40, 36, 20), (32, 32, 32), 16) == (32, 32, 16)  # 20 < 32: largest multiple of 16 that fits
    assert effective_roi((40, 36, 20), (16, 16, 16), 16) == (16, 16, 16)
    assert effective_roi((10, 40, 40), (16, 16, 16), 16) == (16, 16, 16)  # smaller than the multiple: padded
    assert effective_roi((40, 36, 20), (32, 32, 32), 0) == (32, 32, 32)
    volume, affine = phantom_small
    seen: list[float] = []
    cfg = InferenceConfig(roi_size=(32, 32, 32), device="cpu")
    probs = predict_probabilities(_tiny(), volume, affine, PREP, cfg, progress=seen.append)
    assert probs.shape == (3, *volume.shape)
    assert len(seen) == count_windows((40, 36, 20), (32, 32, 16), 0.25) == 8  # 2 starts per axis


def test_should_stop_cancels(phantom_small: tuple[np.ndarray, np.ndarray]) -> None:
    volume, affine = phantom_small
    seen: list[float] = []
    polls = 0

    def stop_after_three() -> bool:
        nonlocal polls
        polls += 1
        return polls > 4  # one poll before preprocessing, then one per window

    with pytest.raises(InferenceCancelled):
        predict_probabilities(_tiny(), volume, affine, PREP, CFG, progress=seen.append, should_stop=stop_after_three)
    assert len(seen) == 3
    assert seen[-1] < 1.0


def test_select_device_falls_back_to_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert select_device("cuda") == torch.device("cpu")
    assert select_device("cuda:1") == torch.device("cpu")
    assert select_device(None) == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError):
        select_device("tpu")


def test_inference_config_validation() -> None:
    with pytest.raises(ValueError):
        InferenceConfig(overlap=0.1)
    with pytest.raises(ValueError):
        InferenceConfig(mode="average")


def test_quantise_round_trip_error_bound() -> None:
    x = np.linspace(0.0, 1.0, 100_001, dtype=np.float32)
    u = quantise_unit(x)
    assert u.dtype == np.uint8
    assert u[0] == 0 and u[-1] == 255
    assert float(np.abs(dequantise_unit(u) - x).max()) <= 1.0 / 510.0 + 1e-7
    assert quantise_unit(np.array([-0.5, 1.5], dtype=np.float32)).tolist() == [0, 255]


def test_binary_entropy_values() -> None:
    h = binary_entropy(np.array([0.0, 1.0, 0.5, 0.25, 0.75], dtype=np.float32))
    assert h.dtype == np.float32
    assert h[0] == 0.0 and h[1] == 0.0
    assert h[2] == pytest.approx(1.0, abs=1e-6)
    # H(0.25) = -(0.25 log2 0.25 + 0.75 log2 0.75) = 0.8113 bits, symmetric in p <-> 1 - p
    assert h[3] == pytest.approx(0.811278, abs=1e-5)
    assert h[4] == pytest.approx(h[3], abs=1e-6)


def test_same_grid_skips_the_inverse_resample_with_the_same_result() -> None:
    from worker.models.preprocessing import to_model_space, to_scan_space

    ph = generate_phantom((32, 24, 20), (8.0, 8.0, 10.0), seed=3)  # RAS at the target spacing: grids coincide
    _image, info = to_model_space(ph.volume, ph.affine, PREP)
    assert info.same_grid
    _lps_image, lps_info = to_model_space(*_lps(), PREP)
    assert not lps_info.same_grid
    net = _tiny()
    fast = predict_probabilities(net, ph.volume, ph.affine, PREP, CFG)
    # The resampling route on the same model-space output gives the identical array.
    image, _ = to_model_space(ph.volume, ph.affine, PREP)
    from monai.inferers import sliding_window_inference

    with torch.inference_mode():
        logits = sliding_window_inference(image[None], CFG.roi_size, 1, net, overlap=CFG.overlap, mode=CFG.mode)
    assert isinstance(logits, torch.Tensor)
    slow = np.clip(to_scan_space(torch.sigmoid(logits[0].float()), info), 0.0, 1.0)
    assert fast.shape == slow.shape == (3, 32, 24, 20) and fast.dtype == np.float32
    np.testing.assert_array_equal(fast, slow)


def _lps() -> tuple[np.ndarray, np.ndarray]:
    ph = generate_phantom((32, 24, 20), (8.0, 8.0, 10.0), seed=3, orientation="LPS")
    return ph.volume, ph.affine
