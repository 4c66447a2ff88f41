"""The metadata sheet of a PanTS-layout dataset: reading it (.csv or .xlsx) and normalising each row."""

from __future__ import annotations

import csv
import io
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from backend.core.errors import InvalidInput

KEY_COLUMN = "BDMAP ID"

_PHASES: dict[str, str] = {
    "non-contrast": "non-contrast",
    "noncontrast": "non-contrast",
    "non contrast": "non-contrast",
    "non_contrast": "non-contrast",
    "unenhanced": "non-contrast",
    "plain": "non-contrast",
    "native": "non-contrast",
    "nc": "non-contrast",
    "venous": "venous",
    "portal venous": "venous",
    "portal-venous": "venous",
    "portal_venous": "venous",
    "portal": "venous",
    "pv": "venous",
    "arterial": "arterial",
    "early arterial": "arterial",
    "late arterial": "arterial",
    "delay": "delay",
    "delayed": "delay",
}

# (pattern on the lower-cased, whitespace-collapsed text, canonical maker)
_MAKERS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"siemens"), "Siemens"),
    (re.compile(r"^ge\b|\bge medical|\bge healthcare|general electric|^gems\b"), "GE"),
    (re.compile(r"philips"), "Philips"),
    (re.compile(r"toshiba|canon"), "Toshiba/Canon"),
    (re.compile(r"hitachi"), "Hitachi"),
    (re.compile(r"fujifilm|\bfuji\b"), "Fujifilm"),
    (re.compile(r"united imaging|^uih\b"), "United Imaging"),
    (re.compile(r"neusoft"), "Neusoft"),
    (re.compile(r"elscint"), "Elscint"),
    (re.compile(r"picker"), "Picker"),
    (re.compile(r"marconi"), "Marconi"),
    (re.compile(r"imatron"), "Imatron"),
)

_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


@dataclass
class NormalisedMetadata:
    """Metadata of one case in canonical form (None where blank or unparseable)."""

    site: str | None = None
    site_detail: str | None = None
    nationality: str | None = None
    phase: str | None = None
    sex: str | None = None
    age: int | None = None
    manufacturer: str | None = None
    manufacturer_model: str | None = None
    study_type: str | None = None
    study_year: str | None = None
    header_spacing: tuple[float, float, float] | None = None
    header_shape: tuple[int, int, int] | None = None
    slice_thickness: float | None = None
    tumor: bool | None = None
    lesion_instances: int | None = None


# --- metadata sheet -----------------------------------------------------------------------------


def _cell_text(value: Any) -> str:
    """Render a spreadsheet cell as text ('' for empty)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


def _rows_to_sheet(rows: list[list[str]], name: str) -> dict[str, dict[str, str]]:
    """Turn a header row plus data rows into {case id: {column: text}}."""
    # The header is the first row with any non-blank cell.
    start = next((i for i, row in enumerate(rows) if any(c.strip() for c in row)), None)
    if start is None:
        raise InvalidInput(f"{name}: the metadata sheet is empty", file=name)
    header = [c.strip() for c in rows[start]]
    key_index = next((i for i, h in enumerate(header) if h.lower() == KEY_COLUMN.lower()), None)
    if key_index is None:
        raise InvalidInput(
            f"{name}: key column {KEY_COLUMN!r} not found; columns are {[h for h in header if h]}",
            file=name,
            columns=[h for h in header if h],
        )
    duplicated = sorted({h for h in header if h and header.count(h) > 1})
    if duplicated:
        raise InvalidInput(f"{name}: duplicate column(s) {duplicated}", file=name)
    sheet: dict[str, dict[str, str]] = {}
    first_row: dict[str, int] = {}
    for number, row in enumerate(rows[start + 1 :], start=start + 2):
        cells = row + [""] * (len(header) - len(row))
        case_id = cells[key_index].strip()
        if not case_id:
            continue
        if case_id in sheet:
            raise InvalidInput(
                f"{name}: {KEY_COLUMN} {case_id!r} appears twice (rows {first_row[case_id]} and {number})",
                file=name,
                case_id=case_id,
            )
        first_row[case_id] = number
        sheet[case_id] = {h: cells[i] for i, h in enumerate(header) if h}
    return sheet


def _read_csv(path: Path) -> list[list[str]]:
    """Read a CSV file as rows of text (UTF-8 with or without BOM, else Latin-1)."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = data.decode("latin-1")
    try:
        return [list(row) for row in csv.reader(io.StringIO(text, newline=""))]
    except csv.Error as exc:
        raise InvalidInput(f"{path.name}: malformed CSV ({exc})", file=path.name) from exc


def _read_xlsx(path: Path) -> list[list[str]]:
    """Read the first worksheet of an .xlsx file as rows of text."""
    import openpyxl

    try:
        book = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception as exc:
        raise InvalidInput(f"{path.name}: not a readable .xlsx workbook ({exc})", file=path.name) from exc
    try:
        sheet = book.worksheets[0] if book.worksheets else None
        if sheet is None:
            raise InvalidInput(f"{path.name}: the workbook has no worksheet", file=path.name)
        return [[_cell_text(v) for v in row] for row in sheet.iter_rows(values_only=True)]
    finally:
        book.close()


