"""DICOM SEG benchmark: standard codes and validity of an exported SEG and its CT series.

Set-up: a phantom CT of 128x128x48 voxels (1.2x1.2x2.5 mm) with a mask for every one of the 28 PanTS structures
(the phantom's drawn organs, small boxes for the structures it does not draw), the PanTS label schema as a project
stores it (`projects.service.load_schema_file`: colours and the codes defaulted from `backend.imaging.dicom_codes`).
The CT series and the SEG are written exactly as the `dicom-seg` export writes them (`dicom_seg.ct_series`,
`dicom_seg.segmentation`) and read back with highdicom.

Figures (results.json keys):

* `seg_standard_coded_fraction` — PanTS structures of the exported SEG whose segmented property type is a SNOMED CT
  code (goal 1.0).
* `seg_dciodvfy_errors` — dicom3tools' `dciodvfy` errors over the SEG and every slice of its CT series (goal 0;
  NaN when dciodvfy is not installed).
* `seg_write_s` — seconds to write the CT series and build and encode the SEG, for context.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path

import numpy as np

from bench import NO_GOAL, Row

SHAPE = (128, 128, 48)
SPACING = (1.2, 1.2, 2.5)


def _log(message: str) -> None:
    print(f"[dicom_seg] {message}", flush=True)


def run() -> list[Row]:
    """Export a 28-structure SEG and its CT, count SNOMED CT coded segments and dciodvfy errors."""
    import highdicom as hd

    from backend.imaging import dciodvfy, dicom_seg
    from backend.imaging.phantom import generate_phantom
    from backend.projects import service as projects

    _, structures = projects.load_schema_file()
    phantom = generate_phantom(SHAPE, SPACING, seed=11, duct=True)
    masks: dict[str, np.ndarray] = {}
    for index, spec in enumerate(structures):
        mask = phantom.masks.get(spec.name)
        if mask is None:
            mask = np.zeros(SHAPE, dtype=bool)
            x, y = 8 + 10 * (index % 10), 8 + 10 * (index // 10)
            mask[x : x + 6, y : y + 6, 10 + index % 20 : 16 + index % 20] = True
        masks[spec.name] = mask
    with tempfile.TemporaryDirectory(prefix="maskloop-bench-seg-") as tmp:
        folder = Path(tmp)
        started = time.perf_counter()
        ids = dicom_seg.SeriesIds.derive("bench-case", "bench")
        series = dicom_seg.ct_series(phantom.volume, phantom.affine, ids, description="bench-case CT")
        ct_files = dicom_seg.write_datasets(series, folder / "CT")
        segments = [
            (dicom_seg.SegmentSpec(s.name, s.color, s.group == "lesion", s.code), masks[s.name]) for s in structures
        ]
        seg = dicom_seg.segmentation(
            series,
            segments,
            manual=True,
            algorithm_name="",
            algorithm_version="",
            series_uid=dicom_seg.uid("bench", "seg-series"),
            sop_uid=dicom_seg.uid("bench", "seg"),
        )
        seg_path = folder / "SEG" / "seg.dcm"
        seg_path.parent.mkdir(parents=True)
        seg_path.write_bytes(dicom_seg.seg_to_bytes(seg))
        write_s = time.perf_counter() - started

        parsed = hd.seg.segread(seg_path)
        names = {s.name for s in structures}
        coded = 0
        for number in parsed.segment_numbers:
            description = parsed.get_segment_description(number)
            if description.segment_label in names and description.segmented_property_type.scheme_designator == "SCT":
                coded += 1
        fraction = coded / len(names)
        _log(f"{coded} of {len(names)} PanTS structures carry SNOMED CT codes; written in {write_s:.2f} s")

        errors = math.nan
        if dciodvfy.available():
            found = dciodvfy.errors(seg_path)
            for path in ct_files:
                found += [f"{path.name}: {line}" for line in dciodvfy.errors(path)]
            errors = float(len(found))
            _log(f"dciodvfy: {len(found)} errors over the SEG and {len(ct_files)} CT slices")
            for line in found[:10]:
                _log(f"  {line}")
        else:
            _log("dciodvfy is not installed (apt-get install -y dicom3tools): seg_dciodvfy_errors is n/a")
    return [
        Row(
            "seg_standard_coded_fraction",
            "PanTS structures of an exported SEG with SNOMED CT codes",
            fraction,
            "fraction",
            "= 1.0",
            fraction == 1.0,
        ),
        Row(
            "seg_dciodvfy_errors",
            "dciodvfy errors over the exported SEG and its CT",
            errors,
            "errors",
            "= 0",
            None if math.isnan(errors) else errors == 0,
        ),
        Row("seg_write_s", "write a 28-structure SEG and its 48-slice CT", write_s, "s", NO_GOAL),
    ]
