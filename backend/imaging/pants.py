"""Reading a PanTS-layout dataset folder: its cases, their structure mask files and metadata rows (the sheet
itself: backend.imaging.pants_metadata); a survey that collects each faulty case instead of stopping at the first."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from backend.core.errors import InvalidInput
from backend.imaging.pants_metadata import (
    KEY_COLUMN,
    NormalisedMetadata,
    normalise_manufacturer,
    normalise_metadata,
    normalise_phase,
    normalise_sex,
    read_metadata_sheet,
)

__all__ = [
    "KEY_COLUMN",
    "CaseProblem",
    "NormalisedMetadata",
    "PantsCase",
    "PantsFolder",
    "normalise_manufacturer",
    "normalise_metadata",
    "normalise_phase",
    "normalise_sex",
    "read_metadata_sheet",
    "read_pants_case",
    "scan_pants_folder",
    "survey_pants_folder",
]

SPLITS: tuple[tuple[str, str, str], ...] = (
    ("ImageTr", "LabelTr", "train"),
    ("ImageTe", "LabelTe", "test"),
)
IMAGE_NAMES = ("ct.nii.gz", "ct.nii")
MASK_SUFFIXES = (".nii.gz", ".nii")


@dataclass
class PantsCase:
    """One case of a PanTS-layout folder: its CT, the mask files found and its metadata row."""

    case_id: str
    split: str
    image_path: Path
    structure_paths: dict[str, Path] = field(default_factory=dict)
    missing_structures: list[str] = field(default_factory=list)
    unknown_files: list[str] = field(default_factory=list)
    raw_metadata: dict[str, str] = field(default_factory=dict)
    metadata: NormalisedMetadata = field(default_factory=NormalisedMetadata)


# --- folder scan --------------------------------------------------------------------------------


def _check_name(name: str, what: str) -> None:
    """Refuse names that could escape a folder."""
    if not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name or name.startswith(".."):
        raise InvalidInput(f"unsafe {what} name {name!r}", name=name)


def _inside(path: Path, root: Path, what: str) -> Path:
    """Return `path` unchanged, refusing it when it (or a symlink on the way) leads outside `root`."""
    resolved = path.resolve()
    if not resolved.is_relative_to(root):
        raise InvalidInput(
            f"{what} {path.relative_to(root) if path.is_relative_to(root) else path} points outside the dataset folder",
            path=str(path),
        )
    return path


def _visible(folder: Path) -> list[Path]:
    """Entries of a folder, hidden ones (.DS_Store, ._*) left out, sorted by name."""
    return sorted((p for p in folder.iterdir() if not p.name.startswith(".")), key=lambda p: p.name)


def _mask_name(file_name: str) -> str | None:
    """Structure name of a mask file name, or None when it is not a NIfTI file."""
    for suffix in MASK_SUFFIXES:
        if file_name.endswith(suffix) and len(file_name) > len(suffix):
            return file_name[: -len(suffix)]
    return None


def _load_metadata(root: Path) -> tuple[dict[str, dict[str, str]], str | None]:
    """The dataset's metadata sheet (xlsx preferred over csv) and its file name, or ({}, None) without one."""
    for name in ("metadata.xlsx", "metadata.csv"):
        path = root / name
        if path.exists() or path.is_symlink():
            return read_metadata_sheet(_inside(path, root, "metadata sheet")), name
    return {}, None


@dataclass(frozen=True)
class CaseProblem:
    """A case folder that cannot be imported as it is: its case id, the file at fault (relative to the dataset
    folder) and why."""

    case_id: str
    file: str
    reason: str


@dataclass
class PantsFolder:
    """What a dataset folder holds: its importable cases, the cases that cannot be imported (with the reason) and
    the metadata rows of case ids that have no case folder."""

    root: Path
    cases: list[PantsCase]
    problems: list[CaseProblem]
    metadata_file: str | None
    orphan_rows: list[str]


def _dataset_root(root: Path) -> tuple[Path, list[tuple[str, str, str]]]:
    """The resolved dataset folder and its (image folder, label folder, split) triples; refused if not PanTS."""
    root_path = Path(root)
    if not root_path.is_dir():
        raise InvalidInput(f"dataset folder {str(root_path)!r} does not exist or is not a folder")
    root_path = root_path.resolve()
    present = [(img, lab, split) for img, lab, split in SPLITS if (root_path / img).exists()]
    if not present:
        raise InvalidInput(
            f"{root_path.name}: not a PanTS-layout folder (neither ImageTr nor ImageTe found)",
            path=str(root_path),
        )
    for image_dir_name, _, _ in present:
        image_dir = _inside(root_path / image_dir_name, root_path, "folder")
        if not image_dir.is_dir():
            raise InvalidInput(f"{image_dir_name} is not a folder", path=str(image_dir))
    return root_path, present


def _relative(path: Path, root: Path) -> str:
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