def read_metadata_sheet(path: Path) -> dict[str, dict[str, str]]:
    """Read a metadata sheet (.csv or .xlsx) into {BDMAP ID: {column: text}}."""
    path = Path(path)
    if not path.is_file():
        raise InvalidInput(f"{path.name}: metadata sheet not found", file=str(path))
    suffix = path.suffix.lower()
    if suffix == ".csv":
        rows = _read_csv(path)
    elif suffix in (".xlsx", ".xlsm"):
        rows = _read_xlsx(path)
    else:
        raise InvalidInput(f"{path.name}: metadata must be .csv or .xlsx, got {suffix or 'no extension'}")
    return _rows_to_sheet(rows, path.name)


# --- normalisation ------------------------------------------------------------------------------


def _key(name: str) -> str:
    return " ".join(str(name).lower().split())


def _text(value: str | None) -> str | None:
    """Trimmed text, None when blank."""
    if value is None:
        return None
    out = " ".join(str(value).split())
    return out or None


def _number(value: str | None) -> float | None:
    """Parse one finite number written as '1', '1.0', ' 63 '; None when blank or not a number."""
    text = _text(value)
    if text is None:
        return None
    try:
        out = float(text)
    except ValueError:
        return None
    return out if math.isfinite(out) else None


def _whole(value: str | None) -> int | None:
    """Parse a whole number ('3', '3.0'); None when blank, fractional or not a number."""
    number = _number(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _triple(value: str | None) -> tuple[float, float, float] | None:
    """Parse '(0.7, 0.7, 0.8)', '[0.7 0.7 0.8]' or '0.7x0.7x0.8'; None unless exactly three numbers."""
    text = _text(value)
    if text is None:
        return None
    numbers = _NUMBER.findall(text)
    if len(numbers) != 3:
        return None
    a, b, c = (float(n) for n in numbers)
    if not all(math.isfinite(v) for v in (a, b, c)):
        return None
    return (a, b, c)


def normalise_phase(value: str | None) -> str | None:
    """Canonical contrast phase: non-contrast, venous, arterial, delay, or None."""
    text = _text(value)
    if text is None:
        return None
    return _PHASES.get(text.lower().replace("phase", "").strip())


def normalise_sex(value: str | None) -> str | None:
    """'M', 'F' or None (case-insensitive, whitespace trimmed)."""
    text = (_text(value) or "").upper()
    if text in ("M", "MALE"):
        return "M"
    if text in ("F", "FEMALE"):
        return "F"
    return None


def normalise_manufacturer(value: str | None) -> str | None:
    """Canonical scanner maker ('Siemens', 'GE', ...), or the trimmed text when the maker is unknown."""
    text = _text(value)
    if text is None:
        return None
    lowered = text.lower()
    found = {name for pattern, name in _MAKERS if pattern.search(lowered)}
    if len(found) == 1:
        return found.pop()
    return text


def _age(value: str | None) -> int | None:
    """Age in whole years from '63', '63.0', ' 63 ', '063Y', '89+'; None when blank or implausible."""
    text = _text(value)
    if text is None:
        return None
    match = re.fullmatch(r"(\d{1,3})\s*(?:[yY]|\+)", text)
    number = float(match.group(1)) if match else _number(text)
    if number is None or number < 0 or number > 130:
        return None
    return int(number)


def _tumor(value: str | None) -> bool | None:
    """Tumour flag from '1'/'0' (also '1.0', yes/no, true/false); None when blank or unknown."""
    text = (_text(value) or "").lower()
    if text in ("yes", "y", "true", "t"):
        return True
    if text in ("no", "n", "false", "f"):
        return False
    number = _number(text)
    if number == 1:
        return True
    if number == 0:
        return False
    return None


def normalise_metadata(raw: Mapping[str, Any]) -> NormalisedMetadata:
    """Normalise one metadata row (column names matched case- and whitespace-insensitively)."""
    cols: dict[str, str] = {}
    for name, value in raw.items():
        cols[_key(name)] = "" if value is None else _cell_text(value)

    def get(*names: str) -> str | None:
        for name in names:
            if name in cols:
                return cols[name]
        return None

    spacing = _triple(get("spacing"))
    if spacing is not None and not all(v > 0 for v in spacing):
        spacing = None
    shape_f = _triple(get("shape"))
    shape: tuple[int, int, int] | None = None
    if shape_f is not None and all(v.is_integer() and v >= 1 for v in shape_f):
        shape = (int(shape_f[0]), int(shape_f[1]), int(shape_f[2]))
    thickness = _number(get("slice thickness", "slice thickness (mm)", "slicethickness"))
    lesions = _whole(get("number of pancreatic lesion instances", "lesion instances"))
    return NormalisedMetadata(
        site=_text(get("site")),
        site_detail=_text(get("site detail")),
        nationality=_text(get("site nationality", "nationality")),
        phase=normalise_phase(get("ct phase", "phase")),
        sex=normalise_sex(get("sex")),
        age=_age(get("age")),
        manufacturer=normalise_manufacturer(get("manufacturer")),
        manufacturer_model=_text(get("manufacturer model")),
        study_type=_text(get("study type")),
        study_year=_text(get("study year")),
        header_spacing=spacing,
        header_shape=shape,
        slice_thickness=thickness if thickness is not None and thickness > 0 else None,
        tumor=_tumor(get("tumor?", "tumor")),
        lesion_instances=lesions if lesions is not None and lesions >= 0 else None,
    )
