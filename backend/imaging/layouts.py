"""Dataset layouts written by exports: PanTS, nnU-Net v2 raw datasets and the Medical Segmentation Decathlon.

Pure file writers (numpy/nibabel/openpyxl, no database). Every NIfTI keeps the scan's own grid: the CT is the
stored file byte for byte and masks/label maps are written with the scan's affine, so orientation (RAS, LPS,
IPL, ...) and spacing survive an export/import round trip.

Overlapping structures (PanTS `pancreas` contains head/body/tail, duct and lesion; `veins` overlap organs)
stay separate binary masks in the PanTS layout. A single integer map is lossy, so every combined map is built
with an explicit *paint order*: structures are painted one after the other, a later structure overwriting an
earlier one where they overlap (the default order is the schema order with every structure painted after the
structure it lies `inside`, so sub-structures stay visible). nnU-Net can alternatively keep overlaps exactly
with region-based labels: each distinct combination of structures present in a voxel becomes one integer class
and every structure is the region (list of classes) containing it.

Splits: a scan of the test split (`is_test_split`) goes to the test folders — PanTS ImageTe/LabelTe, nnU-Net
imagesTs/labelsTs, MSD imagesTs/labelsTs listed under `test` — never into the training folders.

Missing structures (unknown, not empty): nnU-Net v2 declares an `ignore` label (the highest label value,
`"ignore": n` in dataset.json) and, in a case where a structure is missing, every voxel not labelled with
another structure becomes `ignore` (where an organ is unknown, background is unknown too) — `apply_ignore`.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from backend.core.errors import InvalidInput
from backend.imaging.nifti import to_nifti_gz
from backend.imaging.phantom import METADATA_COLUMNS

# The PanTS metadata sheet columns plus which label version each row's masks come from.
EXPORT_METADATA_COLUMNS: tuple[str, ...] = (*METADATA_COLUMNS, "label_version_id", "version_kind", "version_author")
NNUNET_CHANNEL_SUFFIX = "_0000"
NIFTI_ENDING = ".nii.gz"
IGNORE_LABEL = "ignore"
TEST_SPLITS = ("te", "ts", "test")
_DATASET_NAME_RE = re.compile(r"^[A-Za-z0-9_-]{1,80}$")


@dataclass(frozen=True)
class LabelSpec:
    """One exported structure: its name and the value it is painted with in a combined map."""

    name: str
    value: int


def combined_dtype(max_value: int) -> np.dtype[Any]:
    """uint8 when every label value fits, else uint16."""
    return np.dtype(np.uint8) if max_value < 256 else np.dtype(np.uint16)


def paint_combined(
    masks: Mapping[str, np.ndarray | None], paint_order: Sequence[LabelSpec], shape: tuple[int, int, int]
) -> np.ndarray:
    """Flatten binary masks into one integer map: structures in `paint_order`, later ones overwrite earlier ones."""
    top = max((spec.value for spec in paint_order), default=0)
    out = np.zeros(shape, dtype=combined_dtype(top))
    for spec in paint_order:
        mask = masks.get(spec.name)
        if mask is None:
            continue
        if tuple(mask.shape) != tuple(shape):
            raise InvalidInput(f"mask of {spec.name!r} has shape {list(mask.shape)}, expected {list(shape)}")
        out[mask] = spec.value
    return out


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --- PanTS ------------------------------------------------------------------------------------------------


def is_test_split(split: str | None) -> bool:
    """Whether a scan split names the held-out test set ('test', 'ts' or 'te', any case)."""
    return (split or "").strip().lower() in TEST_SPLITS


def pants_split_dirs(split: str | None) -> tuple[str, str]:
    """The image and label folder names of a split (test -> ImageTe/LabelTe, anything else -> ImageTr/LabelTr)."""
    return ("ImageTe", "LabelTe") if is_test_split(split) else ("ImageTr", "LabelTr")


def write_pants_case(
    root: Path,
    case_id: str,
    *,
    split: str | None,
    image_nii_gz: bytes,
    affine: np.ndarray,
    masks: Mapping[str, np.ndarray | None],
    combined: np.ndarray | None,
) -> list[Path]:
    """Write one PanTS case: Image*/<case>/ct.nii.gz, Label*/<case>/segmentations/<s>.nii.gz, combined_labels.

    A structure whose mask is None (missing in the version: unknown, not empty) gets no file, as in PanTS.
    """
    image_dir, label_dir = pants_split_dirs(split)
    written = [_write(root / image_dir / case_id / "ct.nii.gz", image_nii_gz)]
    seg_dir = root / label_dir / case_id / "segmentations"
    seg_dir.mkdir(parents=True, exist_ok=True)
    jobs: list[tuple[Path, np.ndarray]] = [
        (seg_dir / f"{name}{NIFTI_ENDING}", mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8))
        for name, mask in masks.items()
        if mask is not None
    ]
    if combined is not None:
        jobs.append((root / label_dir / case_id / "combined_labels.nii.gz", combined))
    # gzip releases the GIL: compress the masks of a case on a few threads.
    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        written += list(pool.map(lambda job: _write(job[0], to_nifti_gz(job[1], affine)), jobs))
    return written


def write_metadata_sheet(root: Path, rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> list[Path]:
    """Write metadata.csv and metadata.xlsx (one row per case, the PanTS key column 'BDMAP ID' first)."""
    from openpyxl import Workbook

    root.mkdir(parents=True, exist_ok=True)
    csv_path = root / "metadata.csv"
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = "metadata"
    sheet.append(list(columns))
    for row in rows:
        sheet.append(["" if row.get(c) is None else row.get(c) for c in columns])
    xlsx_path = root / "metadata.xlsx"
    book.save(xlsx_path)
    return [csv_path, xlsx_path]


# --- nnU-Net v2 -------------------------------------------------------------------------------------------


def nnunet_folder_name(dataset_id: int, name: str) -> str:
    """`DatasetXXX_Name` as nnU-Net v2 expects it (id 1..999, name of letters, digits, '_' and '-')."""
    if not 1 <= dataset_id <= 999:
        raise InvalidInput(f"nnU-Net dataset id must be within 1..999, got {dataset_id}")
    if not _DATASET_NAME_RE.match(name):
        raise InvalidInput(f"nnU-Net dataset name {name!r} may only hold letters, digits, '_' and '-'")
    return f"Dataset{dataset_id:03d}_{name}"


def consecutive_labels(structures: Sequence[str]) -> list[LabelSpec]:
    """Labels 1..n for the exported structures in the given (schema) order: nnU-Net/MSD need consecutive ints."""
    return [LabelSpec(name, i) for i, name in enumerate(structures, start=1)]


class RegionEncoder:
    """Lossless region-based labels: each distinct set of overlapping structures becomes one integer class.

    The class ids are shared by every case encoded with the same encoder, so one dataset.json describes them all.
    """

    def __init__(self, structures: Sequence[str]) -> None:
        """Start with no classes for the given structures (at most 62)."""
        if len(structures) > 62:
            raise InvalidInput("region-based labels support at most 62 structures")
        self.structures = list(structures)
        self.classes: dict[int, int] = {}  # bit set of structures -> class id (1..)

    def encode(self, masks: Mapping[str, np.ndarray | None], shape: tuple[int, int, int]) -> np.ndarray:
        """The integer class map of one case (0 = no structure)."""
        bits = np.zeros(shape, dtype=np.int64)
        for index, name in enumerate(self.structures):
            mask = masks.get(name)
            if mask is not None:
                bits[mask] |= np.int64(1) << np.int64(index)
        codes, inverse = np.unique(bits, return_inverse=True)
        lut = np.zeros(len(codes), dtype=np.int64)
        for position, code in enumerate(int(c) for c in codes):
            if code == 0:
                continue
            if code not in self.classes:
                self.classes[code] = len(self.classes) + 1
            lut[position] = self.classes[code]
        top = max(self.classes.values(), default=0)
        return lut[inverse.reshape(shape)].astype(combined_dtype(top))

    def regions(self) -> dict[str, list[int]]:
        """For each structure, the classes whose voxels belong to it (structures never present are left out)."""
        out: dict[str, list[int]] = {}
        for index, name in enumerate(self.structures):
            members = sorted(cid for code, cid in self.classes.items() if code >> index & 1)
            if members:
                out[name] = members
        return out


def nnunet_dataset_json(
    labels: Mapping[str, int] | Mapping[str, list[int]],
    num_training: int,
    *,
    name: str,
    description: str,
    regions_class_order: Sequence[int] | None = None,
    extra: Mapping[str, Any] | None = None,
    ignore_value: int | None = None,
) -> dict[str, Any]:
    """The dataset.json of an nnU-Net v2 raw dataset (one CT channel, NIfTI files), `ignore` declared if given."""
    ignore = {IGNORE_LABEL: int(ignore_value)} if ignore_value is not None else {}
    out: dict[str, Any] = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, **{k: v for k, v in labels.items()}, **ignore},
        "numTraining": int(num_training),
        "file_ending": NIFTI_ENDING,
        "name": name,
        "description": description,
    }
    if regions_class_order is not None:
        out["regions_class_order"] = [int(v) for v in regions_class_order]
    if extra:
        out.update(extra)
    return out


def apply_ignore(label_map: np.ndarray, ignore_value: int) -> np.ndarray:
    """The map with every unlabelled voxel (0) set to the ignore value (the dtype widened if it must be)."""
    out = label_map.astype(np.promote_types(label_map.dtype, combined_dtype(ignore_value)), copy=True)
    out[out == 0] = ignore_value
    return out


def nnunet_case_paths(root: Path, case_id: str, *, test: bool = False) -> tuple[Path, Path]:
    """(image, label) paths of a case: imagesTr/<case>_0000.nii.gz and labelsTr/<case>.nii.gz, or the Ts ones."""
    images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
    return (
        root / images / f"{case_id}{NNUNET_CHANNEL_SUFFIX}{NIFTI_ENDING}",
        root / labels / f"{case_id}{NIFTI_ENDING}",
    )


def write_nnunet_case(
    root: Path, case_id: str, *, image_nii_gz: bytes, affine: np.ndarray, label_map: np.ndarray, test: bool = False
) -> list[Path]:
    """imagesTr/<case>_0000.nii.gz (the CT as stored) and labelsTr/<case>.nii.gz (the integer map); imagesTs and
    labelsTs for a test case."""
    image_path, label_path = nnunet_case_paths(root, case_id, test=test)
    return [_write(image_path, image_nii_gz), _write(label_path, to_nifti_gz(label_map, affine))]


def write_json(path: Path, data: Mapping[str, Any]) -> Path:
    """Write pretty, stable JSON."""
    return _write(path, (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode("utf-8"))


def _label_ints(labels: Mapping[str, Any]) -> tuple[set[int], bool, list[str]]:
    """The integers a dataset.json `labels` mapping uses, whether it is region-based, and format errors."""
    errors: list[str] = []
    used: set[int] = set()
    regions = False
    for key, value in labels.items():
        if isinstance(value, bool):
            errors.append(f"label {key!r}: value must be an int or a list of ints, got a bool")
        elif isinstance(value, int):
            used.add(value)
        elif isinstance(value, list) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            regions = True
            used.update(value)
        else:
            errors.append(f"label {key!r}: value must be an int or a non-empty list of ints, got {value!r}")
    return used, regions, errors


def validate_nnunet_dataset(root: Path, *, check_geometry: bool = True) -> list[str]:
    """Check a raw dataset against the documented nnU-Net v2 rules; returns the violations (empty = valid).

    Rules (nnU-Net v2 `documentation/dataset_format.md`, `ignore_label.md`): the folder is `DatasetXXX_Name`;
    dataset.json has channel_names, labels (with background 0; consecutive integers from 0; region-based labels
    map to lists and need regions_class_order; an `ignore` label is one integer, the highest), numTraining and
    file_ending; every imagesTr file is `<case>_XXXX<file_ending>` with one file per channel; every training
    case has labelsTr/<case><file_ending> and vice versa; their number equals numTraining; label maps hold only
    declared integers; image and label share shape and affine. Test cases (imagesTs, with labelsTs where
    present) follow the same naming, channel and label rules and are not counted in numTraining.
    """
    errors: list[str] = []
    if not re.match(r"^Dataset\d{3}_[A-Za-z0-9_-]+$", root.name):
        errors.append(f"folder name {root.name!r} is not DatasetXXX_Name")
    try:
        meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        return [*errors, "dataset.json is missing"]
    except json.JSONDecodeError as exc:
        return [*errors, f"dataset.json is not valid JSON ({exc})"]
    for key in ("channel_names", "labels", "numTraining", "file_ending"):
        if key not in meta:
            errors.append(f"dataset.json lacks {key!r}")
    if errors:
        return errors
    channels = meta["channel_names"]
    if not isinstance(channels, dict) or not channels or sorted(channels) != [str(i) for i in range(len(channels))]:
        errors.append(f"channel_names must map '0'..'n-1' to names, got {channels!r}")
        channels = {"0": "CT"}
    labels = meta["labels"]
    if not isinstance(labels, dict) or labels.get("background") != 0:
        errors.append("labels must be a mapping with 'background': 0")
        return errors
    used, regions, label_errors = _label_ints(labels)
    errors += label_errors
    if used != set(range(len(used))):
        errors.append(f"label values must be consecutive integers from 0, got {sorted(used)}")
    if IGNORE_LABEL in labels:
        ignore = labels[IGNORE_LABEL]
        if isinstance(ignore, bool) or not isinstance(ignore, int) or ignore != max(used, default=0):
            errors.append(f"the ignore label must be one integer, the highest label value; got {ignore!r}")
    if regions:
        order = meta.get("regions_class_order")
        n_regions = sum(1 for k, v in labels.items() if k not in ("background", IGNORE_LABEL) and v != 0)
        if not isinstance(order, list) or len(order) != n_regions:
            errors.append("region-based labels need regions_class_order with one entry per region")
    elif "regions_class_order" in meta:
        errors.append("regions_class_order given but no label is region-based")
    ending = meta["file_ending"]
    if not isinstance(ending, str) or not ending.startswith("."):
        errors.append(f"file_ending must be a string like '.nii.gz', got {ending!r}")
        return errors
    if not (root / "imagesTr").is_dir() or not (root / "labelsTr").is_dir():
        return [*errors, "imagesTr/ and labelsTr/ must both exist"]
    train = _check_case_folders(root, "Tr", ending, len(channels), used, check_geometry, errors, labels_required=True)
    if meta["numTraining"] != len(train):
        errors.append(f"numTraining is {meta['numTraining']} but imagesTr holds {len(train)} cases")
    if (root / "imagesTs").is_dir():
        test = _check_case_folders(
            root, "Ts", ending, len(channels), used, check_geometry, errors, labels_required=False
        )
        both = sorted(set(train) & set(test))
        if both:
            errors.append(f"cases {both[:10]} are in both imagesTr and imagesTs")
    elif (root / "labelsTs").is_dir():
        errors.append("labelsTs/ exists without imagesTs/")
    return errors


def _check_case_folders(
    root: Path,
    suffix: str,
    ending: str,
    n_channels: int,
    used: set[int],
    check_geometry: bool,
    errors: list[str],
    *,
    labels_required: bool,
) -> dict[str, set[int]]:
    """Check images<suffix>/ and labels<suffix>/ (naming, channels, pairing, values, geometry); the cases found."""
    images_dir, labels_dir = root / f"images{suffix}", root / f"labels{suffix}"
    pattern = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})" + re.escape(ending) + "$")
    cases: dict[str, set[int]] = {}
    for path in sorted(images_dir.iterdir()):
        match = pattern.match(path.name)
        if match is None:
            errors.append(f"images{suffix}/{path.name} is not named <case>_XXXX{ending}")
            continue
        cases.setdefault(match["case"], set()).add(int(match["channel"]))
    label_files = list(labels_dir.iterdir()) if labels_dir.is_dir() else []
    label_cases = {p.name[: -len(ending)] for p in label_files if p.name.endswith(ending)}
    if len(label_cases) != len(label_files):
        errors.append(f"labels{suffix} holds files not ending in {ending}")
    for case, found in sorted(cases.items()):
        if found != set(range(n_channels)):
            errors.append(f"case {case}: channels {sorted(found)}, expected {list(range(n_channels))}")
        if case not in label_cases and (labels_required or label_files):
            errors.append(f"case {case} has an image but no labels{suffix}/{case}{ending}")
    for case in sorted(label_cases - set(cases)):
        errors.append(f"labels{suffix}/{case}{ending} has no image")
    if check_geometry:
        for case in sorted(set(cases) & label_cases):
            label_img: Any = nib.load(str(labels_dir / f"{case}{ending}"))
            values = {int(v) for v in np.unique(np.asarray(label_img.dataobj))}
            if not values <= used:
                errors.append(f"case {case}: label values {sorted(values - used)} are not declared")
            for channel in sorted(cases[case]):
                image: Any = nib.load(str(images_dir / f"{case}_{channel:04d}{ending}"))
                if image.shape[:3] != label_img.shape[:3]:
                    errors.append(f"case {case}: image shape {image.shape} != label shape {label_img.shape}")
                elif not np.allclose(image.affine, label_img.affine, rtol=0, atol=1e-4):
                    errors.append(f"case {case}: image and label affines differ")
    return cases


def decode_label_map(label_map: np.ndarray, labels: Mapping[str, int | list[int]]) -> dict[str, np.ndarray]:
    """Per-structure masks from an integer map and a dataset.json `labels` mapping (regions: class lists)."""
    out: dict[str, np.ndarray] = {}
    for name, value in labels.items():
        if name in ("background", IGNORE_LABEL):
            continue
        out[name] = np.isin(label_map, value) if isinstance(value, list) else label_map == value
    return out


# --- Medical Segmentation Decathlon -----------------------------------------------------------------------


def msd_dataset_json(
    labels: Sequence[LabelSpec],
    case_ids: Iterable[str],
    *,
    name: str,
    description: str,
    reference: str = "",
    test_case_ids: Iterable[str] = (),
) -> dict[str, Any]:
    """The dataset.json of a Decathlon-style dataset: training cases (imagesTr/labelsTr/<case>.nii.gz) and test
    cases, listed as image paths under `test` as the Decathlon does (their labels sit in labelsTs/)."""
    ids = list(case_ids)
    test_ids = list(test_case_ids)
    return {
        "name": name,
        "description": description,
        "reference": reference,
        "licence": "",
        "release": "",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {"0": "background", **{str(spec.value): spec.name for spec in labels}},
        "numTraining": len(ids),
        "numTest": len(test_ids),
        "training": [{"image": f"./imagesTr/{c}{NIFTI_ENDING}", "label": f"./labelsTr/{c}{NIFTI_ENDING}"} for c in ids],
        "test": [f"./imagesTs/{c}{NIFTI_ENDING}" for c in test_ids],
    }


def write_msd_case(
    root: Path, case_id: str, *, image_nii_gz: bytes, affine: np.ndarray, label_map: np.ndarray, test: bool = False
) -> list[Path]:
    """imagesTr/<case>.nii.gz (the CT as stored) and labelsTr/<case>.nii.gz; imagesTs/labelsTs for a test case."""
    images, labels = ("imagesTs", "labelsTs") if test else ("imagesTr", "labelsTr")
    return [
        _write(root / images / f"{case_id}{NIFTI_ENDING}", image_nii_gz),
        _write(root / labels / f"{case_id}{NIFTI_ENDING}", to_nifti_gz(label_map, affine)),
    ]
