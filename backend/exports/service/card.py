"""The dataset card of an export: README.md (schema, counts, version per scan, paint order), cases.csv, SHA256SUMS.

The card is written from the manifest's rows, so its counts are the rows' counts: `cases.csv` holds one row per
exported scan (case, scan split, folder it went to, site, phase, label version, missing structures), the README's
tables count those rows, and `SHA256SUMS` (`sha256sum -c SHA256SUMS` format) lists every other file of the export.
"""

from __future__ import annotations

import csv
import hashlib
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

README_NAME = "README.md"
CASES_NAME = "cases.csv"
CHECKSUMS_NAME = "SHA256SUMS"
CASE_COLUMNS = (
    "case_id",
    "scan_id",
    "split",
    "folder",
    "site",
    "phase",
    "label_version_id",
    "version_kind",
    "version_author",
    "missing_structures",
    "ignore_label_applied",
)
# Up to this many cases the README lists every case; beyond, it points at cases.csv.
README_CASE_LIMIT = 500

_FORMAT_TITLES = {
    "pants": "PanTS layout (ImageTr|ImageTe/<case>/ct.nii.gz, LabelTr|LabelTe/<case>/segmentations/<structure>.nii.gz)",
    "nnunet": "nnU-Net v2 raw dataset (imagesTr/labelsTr, test cases in imagesTs/labelsTs, dataset.json)",
    "msd": "Medical Segmentation Decathlon (imagesTr/labelsTr, test cases in imagesTs/labelsTs, dataset.json)",
    "dicom-seg": "DICOM (<case>/CT/*.dcm series and <case>/SEG/seg.dcm, one segment per structure)",
}
_MISSING_HANDLING = {
    "pants": "the structure has no mask file in that case (as in PanTS); it is unknown, not empty.",
    "nnunet": "every voxel of that case not labelled with another structure is `ignore` (declared in dataset.json), "
    "because where an organ is unknown, background is unknown too.",
    "nnunet-no-ignore": "painted as background (the ignore label was turned off for this export): "
    "exclude these cases or treat their background as unknown.",
    "msd": "painted as background (the Decathlon format has no ignore label): exclude these cases or treat their "
    "background as unknown.",
    "dicom-seg": "the SEG has no segment for that structure.",
}


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(v) for v in row) + " |" for row in rows]
    return lines


def case_rows(manifest: Mapping[str, Any]) -> list[dict[str, Any]]:
    """One row per exported scan, in CASE_COLUMNS (missing structures joined with ';')."""
    rows = []
    for scan in manifest["scans"]:
        row = {column: scan.get(column) for column in CASE_COLUMNS}
        row["missing_structures"] = ";".join(scan.get("missing_structures", []))
        rows.append(row)
    return rows


def write_cases_csv(root: Path, rows: Sequence[Mapping[str, Any]]) -> Path:
    """cases.csv: one row per exported scan."""
    path = root / CASES_NAME
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(CASE_COLUMNS))
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in CASE_COLUMNS})
    return path