def _read_case(
    root: Path,
    case_dir: Path,
    label_dir_name: str,
    split: str,
    wanted: Sequence[str],
    raw: dict[str, str],
    read_masks: bool = True,
) -> PantsCase | None:
    """One case folder (None for a stray file beside the case folders); InvalidInput naming the faulty `file`.

    Without `read_masks` the segmentation folder is not listed (no structure paths, none missing)."""
    case_id = case_dir.name
    _check_name(case_id, "case")
    case_dir = _inside(case_dir, root, "case folder")
    if not case_dir.is_dir():
        return None
    image = next((case_dir / n for n in IMAGE_NAMES if (case_dir / n).exists()), None)
    if image is None:
        where = _relative(case_dir, root)
        raise InvalidInput(
            f"case {case_id} ({where}) has no ct.nii.gz", case_id=case_id, file=f"{where}/{IMAGE_NAMES[0]}"
        )
    image = _inside(image, root, f"image of case {case_id}")
    if not image.is_file():
        raise InvalidInput(f"case {case_id}: {image.name} is not a file", case_id=case_id, file=_relative(image, root))
    known = set(wanted)
    structures: dict[str, Path] = {}
    unknown: list[str] = []
    seg_dir = root / label_dir_name / case_id / "segmentations"
    if read_masks and (seg_dir.exists() or seg_dir.is_symlink()):
        seg_dir = _inside(seg_dir, root, f"segmentations of case {case_id}")
        for mask in _visible(seg_dir):
            _check_name(mask.name, "mask file")
            mask_path = _inside(mask, root, f"mask file of case {case_id}")
            structure = _mask_name(mask.name)
            if mask_path.is_file() and structure in known:
                if structure in structures:
                    raise InvalidInput(
                        f"case {case_id}: structure {structure} has both .nii and .nii.gz files",
                        case_id=case_id,
                        file=_relative(mask_path, root),
                    )
                structures[structure] = mask_path
            else:
                unknown.append(mask.name)
    return PantsCase(
        case_id=case_id,
        split=split,
        image_path=image,
        structure_paths={name: structures[name] for name in wanted if name in structures},
        missing_structures=[name for name in wanted if name not in structures] if read_masks else [],
        unknown_files=unknown,
        raw_metadata=raw,
        metadata=normalise_metadata(raw),
    )


def survey_pants_folder(root: Path, structure_names: Sequence[str], *, read_masks: bool = True) -> PantsFolder:
    """List a PanTS-layout folder's cases, collecting each case's problem instead of stopping at the first.

    A folder that is not a PanTS dataset, or whose metadata sheet cannot be read, is refused as a whole. Without
    `read_masks` only the case folders and CTs are checked (fast on 36k cases; `read_pants_case` lists a case's
    masks when it is imported).
    """
    root_path, present = _dataset_root(root)
    wanted = list(dict.fromkeys(structure_names))
    sheet, sheet_name = _load_metadata(root_path)
    cases: dict[str, PantsCase] = {}
    problems: dict[str, CaseProblem] = {}
    for image_dir_name, label_dir_name, split in present:
        for entry in _visible(root_path / image_dir_name):
            case_id = entry.name
            try:
                raw = dict(sheet.get(case_id, {}))
                case = _read_case(root_path, entry, label_dir_name, split, wanted, raw, read_masks)
                if case is not None and (case_id in cases or case_id in problems):
                    raise InvalidInput(
                        f"case {case_id} appears in more than one split", case_id=case_id, file=f"{image_dir_name}"
                    )
            except InvalidInput as exc:
                cases.pop(case_id, None)
                file = str(exc.details.get("file") or _relative(entry, root_path))
                problems.setdefault(case_id, CaseProblem(case_id, file, exc.message))
                continue
            if case is not None:
                cases[case_id] = case
    orphans = sorted(case_id for case_id in sheet if case_id not in cases and case_id not in problems)
    return PantsFolder(
        root=root_path,
        cases=[cases[k] for k in sorted(cases)],
        problems=[problems[k] for k in sorted(problems)],
        metadata_file=sheet_name,
        orphan_rows=orphans,
    )


def scan_pants_folder(root: Path, structure_names: Sequence[str]) -> list[PantsCase]:
    """List the cases of a PanTS-layout folder (ImageTr/ImageTe + LabelTr/LabelTe), sorted by id; the first
    faulty case refuses the whole folder (see survey_pants_folder to collect every problem instead)."""
    folder = survey_pants_folder(root, structure_names)
    if folder.problems:
        first = folder.problems[0]
        raise InvalidInput(first.reason, case_id=first.case_id, file=first.file)
    return folder.cases


def read_pants_case(
    root: Path, case_id: str, split: str, structure_names: Sequence[str], raw_metadata: Mapping[str, str]
) -> PantsCase:
    """Read one case of a PanTS-layout folder again (its files as they are now), with its metadata row."""
    root_path = Path(root).resolve()
    folders = {split_name: (img, lab) for img, lab, split_name in SPLITS}
    if split not in folders:
        raise InvalidInput(f"unknown split {split!r}")
    image_dir_name, label_dir_name = folders[split]
    case = _read_case(
        root_path,
        root_path / image_dir_name / case_id,
        label_dir_name,
        split,
        list(dict.fromkeys(structure_names)),
        dict(raw_metadata),
    )
    if case is None:
        raise InvalidInput(
            f"case {case_id}: {image_dir_name}/{case_id} is no longer a folder",
            case_id=case_id,
            file=f"{image_dir_name}/{case_id}",
        )
    return case
