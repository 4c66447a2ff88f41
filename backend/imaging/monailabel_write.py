"""Writing MONAI Label label files: a combined .nii.gz map (lossy where structures overlap) and a 3D Slicer
.seg.nrrd whose segments keep overlaps (pynrrd, LPS space as Slicer writes it)."""

from __future__ import annotations

import io
import re
from collections.abc import Mapping, Sequence
from typing import Any

import nrrd
import numpy as np

from backend.core.errors import InvalidInput
from backend.imaging import nifti

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)


def write_combined_map(
    masks: Mapping[str, np.ndarray],
    indices: Mapping[str, int],
    affine: np.ndarray,
    *,
    compresslevel: int = 1,
    order: Sequence[str] | None = None,
) -> bytes:
    """A combined label map (.nii.gz, uint8 or uint16) where the structure painted last wins an overlap.

    `order` is the paint order (maskloop's default_paint_order names); else larger masks first, so a part
    (head/body/tail) stays visible inside its parent. Overlaps need a .seg.nrrd to survive.
    """
    shape = _common_shape(masks)
    top = max((int(indices[s]) for s in masks), default=0)
    dtype = np.dtype(np.uint8 if top <= 255 else np.uint16)
    labels = np.zeros(shape, dtype=dtype)
    if order is None:
        order = sorted(masks, key=lambda s: (-int(np.count_nonzero(masks[s])), int(indices[s])))
    for struct in [s for s in order if s in masks]:
        np.copyto(labels, dtype.type(indices[struct]), where=np.asarray(masks[struct], dtype=bool))
    return nifti.to_nifti_gz(labels, affine, compresslevel=compresslevel)


def _common_shape(masks: Mapping[str, np.ndarray]) -> tuple[int, int, int]:
    """The one 3D shape every mask shares."""
    shapes = {tuple(np.shape(m)) for m in masks.values()}
    if len(shapes) != 1:
        raise InvalidInput(f"masks must share one 3D shape, got {sorted(shapes)}")
    shape = shapes.pop()
    if len(shape) != 3:
        raise InvalidInput(f"masks must be 3D, got shape {shape}")
    return int(shape[0]), int(shape[1]), int(shape[2])


def _colour(value: Any) -> str:
    """A Slicer colour field ("r g b" in 0..1) from a hex string, 0..255 or 0..1 triple."""
    if isinstance(value, str) and re.fullmatch(r"#?[0-9a-fA-F]{6}", value.strip()):
        hexa = value.strip().lstrip("#")
        rgb = [int(hexa[i : i + 2], 16) / 255.0 for i in (0, 2, 4)]
    else:
        rgb = [float(v) for v in list(value)[:3]]
        if any(v > 1.0 for v in rgb):
            rgb = [v / 255.0 for v in rgb]
    return " ".join(f"{min(max(v, 0.0), 1.0):.6g}" for v in rgb)


def _extent(mask: np.ndarray) -> str:
    """Slicer's SegmentN_Extent: the inclusive voxel bounding box, or "0 -1 0 -1 0 -1" when empty."""
    parts: list[str] = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hit = np.flatnonzero(mask.any(axis=other))
        if hit.size == 0:
            return "0 -1 0 -1 0 -1"
        parts += [str(int(hit[0])), str(int(hit[-1]))]
    return " ".join(parts)


def write_seg_nrrd(
    masks: Mapping[str, np.ndarray],
    indices: Mapping[str, int],
    colours: Mapping[str, Any],
    affine: np.ndarray,
) -> bytes:
    """A 3D Slicer .seg.nrrd: one segment per structure, overlapping ones on separate layers (never flattened)."""
    shape = _common_shape(masks)
    order = sorted(masks, key=lambda s: int(indices[s]))
    top = max((int(indices[s]) for s in order), default=0)
    dtype = np.dtype(np.uint8 if top <= 255 else np.uint16)
    layers: list[np.ndarray] = []
    placed: list[tuple[str, int]] = []
    for struct in order:
        mask = np.asarray(masks[struct], dtype=bool)
        for i, layer in enumerate(layers):
            if not np.any(layer, where=mask):
                np.copyto(layer, dtype.type(indices[struct]), where=mask)
                placed.append((struct, i))
                break
        else:
            layer = np.zeros(shape, dtype=dtype)
            np.copyto(layer, dtype.type(indices[struct]), where=mask)
            layers.append(layer)
            placed.append((struct, len(layers) - 1))
    if not layers:
        layers.append(np.zeros(shape, dtype=dtype))
    lps = _LPS @ np.asarray(affine, dtype=np.float64)
    directions = lps[:3, :3].T  # one row per voxel axis
    header: dict[str, Any] = {
        "type": "unsigned char" if dtype == np.uint8 else "unsigned short",
        "space": "left-posterior-superior",
        "space origin": lps[:3, 3],
        "encoding": "gzip",
        "Segmentation_MasterRepresentation": "Binary labelmap",
        "Segmentation_ContainedRepresentationNames": "Binary labelmap|",
        "Segmentation_ReferenceImageExtentOffset": "0 0 0",
    }
    if len(layers) == 1:
        data = layers[0]
        header["kinds"] = ["domain", "domain", "domain"]
        header["space directions"] = directions
    else:
        data = np.stack(layers, axis=0)
        header["kinds"] = ["list", "domain", "domain", "domain"]
        header["space directions"] = np.vstack([np.full((1, 3), np.nan), directions])
    for n, (struct, layer_no) in enumerate(placed):
        header[f"Segment{n}_ID"] = struct
        header[f"Segment{n}_Name"] = struct
        header[f"Segment{n}_NameAutoGenerated"] = "0"
        header[f"Segment{n}_Color"] = _colour(colours.get(struct, (0.5, 0.5, 0.5)))
        header[f"Segment{n}_ColorAutoGenerated"] = "0"
        header[f"Segment{n}_LabelValue"] = str(int(indices[struct]))
        header[f"Segment{n}_Layer"] = str(layer_no)
        header[f"Segment{n}_Extent"] = _extent(np.asarray(masks[struct], dtype=bool))
        header[f"Segment{n}_Tags"] = "|"
    buf = io.BytesIO()
    nrrd.write(buf, data, header, compression_level=6, index_order="F")
    return buf.getvalue()