def _counts(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    folders = sorted({str(r["folder"]) for r in rows}, key=lambda f: (f != "train", f))
    by_split = Counter((str(r["split"] or "(none)"), str(r["folder"])) for r in rows)
    lines = ["## Counts", "", f"{len(rows)} cases exported.", ""]
    lines += _table(
        ["scan split", "exported to", "cases"], [(split, folder, n) for (split, folder), n in sorted(by_split.items())]
    )
    by_folder = Counter(str(r["folder"]) for r in rows)
    lines += ["", "Per folder: " + ", ".join(f"{folder} {by_folder[folder]}" for folder in folders) + ".", ""]
    lines += ["### Site and phase", ""]
    groups = Counter((str(r["site"] or "unknown"), str(r["phase"] or "unknown"), str(r["folder"])) for r in rows)
    keys = sorted({(site, phase) for site, phase, _ in groups})
    lines += _table(
        ["site", "phase", *folders, "total"],
        [
            (site, phase, *(groups[(site, phase, f)] for f in folders), sum(groups[(site, phase, f)] for f in folders))
            for site, phase in keys
        ],
    )
    return [*lines, ""]


def _schema(manifest: Mapping[str, Any]) -> list[str]:
    values = manifest.get("label_values") or {}
    value_header = "value in label maps" if manifest["format"] in ("nnunet", "msd") else "schema label value"
    rows = [
        (values.get(s["name"], s["label_value"]), s["name"], s["group"], s["inside"] or "", s["color"])
        for s in manifest["structures"]
    ]
    lines = ["## Label schema", ""]
    if manifest["format"] == "nnunet" and manifest.get("nnunet_labels") == "regions":
        lines += [
            "Region-based labels: each class is one combination of overlapping structures; dataset.json maps every "
            "structure to the list of classes that contain it (`regions_class_order` gives the painting order).",
            "",
        ]
        value_header = "schema label value"
        rows = [
            (s["label_value"], s["name"], s["group"], s["inside"] or "", s["color"]) for s in manifest["structures"]
        ]
    lines += _table([value_header, "structure", "group", "inside", "colour"], rows)
    ignore = manifest.get("ignore_label")
    if ignore:
        lines += ["", f"`{ignore['name']}` = {ignore['value']} (the highest value): voxels whose label is unknown."]
    return [*lines, ""]


def _paint_order(manifest: Mapping[str, Any]) -> list[str]:
    order = manifest["paint_order"]
    lines = ["## Overlaps and paint order", "", manifest["paint_order_note"] + ".", ""]
    lines += [f"{i}. {name}" for i, name in enumerate(order, start=1)]
    lines += [
        "",
        "Structures are painted in this order and a later one overwrites an earlier one where they overlap (each "
        "structure after the one it lies inside, so sub-structures stay visible). Per-structure masks (PanTS), "
        "DICOM SEG segments and nnU-Net region labels keep every overlap.",
        "",
    ]
    return lines


def _missing(manifest: Mapping[str, Any], rows: Sequence[Mapping[str, Any]]) -> list[str]:
    fmt = manifest["format"]
    key = "nnunet-no-ignore" if fmt == "nnunet" and not manifest.get("ignore_label") else fmt
    affected = [r for r in rows if r["missing_structures"]]
    lines = ["## Missing structures", ""]
    if not affected:
        return [*lines, "Every exported case holds every exported structure.", ""]
    count = f"{len(affected)} case lacks" if len(affected) == 1 else f"{len(affected)} cases lack"
    lines += [f"{count} a structure (unknown, not empty). In this export {_MISSING_HANDLING[key]}", ""]
    lines += _table(
        ["case", "folder", "missing structures"],
        [(r["case_id"], r["folder"], r["missing_structures"]) for r in affected],
    )
    return [*lines, ""]


def _skipped(manifest: Mapping[str, Any]) -> list[str]:
    skipped = manifest["skipped"]
    lines = ["## Skipped scans", ""]
    if not skipped:
        return [*lines, "None: every selected scan was exported.", ""]
    lines += [f"{len(skipped)} selected scans are not in this export:", ""]
    lines += _table(["scan id", "case", "reason"], [(s["scan_id"], s["case_id"] or "", s["reason"]) for s in skipped])
    return [*lines, ""]


def _cases(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    lines = ["## Cases and label versions", ""]
    if len(rows) > README_CASE_LIMIT:
        return [*lines, f"{len(rows)} cases: see {CASES_NAME} (one row per case, the label version id of each).", ""]
    lines += [f"The same rows are in {CASES_NAME}.", ""]
    lines += _table(
        ["case", "split", "folder", "site", "phase", "label version", "kind", "author"],
        [
            (
                r["case_id"],
                r["split"],
                r["folder"],
                r["site"],
                r["phase"],
                r["label_version_id"],
                r["version_kind"],
                r["version_author"],
            )
            for r in rows
        ],
    )
    return [*lines, ""]


def write_card(root: Path, manifest: Mapping[str, Any], title: str) -> list[Path]:
    """Write cases.csv and README.md (the dataset card) from a manifest."""
    rows = case_rows(manifest)
    csv_path = write_cases_csv(root, rows)
    version = manifest["version"]
    version_text = {
        "approved": "the last approved version of each scan (scans never approved are skipped, below)",
        "head": "the newest (head) version of each scan, reviewed or not",
    }.get(version, f"the newest prediction of the promoted version of model {version.removeprefix('model:')}")
    test_text = {
        "separate": "scans of the test split are only in the test folders",
        "exclude": "scans of the test split are left out",
        "merge": "scans of the test split were put with the training cases on request (do not report test scores)",
    }[manifest["test_split"]]
    lines = [
        f"# {title}",
        "",
        f"Exported by maskloop {manifest['maskloop_version']} from project `{manifest['project']}` at "
        f"{manifest['created_at']}.",
        "",
        f"- Format: {_FORMAT_TITLES[manifest['format']]}.",
        f"- Label versions: {version_text} (`{version}`); the id of each is listed per case.",
        f"- Splits: {test_text}.",
        f"- Files: {CASES_NAME} (one row per case), manifest.json (everything, machine-readable), "
        f"{CHECKSUMS_NAME} (SHA-256 of every other file; check with `sha256sum -c {CHECKSUMS_NAME}`).",
        "",
    ]
    lines += _counts(rows) + _schema(manifest) + _paint_order(manifest) + _missing(manifest, rows)
    lines += _skipped(manifest) + _cases(rows)
    readme = root / README_NAME
    readme.write_text("\n".join(lines), encoding="utf-8")
    return [csv_path, readme]


def write_checksums(root: Path) -> Path:
    """SHA256SUMS: `<sha256>  <relative path>` of every file under root (itself excluded), sorted by path."""
    target = root / CHECKSUMS_NAME
    lines = []
    for path in sorted(p for p in root.rglob("*") if p.is_file() and p != target):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        lines.append(f"{digest.hexdigest()}  {path.relative_to(root).as_posix()}")
    target.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return target
