"""PanTS tumour detection: components, patient/lesion sensitivity, specificity, AUC by ranks, size buckets."""

from __future__ import annotations

import numpy as np
import pytest

from backend.evaluation import detection
from backend.evaluation.detection import DetectionConfig

SPACING = (1.0, 1.0, 1.0)


def _box(mask: np.ndarray, lo: tuple[int, int, int], size: tuple[int, int, int]) -> None:
    mask[lo[0] : lo[0] + size[0], lo[1] : lo[1] + size[1], lo[2] : lo[2] + size[2]] = True


def test_two_lesions_one_found() -> None:
    gt = np.zeros((40, 40, 40), dtype=bool)
    _box(gt, (2, 2, 2), (5, 5, 5))  # 125 mm³ = 0.125 mL
    _box(gt, (20, 20, 20), (12, 12, 12))  # 1728 mm³ = 1.728 mL
    pred = np.zeros_like(gt)
    _box(pred, (22, 22, 22), (6, 6, 6))  # inside the big lesion
    case = detection.detect_case(gt, pred, SPACING, DetectionConfig())
    assert case.tumour and case.detected
    assert [lesion.detected for lesion in case.gt_lesions] == [False, True]
    assert [lesion.bucket for lesion in case.gt_lesions] == ["<1 mL", "1-5 mL"]
    assert case.gt_lesions[1].volume_ml == pytest.approx(1.728)
    assert case.false_positive_components == 0 and case.predicted_components == 1
    assert case.confidence_source == "volume_ml" and case.confidence == pytest.approx(0.216)
    # A Dice criterion above what the small prediction reaches (2*216/(1728+216) ≈ 0.22) misses it.
    strict = detection.detect_case(gt, pred, SPACING, DetectionConfig(localisation="dice", min_dice=0.3))
    assert [lesion.detected for lesion in strict.gt_lesions] == [False, False]
    assert strict.gt_lesions[1].dice == pytest.approx(2 * 216 / (1728 + 216))


def test_components_are_26_connected() -> None:
    gt = np.zeros((10, 10, 10), dtype=bool)
    gt[2, 2, 2] = gt[3, 3, 3] = True  # touch at a corner only: one lesion with 26-connectivity
    case = detection.detect_case(gt, np.zeros_like(gt), SPACING, DetectionConfig())
    assert len(case.gt_lesions) == 1 and not case.detected


def test_false_positive_in_a_healthy_case_and_the_thresholds() -> None:
    gt = np.zeros((30, 30, 30), dtype=bool)
    pred = np.zeros_like(gt)
    _box(pred, (5, 5, 5), (3, 3, 3))  # 27 mm³
    case = detection.detect_case(gt, pred, SPACING, DetectionConfig(min_volume_mm3=0.0))
    assert not case.tumour and case.detected and case.false_positive_components == 1
    # Below the minimum volume it does not count.
    small = detection.detect_case(gt, pred, SPACING, DetectionConfig(min_volume_mm3=30.0))
    assert not small.detected and small.false_positive_components == 0
    # Below the confidence threshold (max probability 0.4) it does not count either.
    probability = np.where(pred, 0.4, 0.0)
    doubtful = detection.detect_case(
        gt, pred, SPACING, DetectionConfig(min_volume_mm3=0.0, confidence_threshold=0.5), probability
    )
    assert not doubtful.detected and doubtful.confidence == 0.0 and doubtful.confidence_source == "probability"
    sure = detection.detect_case(
        gt, pred, SPACING, DetectionConfig(min_volume_mm3=0.0, confidence_threshold=0.3), probability
    )
    assert sure.detected and sure.confidence == pytest.approx(0.4)
    summary = detection.summarize([case])
    assert summary["specificity"] == 0.0 and summary["patient_sensitivity"] is None and summary["auc"] is None


