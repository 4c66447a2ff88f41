"""PanTS-layout dataset writer: one phantom per case, the ``Image*/Label*`` folders and the metadata table."""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import axcodes2ornt

from backend.imaging.phantom.anatomy import PHANTOM_STRUCTURES
from backend.imaging.phantom.generate import generate_phantom, parse_orientation

METADATA_COLUMNS: tuple[str, ...] = (
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
)

_MANUFACTURERS = ("SIEMENS", "Siemens Healthineers", "siemens", "Siemens", "", "SIEMENS ", "")
_MODELS = ("SOMATOM Definition AS+", "Sensation 64", "SOMATOM Force", "SOMATOM Definition Flash", "")
_SEXES = ("M", "F", " F", "M ", "F", "M", "")
_PHASES = ("Venous", "Venous", "Venous", "Arterial", "Delay", "Non-contrast", "")
_STUDY_TYPES = ("CT ABDOMEN PELVIS W CONTRAST", "CT ABD/PELVIS W IV CONTRAST", "CT PANCREAS PROTOCOL", "")
_SITES = (
    ("JHH", "Johns Hopkins Hospital", "US"),
    ("MSD", "Medical Segmentation Decathlon; Memorial Sloan Kettering Cancer Center", "US"),
    ("EU-MC", "Charite Berlin; Universitatsklinikum Erlangen", "DE;NL"),
)
_STUDY_YEARS = ("2016", "2012; 2016; 2020", "06.2016-04.2021", "", "2019")


def _case_seed(seed: int, index: int) -> int:
    """Independent deterministic seed of one case."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def _tuple_str(values: Sequence[float] | Sequence[int]) -> str:
    """Python tuple string of numbers, as the PanTS metadata writes them: '(512, 333, 200)'."""
    return "(" + ", ".join(str(v) for v in values) + ")"


def _save_nifti(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write an array as NIfTI-1 with scanner sform/qform and millimetre units."""
    img = nib.Nifti1Image(data, affine)
    img.header.set_data_dtype(data.dtype)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units("mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))


def write_pants_dataset(
    root: Path,
    n_cases: int,
    shape: Sequence[int] = (96, 96, 48),
    spacing: Sequence[float] = (2.0, 2.0, 3.0),
    seed: int = 0,
    split: str = "Tr",
    tumor_fraction: float = 0.5,
    missing_structure: dict[int, str] | None = None,
    float_masks_cases: set[int] | None = None,
    orientations: dict[int, str] | None = None,
    metadata_format: str = "csv",
    progress: Callable[[int, int], None] | None = None,
) -> list[str]:
    """Write ``n_cases`` phantoms in the PanTS layout plus a metadata table; returns the case ids."""
    if split not in ("Tr", "Te"):
        raise ValueError("split must be 'Tr' or 'Te'")
    if metadata_format not in ("csv", "xlsx"):
        raise ValueError("metadata_format must be 'csv' or 'xlsx'")
    if not 0.0 <= tumor_fraction <= 1.0:
        raise ValueError("tumor_fraction must be within [0, 1]")
    missing_structure = dict(missing_structure or {})
    for name in missing_structure.values():
        if name not in PHANTOM_STRUCTURES:
            raise ValueError(f"unknown structure {name!r}")
    float_masks_cases = set(float_masks_cases or set())
    orientations = dict(orientations or {})
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 1_000_003]))
    n_tumor = math.floor(n_cases * tumor_fraction + 0.5)
    tumor_cases = {int(i) for i in rng.permutation(n_cases)[:n_tumor]}

    rows: list[dict[str, str | int | None]] = []
    case_ids: list[str] = []
    for idx in range(n_cases):
        case_id = f"PanTS_{idx + 1:08d}"
        case_ids.append(case_id)
        code = parse_orientation(orientations.get(idx, "RAS"))
        ornt = axcodes2ornt(code)
        out_shape = tuple(int(shape[int(ax)]) for ax, _ in ornt)
        out_spacing = tuple(float(spacing[int(ax)]) for ax, _ in ornt)
        tumor = idx in tumor_cases
        ph = generate_phantom(
            out_shape, out_spacing, seed=_case_seed(seed, idx), lesion=tumor, orientation="".join(code)
        )
        _save_nifti(ph.volume, ph.affine, root / f"Image{split}" / case_id / "ct.nii.gz")
        seg_dir = root / f"Label{split}" / case_id / "segmentations"
        seg_dir.mkdir(parents=True, exist_ok=True)
        for name in PHANTOM_STRUCTURES:
            if missing_structure.get(idx) == name:
                continue
            mask = ph.masks[name]
            data = mask.astype(np.float32) * np.float32(0.9999) if idx in float_masks_cases else mask.astype(np.uint8)
            _save_nifti(data, ph.affine, seg_dir / f"{name}.nii.gz")

        site = _SITES[int(rng.integers(len(_SITES)))]
        age_blank = rng.random() < 0.1
        age = int(rng.integers(25, 90))
        rows.append(
            {
                "BDMAP ID": case_id,
                "shape": _tuple_str(ph.volume.shape),
                "spacing": _tuple_str(out_spacing),
                "ct phase": _PHASES[int(rng.integers(len(_PHASES)))],
                "sex": _SEXES[int(rng.integers(len(_SEXES)))],
                "age": None if age_blank else age,
                "manufacturer": _MANUFACTURERS[int(rng.integers(len(_MANUFACTURERS)))],
                "manufacturer model": _MODELS[int(rng.integers(len(_MODELS)))],
                "study type": _STUDY_TYPES[int(rng.integers(len(_STUDY_TYPES)))],
                "site": site[0],
                "site detail": site[1],
                "site nationality": site[2],
                "study year": _STUDY_YEARS[int(rng.integers(len(_STUDY_YEARS)))],
                "tumor?": 1 if tumor else 0,
                "number of pancreatic lesion instances": 1 if ph.masks["pancreatic_lesion"].any() else 0,
            }
        )
        if progress is not None:
            progress(idx + 1, n_cases)

    if metadata_format == "csv":
        with (root / "metadata.csv").open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(METADATA_COLUMNS))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
    else:
        from openpyxl import Workbook

        wb = Workbook()
        ws = wb.active
        assert ws is not None
        ws.title = "metadata"
        ws.append(list(METADATA_COLUMNS))
        for row in rows:
            ws.append([row[c] for c in METADATA_COLUMNS])
        wb.save(root / "metadata.xlsx")
    return case_ids
