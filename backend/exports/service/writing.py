"""Export writing: the dataset folder of a plan, with no database (blobs only), its manifest.json and its card.

The folder is written exactly where the caller says (`maskloop export --out DIR` writes DIR itself); the job
writes it under a temporary folder named `dataset_folder_name(plan)`, which becomes the archive's top level.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from pydicom.dataset import Dataset

from backend.core.blobstore import BlobStore
from backend.core.errors import InvalidInput
from backend.exports.service import card
from backend.exports.service.nifti_deid import without_free_text
from backend.exports.service.planning import CasePlan, ExportPlan
from backend.imaging import chunks, dicom_seg, layouts, nifti
from backend.imaging.dicom_deid import Pseudonyms, deidentify
from backend.labels import service as labels

MANIFEST_NAME = "manifest.json"
Progress = Callable[[int, int, str], None]


def maskloop_version() -> str:
    """The installed maskloop version (pyproject's when not installed as a distribution)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("maskloop")
    except PackageNotFoundError:
        return "0.1.0"


def _masks(blobs: BlobStore, case: CasePlan, names: Sequence[str]) -> dict[str, np.ndarray | None]:
    """The case's masks of the exported structures; None for a structure missing in the version."""
    out: dict[str, np.ndarray | None] = {}
    for name in names:
        status, digest = case.entries.get(name, ("missing", None))
        if status != "present" or not digest:
            out[name] = None
            continue
        manifest = labels.load_manifest(blobs, digest)
        out[name] = chunks.assemble_mask(manifest, blobs.get_bytes)
    return out


def _pants_specs(plan: ExportPlan) -> list[layouts.LabelSpec]:
    values = {s.name: s.label_value for s in plan.structures}
    return [layouts.LabelSpec(name, values[name]) for name in plan.paint_order]


def _consecutive_specs(plan: ExportPlan) -> tuple[list[layouts.LabelSpec], list[layouts.LabelSpec]]:
    """nnU-Net/MSD labels 1..n in schema order, and the same labels in paint order."""
    specs = layouts.consecutive_labels([s.name for s in plan.structures])
    by_name = {spec.name: spec for spec in specs}
    return specs, [by_name[name] for name in plan.paint_order]


def dataset_folder_name(plan: ExportPlan) -> str:
    """The dataset folder's name: DatasetXXX_Name for nnU-Net, else the requested folder_name or <project>-<format>."""
    if plan.format == "nnunet":
        return layouts.nnunet_folder_name(plan.dataset_id, plan.dataset_name)
    return plan.folder_name or f"{plan.project_slug}-{plan.format}"


def _prepare(root: Path) -> None:
    """Create the export folder; an existing one must be empty (an export never mixes with other files)."""
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise InvalidInput(f"{root} exists and is not an empty folder; choose a new or empty folder", path=str(root))
    root.mkdir(parents=True, exist_ok=True)


def _rewrite_with_ignore(root: Path, case: CasePlan, ignore_value: int) -> None:
    """Region labels learn their classes case by case: set a finished case's unlabelled voxels to ignore."""
    _, path = layouts.nnunet_case_paths(root, case.export_id, test=case.test)
    image: Any = nib.load(str(path))
    label_map = np.asarray(image.dataobj)
    path.write_bytes(nifti.to_nifti_gz(layouts.apply_ignore(label_map, ignore_value), case.affine))


def write_export(blobs: BlobStore, plan: ExportPlan, root: Path, *, progress: Progress | None = None) -> dict[str, Any]:
    """Write the export exactly at `root` (a new or empty folder) with manifest.json, the dataset card (README.md,
    cases.csv) and SHA256SUMS; returns the manifest."""
    _prepare(root)
    names = [s.name for s in plan.structures]
    pants_order = _pants_specs(plan)
    consecutive, consecutive_order = _consecutive_specs(plan)
    encoder = layouts.RegionEncoder(plan.paint_order) if plan.nnunet_labels == "regions" else None
    # nnU-Net's ignore label: declared when a case lacks a structure; the highest value (regions: known at the end).
    incomplete = {case.export_id for case in plan.cases if case.missing(names)}
    use_ignore = plan.format == "nnunet" and plan.ignore_label and bool(incomplete)
    ignore_value: int | None = len(consecutive) + 1 if use_ignore and encoder is None else None
    exported: list[dict[str, Any]] = []
    metadata_rows: list[dict[str, Any]] = []
    total = len(plan.cases)
    for index, case in enumerate(plan.cases):
        image = blobs.get_bytes(case.image_digest)
        if plan.deidentify_salt is not None and plan.format != "dicom-seg":
            image = without_free_text(image)  # the file as uploaded may carry names in its header
        masks = _masks(blobs, case, names)
        files: list[Path]
        if plan.format == "pants":
            combined = layouts.paint_combined(masks, pants_order, case.shape)
            files = layouts.write_pants_case(
                root,
                case.export_id,
                split="test" if case.test else None,
                image_nii_gz=image,
                affine=case.affine,
                masks=masks,
                combined=combined,
            )
            metadata_rows.append(
                {
                    **case.metadata_row,
                    "label_version_id": case.version_id,
                    "version_kind": case.version_kind,
                    "version_author": case.version_author,
                }
            )
        elif plan.format in ("nnunet", "msd"):
            if encoder is not None:
                label_map = encoder.encode(masks, case.shape)
            else:
                label_map = layouts.paint_combined(masks, consecutive_order, case.shape)
            if ignore_value is not None and case.export_id in incomplete:
                label_map = layouts.apply_ignore(label_map, ignore_value)
            writer = layouts.write_nnunet_case if plan.format == "nnunet" else layouts.write_msd_case
            files = writer(
                root, case.export_id, image_nii_gz=image, affine=case.affine, label_map=label_map, test=case.test
            )
        else:
            files = _write_dicom_case(root, plan, case, image, masks)
        exported.append(
            {
                "scan_id": case.scan_id,
                "case_id": case.export_id,
                "split": case.split,
                "folder": "test" if case.test else "train",
                "site": case.site,
                "phase": case.phase,
                "label_version_id": case.version_id,
                "version_kind": case.version_kind,
                "version_author": case.version_author,
                "missing_structures": [n for n in names if masks[n] is None],
                "ignore_label_applied": use_ignore and case.export_id in incomplete,
                "files": [str(p.relative_to(root)) for p in files],
            }
        )
        if progress is not None:
            progress(index + 1, total, case.export_id)
    if use_ignore and encoder is not None:
        ignore_value = len(encoder.classes) + 1
        for case in plan.cases:
            if case.export_id in incomplete:
                _rewrite_with_ignore(root, case, ignore_value)
    extra: dict[str, Any] = {
        "test_split": plan.test_split,
        "ignore_label": {"name": layouts.IGNORE_LABEL, "value": ignore_value} if ignore_value is not None else None,
        "cases_with_missing_structures": sorted(incomplete),
    }
    training = [c.export_id for c in plan.cases if not c.test]
    testing = [c.export_id for c in plan.cases if c.test]
    if plan.format == "pants":
        layouts.write_metadata_sheet(root, metadata_rows, layouts.EXPORT_METADATA_COLUMNS)
    elif plan.format == "nnunet":
        description = f"maskloop export of project {plan.project_slug}, version {plan.version}"
        if encoder is not None:
            regions = encoder.regions()
            dataset = layouts.nnunet_dataset_json(
                regions,
                len(training),
                name=plan.dataset_name,
                description=description,
                regions_class_order=list(range(1, len(regions) + 1)),
                ignore_value=ignore_value,
            )
            extra["nnunet_regions"] = regions
        else:
            dataset = layouts.nnunet_dataset_json(
                {spec.name: spec.value for spec in consecutive},
                len(training),
                name=plan.dataset_name,
                description=description,
                ignore_value=ignore_value,
            )
        layouts.write_json(root / "dataset.json", dataset)
    elif plan.format == "msd":
        dataset = layouts.msd_dataset_json(
            consecutive,
            training,
            name=plan.dataset_name,
            description=f"maskloop export of project {plan.project_slug}, version {plan.version}",
            test_case_ids=testing,
        )
        layouts.write_json(root / "dataset.json", dataset)
    manifest = _manifest(plan, exported, consecutive, extra)
    card.write_card(root, manifest, f"{dataset_folder_name(plan)}: dataset card")
    layouts.write_json(root / MANIFEST_NAME, manifest)
    card.write_checksums(root)
    return manifest


def _manifest(
    plan: ExportPlan, exported: list[dict[str, Any]], consecutive: list[layouts.LabelSpec], extra: dict[str, Any]
) -> dict[str, Any]:
    """What the export holds and how it was made."""
    if plan.format in ("nnunet", "msd") and plan.nnunet_labels == "paint-order":
        label_values = {spec.name: spec.value for spec in consecutive}
    elif plan.format == "pants":
        label_values = {s.name: s.label_value for s in plan.structures}
    else:
        label_values = {}
    paint_note = {
        "pants": "combined_labels.nii.gz paints structures in paint_order (schema label values); later ones win",
        "nnunet": (
            "labelsTr paint structures in paint_order with label_values; later ones win"
            if plan.nnunet_labels == "paint-order"
            else "region-based: each class is one combination of structures; labels map structures to classes"
        ),
        "msd": "labelsTr paint structures in paint_order with label_values; later ones win",
        "dicom-seg": "not flattened: one SEG segment per structure, overlaps kept",
    }[plan.format]
    return {
        "format": plan.format,
        "maskloop_version": maskloop_version(),
        "created_at": datetime.now(UTC).isoformat(),
        "project": plan.project_slug,
        "version": plan.version,
        "structures": [
            {"name": s.name, "label_value": s.label_value, "color": s.color, "group": s.group, "inside": s.inside}
            for s in plan.structures
        ],
        "paint_order": plan.paint_order,
        "label_values": label_values,
        "paint_order_note": paint_note,
        "nnunet_labels": plan.nnunet_labels if plan.format == "nnunet" else None,
        "scans": exported,
        "skipped": plan.skipped,
        **extra,
    }


@dataclass(frozen=True)
class _ScanPseudonyms(Pseudonyms):
    """The project's research identifiers, with the export's generated study, series and patient identifiers mapped
    to the research ones the scan already has (what its intake used), so the export names the scan as intake did."""

    uids: Mapping[str, str] = field(default_factory=dict)
    patients: Mapping[str, str] = field(default_factory=dict)

    def uid(self, original: str) -> str:
        """The scan's research UID for a generated one, else the project's research UID."""
        return self.uids.get(original.strip()) or super().uid(original)

    def patient(self, original: str) -> str:
        """The scan's research patient id for the generated one, else the project's research patient id."""
        return self.patients.get(original.strip()) or super().patient(original)


def _research_names(salt: str, case: CasePlan, ids: dicom_seg.SeriesIds) -> _ScanPseudonyms:
    """Research identifiers of a case: those of its de-identified intake as they are, the project's HMAC of its
    original DICOM identifiers (a series uploaded as files), or of the generated ones (a scan that came as NIfTI)."""
    base = Pseudonyms(salt)
    study, series = base.uid(ids.study_uid), base.uid(ids.series_uid)
    # No DICOM original: the case's research identifier (its export folder's name) is its research patient id.
    patient = base.patient(case.source_patient_id) if case.source_patient_id else case.export_id
    if case.source_series_uid and case.research_ids:
        series = case.source_series_uid
        study = case.source_study_uid or study
        patient = case.source_patient_id or patient
    elif case.source_series_uid:
        series = base.uid(case.source_series_uid)
        study = base.uid(case.source_study_uid) if case.source_study_uid else study
    return _ScanPseudonyms(
        salt, uids={ids.study_uid: study, ids.series_uid: series}, patients={ids.patient_id.strip(): patient}
    )


def _write_dicom_case(
    root: Path, plan: ExportPlan, case: CasePlan, image: bytes, masks: dict[str, np.ndarray | None]
) -> list[Path]:
    """<case>/CT/<nnnn>.dcm (the scan as a DICOM series) and <case>/SEG/seg.dcm (one segment per structure).

    In a project whose exports are de-identified (`plan.deidentify_salt`) the CT series goes through the PS3.15
    Basic Profile as intake does (`backend.imaging.dicom_deid`): the research patient id, study and series UIDs of
    the scan, every other UID replaced by its research UID, no dates, names or descriptions; the SEG is built on
    that series, so it carries the same research identifiers, and its own UIDs are research ones too.
    """
    volume = nifti.load_nifti_bytes(image, f"{case.export_id}.nii.gz")
    seed = f"{plan.seed}:{case.scan_id}:{case.version_id}"
    ids = dicom_seg.SeriesIds.derive(case.case_id, seed)
    series = dicom_seg.ct_series(volume.data, volume.geometry.affine, ids, description=f"{case.export_id} CT")
    names = _research_names(plan.deidentify_salt, case, ids) if plan.deidentify_salt is not None else None
    if names is not None:
        series = [deidentify(ds, names) for ds in series]
    files = dicom_seg.write_datasets(series, root / case.export_id / "CT")
    infos = {s.name: s for s in plan.structures}
    segments = [
        (dicom_seg.SegmentSpec(name, infos[name].color, infos[name].group == "lesion", infos[name].code), mask)
        for name, mask in masks.items()
        if mask is not None
    ]
    if not segments:
        return files
    seg_series, seg_sop = dicom_seg.uid(seed, "seg-series"), dicom_seg.uid(seed, "seg")
    if names is not None:
        seg_series, seg_sop = names.uid(seg_series), names.uid(seg_sop)
    seg = dicom_seg.segmentation(
        series,
        segments,
        manual=case.version_kind in ("human", "import", "fusion"),
        algorithm_name=(case.model_version or "model").rsplit(" ", 1)[0],
        algorithm_version=(case.model_version or "v1").rsplit(" ", 1)[-1],
        series_uid=seg_series,
        sop_uid=seg_sop,
        series_description=(
            f"labels v{case.version_id}" if names is not None else f"{case.export_id} labels v{case.version_id}"
        ),
    )
    if names is not None:
        _mark_deidentified(seg, series[0])
    path = root / case.export_id / "SEG" / "seg.dcm"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(dicom_seg.seg_to_bytes(seg))
    return [*files, path]


def _mark_deidentified(seg: Dataset, source: Dataset) -> None:
    """Give a SEG built on a de-identified series that series' de-identification attributes."""
    for keyword in _DEID_MARKS:
        if keyword in source:
            setattr(seg, keyword, source.data_element(keyword).value)  # type: ignore[union-attr]


_DEID_MARKS = (
    "PatientIdentityRemoved",
    "DeidentificationMethod",
    "DeidentificationMethodCodeSequence",
    "LongitudinalTemporalInformationModified",
)
