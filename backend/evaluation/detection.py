"""PanTS-style tumour detection: lesion components, patient- and lesion-wise sensitivity, specificity and AUC.

Conventions (stated in every report through `DetectionConfig.describe()`):

- **Lesion components** are connected components with **26-connectivity** (faces, edges and corners touch)
  of the lesion structure's mask (`pancreatic_lesion` by default), in ground truth and prediction alike.
- A **predicted** component counts only when its volume is ≥ `min_volume_mm3` and, when a probability map
  exists, its maximum probability is ≥ `confidence_threshold`. Ground-truth components are never dropped.
  The default minimum volume is `DEFAULT_MIN_VOLUME_MM3` = 50 mm³ (a project may set its own,
  `settings.evaluation.detection_min_volume_mm3`; a request may override it): larger than any single voxel of
  a diagnostic CT grid (≈ 0.5–5 mm³), so one stray voxel or a speck of a few voxels does not turn a tumour-free
  patient into a false positive, and far below the smallest size bucket (a 50 mm³ sphere is ≈ 4.6 mm across;
  PanTS QA already flags ground-truth lesions under 50 voxels as suspicious). 0 counts every predicted voxel.
- A **tumour patient** is a case whose ground truth has at least one lesion component; the others are
  tumour-free.
- **Patient-wise sensitivity**: tumour patients with at least one counted predicted component / tumour patients.
- **Tumour-wise sensitivity**: a ground-truth component is detected when counted predicted components localise
  it: with `localisation="overlap"` (default) any shared voxel; with `localisation="dice"` the Dice between the
  component and the union of the counted predicted components that touch it must exceed `min_dice` (0.1).
- **Specificity**: tumour-free patients without any counted predicted component / tumour-free patients.
- **AUC** of the per-case lesion confidence, tumour patients positive: the confidence is the maximum predicted
  probability inside the counted predicted lesion components when a probability map exists, else the counted
  predicted lesion volume in mL (0 when nothing is predicted). AUC = Mann–Whitney U / (n_pos · n_neg) with
  average ranks for ties; None when either class is absent or the cases mix the two kinds of confidence.
- **Lesion size buckets** (ground-truth component volume): "<1 mL", "1-5 mL" (1 ≤ v < 5), "5-20 mL"
  (5 ≤ v < 20), ">20 mL" (v ≥ 20).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from scipy import ndimage

from backend.evaluation.metrics import union_box

CONNECTIVITY = 26
DEFAULT_MIN_VOLUME_MM3 = 50.0
LOCALISATIONS = ("overlap", "dice")
SIZE_BUCKETS = ("<1 mL", "1-5 mL", "5-20 mL", ">20 mL")
_STRUCTURE_26 = np.ones((3, 3, 3), dtype=bool)


def size_bucket(volume_ml: float) -> str:
    """The lesion size bucket of a ground-truth lesion volume in mL."""
    if volume_ml < 1.0:
        return SIZE_BUCKETS[0]
    if volume_ml < 5.0:
        return SIZE_BUCKETS[1]
    if volume_ml < 20.0:
        return SIZE_BUCKETS[2]
    return SIZE_BUCKETS[3]


@dataclass(frozen=True)
class DetectionConfig:
    """How lesions are found and matched; every field is reported with the results."""

    lesion_structure: str = "pancreatic_lesion"
    min_volume_mm3: float = DEFAULT_MIN_VOLUME_MM3
    confidence_threshold: float = 0.5
    localisation: str = "overlap"
    min_dice: float = 0.1

    def __post_init__(self) -> None:
        if self.localisation not in LOCALISATIONS:
            raise ValueError(f"localisation must be one of {list(LOCALISATIONS)}, got {self.localisation!r}")
        if not self.min_volume_mm3 >= 0:
            raise ValueError("min_volume_mm3 must be ≥ 0")
        if not 0.0 <= self.confidence_threshold <= 1.0:
            raise ValueError("confidence_threshold must be between 0 and 1")
        if not 0.0 <= self.min_dice < 1.0:
            raise ValueError("min_dice must be in [0, 1)")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> DetectionConfig:
        """Build from a request's `detection` object (unknown keys are refused)."""
        data = dict(data or {})
        unknown = sorted(set(data) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"unknown detection settings {unknown}; known: {sorted(cls.__dataclass_fields__)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ValueError(str(exc)) from exc

    def describe(self) -> dict[str, Any]:
        """The settings plus the fixed conventions, for reports."""
        return {
            **asdict(self),
            "connectivity": CONNECTIVITY,
            "localisation_rule": (
                "any overlap" if self.localisation == "overlap" else f"Dice > {self.min_dice} with the touching"
            )
            + " counted predicted components",
            "confidence": "max probability in the counted predicted lesion, else counted predicted volume (mL)",
            "size_buckets": list(SIZE_BUCKETS),
        }


@dataclass(frozen=True)
class GtLesion:
    """One ground-truth lesion component and whether the prediction localised it."""

    volume_ml: float
    bucket: str
    detected: bool
    dice: float


@dataclass(frozen=True)
class CaseDetection:
    """Detection outcome of one case."""

    tumour: bool
    detected: bool
    confidence: float
    confidence_source: str
    predicted_components: int
    false_positive_components: int
    predicted_volume_ml: float
    gt_lesions: list[GtLesion] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON-able values."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CaseDetection:
        """Rebuild from `as_dict` output (stored rows)."""
        lesions = [GtLesion(**lesion) for lesion in data.get("gt_lesions", [])]
        return cls(**{**dict(data), "gt_lesions": lesions})


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    labels, count = ndimage.label(mask, structure=_STRUCTURE_26)
    return np.asarray(labels), int(count)


def detect_case(
    gt: np.ndarray,
    pred: np.ndarray,
    spacing: Sequence[float],
    config: DetectionConfig,
    probability: np.ndarray | None = None,
) -> CaseDetection:
    """Find and match lesion components of one case (probability: float map in [0, 1] or None)."""
    if gt.shape != pred.shape or (probability is not None and probability.shape != gt.shape):
        raise ValueError("lesion masks and probability map must have one shape")
    voxel_mm3 = float(np.prod([float(s) for s in spacing]))
    box = union_box(gt, pred)
    if box is None:
        source = "probability" if probability is not None else "volume_ml"
        return CaseDetection(False, False, 0.0, source, 0, 0, 0.0, [])
    region = tuple(slice(int(lo), int(hi) + 1) for lo, hi in zip(*box, strict=True))
    gt, pred = gt[region], pred[region]
    probability = probability[region] if probability is not None else None
    pred_labels, pred_count = _label(pred.astype(bool, copy=False))
    kept: list[int] = []
    max_probability: dict[int, float] = {}
    kept_voxels = 0
    for index, region in enumerate(ndimage.find_objects(pred_labels), start=1):
        if region is None:
            continue
        inside = pred_labels[region] == index
        voxels = int(np.count_nonzero(inside))
        if voxels * voxel_mm3 < config.min_volume_mm3:
            continue
        if probability is not None:
            peak = float(probability[region][inside].max())
            if peak < config.confidence_threshold:
                continue
            max_probability[index] = peak
        kept.append(index)
        kept_voxels += voxels
    kept_mask = pred_labels > 0 if len(kept) == pred_count else np.isin(pred_labels, kept)
    gt_labels, _ = _label(gt.astype(bool, copy=False))
    lesions: list[GtLesion] = []
    touched: set[int] = set()
    for index, region in enumerate(ndimage.find_objects(gt_labels), start=1):
        if region is None:
            continue
        component = gt_labels[region] == index
        hits = {int(v) for v in np.unique(pred_labels[region][component & kept_mask[region]])} - {0}
        touched |= hits
        volume_ml = int(np.count_nonzero(component)) * voxel_mm3 / 1000.0
        dice = _component_dice(gt_labels == index, np.isin(pred_labels, sorted(hits))) if hits else 0.0
        detected = bool(hits) and (config.localisation == "overlap" or dice > config.min_dice)
        lesions.append(GtLesion(volume_ml=volume_ml, bucket=size_bucket(volume_ml), detected=detected, dice=dice))
    predicted_ml = kept_voxels * voxel_mm3 / 1000.0
    if probability is not None:
        confidence, source = max(max_probability.values(), default=0.0), "probability"
    else:
        confidence, source = predicted_ml, "volume_ml"
    return CaseDetection(
        tumour=bool(lesions),
        detected=bool(kept),
        confidence=confidence,
        confidence_source=source,
        predicted_components=len(kept),
        false_positive_components=len(set(kept) - touched),
        predicted_volume_ml=predicted_ml,
        gt_lesions=lesions,
    )


def _component_dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(np.count_nonzero(a)) + int(np.count_nonzero(b))
    return 2.0 * int(np.count_nonzero(a & b)) / total if total else 0.0


def auc(positive_scores: Sequence[float], negative_scores: Sequence[float]) -> float | None:
    """ROC AUC by the Mann–Whitney rank formula (average ranks for ties); None without both classes."""
    n_pos, n_neg = len(positive_scores), len(negative_scores)
    if n_pos == 0 or n_neg == 0:
        return None
    # Imported here: scipy.stats costs ~0.4 s at import, which every API, worker and `maskloop` start would pay.
    from scipy.stats import rankdata

    ranks = rankdata(np.concatenate([np.asarray(positive_scores, float), np.asarray(negative_scores, float)]))
    u = float(ranks[:n_pos].sum()) - n_pos * (n_pos + 1) / 2.0
    return u / (n_pos * n_neg)


def _ratio(numerator: int, denominator: int) -> float | None:
    return numerator / denominator if denominator else None


def summarize(cases: Sequence[CaseDetection]) -> dict[str, Any]:
    """Patient- and tumour-wise sensitivity, specificity, AUC and per-size-bucket tumour sensitivity."""
    tumour = [c for c in cases if c.tumour]
    healthy = [c for c in cases if not c.tumour]
    lesions = [lesion for c in tumour for lesion in c.gt_lesions]
    by_bucket = {}
    for bucket in SIZE_BUCKETS:
        members = [lesion for lesion in lesions if lesion.bucket == bucket]
        by_bucket[bucket] = {
            "lesions": len(members),
            "detected": sum(lesion.detected for lesion in members),
            "sensitivity": _ratio(sum(lesion.detected for lesion in members), len(members)),
        }
    sources = sorted({c.confidence_source for c in cases})
    return {
        "cases": len(cases),
        "tumour_patients": len(tumour),
        "tumour_free_patients": len(healthy),
        "patient_sensitivity": _ratio(sum(c.detected for c in tumour), len(tumour)),
        "lesions": len(lesions),
        "lesions_detected": sum(lesion.detected for lesion in lesions),
        "tumour_sensitivity": _ratio(sum(lesion.detected for lesion in lesions), len(lesions)),
        "specificity": _ratio(sum(not c.detected for c in healthy), len(healthy)),
        "false_positive_components": sum(c.false_positive_components for c in cases),
        # Probabilities and volumes do not rank against each other: no AUC over a mix of the two.
        "auc": auc([c.confidence for c in tumour], [c.confidence for c in healthy]) if len(sources) <= 1 else None,
        "confidence_source": sources[0] if len(sources) == 1 else sources,
        "by_lesion_size": by_bucket,
    }