def test_one_stray_voxel_is_no_false_positive_by_default() -> None:
    """The documented default volume threshold: a stray voxel (or a speck) in a healthy patient is not a tumour."""
    assert DetectionConfig().min_volume_mm3 == detection.DEFAULT_MIN_VOLUME_MM3 == 50.0
    gt = np.zeros((30, 30, 30), dtype=bool)
    pred = np.zeros_like(gt)
    pred[10, 10, 10] = True
    spacing = (0.8, 0.8, 5.0)  # a thick-slice voxel: 3.2 mm³
    healthy = detection.detect_case(gt, pred, spacing, DetectionConfig())
    assert not healthy.detected and healthy.false_positive_components == 0 and healthy.predicted_components == 0
    assert detection.summarize([healthy])["specificity"] == 1.0
    counted = detection.detect_case(gt, pred, spacing, DetectionConfig(min_volume_mm3=0.0))
    assert counted.detected and detection.summarize([counted])["specificity"] == 0.0
    _box(pred, (20, 20, 20), (5, 5, 3))  # 75 voxels × 3.2 mm³ = 240 mm³: a real finding still counts
    found = detection.detect_case(gt, pred, spacing, DetectionConfig())
    assert found.detected and found.false_positive_components == 1


def test_auc_on_a_hand_ranked_set() -> None:
    # Positives 0.9, 0.8, 0.4; negatives 0.7, 0.3: pairs won 2 + 2 + 1 = 5 of 6.
    assert detection.auc([0.9, 0.8, 0.4], [0.7, 0.3]) == pytest.approx(5 / 6)
    # A tie counts one half.
    assert detection.auc([0.5, 0.9], [0.5]) == pytest.approx(0.75)
    assert detection.auc([1.0], [0.0]) == 1.0 and detection.auc([0.0], [1.0]) == 0.0
    assert detection.auc([], [0.1]) is None


def test_summary_over_patients() -> None:
    def case(tumour: bool, detected: bool, confidence: float, lesions: list[tuple[float, bool]]) -> object:
        return detection.CaseDetection(
            tumour=tumour,
            detected=detected,
            confidence=confidence,
            confidence_source="probability",
            predicted_components=int(detected),
            false_positive_components=0 if tumour else int(detected),
            predicted_volume_ml=0.0,
            gt_lesions=[detection.GtLesion(v, detection.size_bucket(v), d, 0.5 if d else 0.0) for v, d in lesions],
        )

    cases = [
        case(True, True, 0.9, [(0.5, False), (8.0, True)]),
        case(True, False, 0.2, [(30.0, False)]),
        case(False, False, 0.1, []),
        case(False, True, 0.6, []),
    ]
    summary = detection.summarize(cases)  # type: ignore[arg-type]
    assert summary["patient_sensitivity"] == 0.5
    assert summary["tumour_sensitivity"] == pytest.approx(1 / 3)
    assert summary["specificity"] == 0.5
    assert summary["auc"] == pytest.approx(0.75)  # 0.9 beats both, 0.2 beats 0.1 only
    assert summary["by_lesion_size"]["5-20 mL"] == {"lesions": 1, "detected": 1, "sensitivity": 1.0}
    assert summary["by_lesion_size"][">20 mL"]["sensitivity"] == 0.0
    assert summary["by_lesion_size"]["1-5 mL"]["sensitivity"] is None
    mixed = [*cases[:3], detection.CaseDetection(False, True, 3.2, "volume_ml", 1, 1, 3.2, [])]
    assert detection.summarize(mixed)["auc"] is None  # type: ignore[arg-type]


def test_size_buckets_and_config_validation() -> None:
    assert [detection.size_bucket(v) for v in (0.99, 1.0, 4.99, 5.0, 19.9, 20.0)] == [
        "<1 mL",
        "1-5 mL",
        "1-5 mL",
        "5-20 mL",
        "5-20 mL",
        ">20 mL",
    ]
    with pytest.raises(ValueError, match="localisation"):
        DetectionConfig(localisation="centroid")
    with pytest.raises(ValueError, match="unknown detection settings"):
        DetectionConfig.from_dict({"min_volume": 3})
    config = DetectionConfig.from_dict({"min_volume_mm3": 50})
    assert config.describe()["connectivity"] == 26 and config.min_volume_mm3 == 50
