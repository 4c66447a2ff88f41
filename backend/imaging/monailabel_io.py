"""Reading MONAI Label label files: an uploaded combined map (.nii.gz) or 3D Slicer .seg.nrrd to per-structure
masks (writing them is monailabel_write). Pure (numpy, nibabel, pynrrd); decoding is bounded (header checked
before any voxel is inflated); a grid other than the scan's is refused naming the difference; NRRD geometry (LPS,
Slicer's convention) becomes RAS+.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import nrrd
import numpy as np

from backend.core import decode_limits
from backend.core.errors import InvalidInput
from backend.imaging import bounded, nifti

NRRD_MAGIC = b"NRRD000"
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])  # RAS <-> LPS (its own inverse)
_MAX_NRRD_HEADER = 1 << 20
_ATOL_MM = 1e-3
_SPACES_LPS = {"left-posterior-superior", "lps"}
_SPACES_RAS = {"right-anterior-superior", "ras"}
_NRRD_TYPES: dict[str, str] = {
    "uchar": "u1", "unsigned char": "u1", "uint8": "u1", "uint8_t": "u1",
    "signed char": "i1", "int8": "i1", "int8_t": "i1",
    "short": "i2", "short int": "i2", "signed short": "i2", "signed short int": "i2", "int16": "i2", "int16_t": "i2",
    "ushort": "u2", "unsigned short": "u2", "unsigned short int": "u2", "uint16": "u2", "uint16_t": "u2",
    "int": "i4", "signed int": "i4", "int32": "i4", "int32_t": "i4",
    "uint": "u4", "unsigned int": "u4", "uint32": "u4", "uint32_t": "u4",
}  # fmt: skip
_SEGMENT_FIELD = re.compile(r"^Segment(\d+)_(\w+)$")


def base_name(filename: str) -> str:
    """The file's base name: clients send full local paths (POSIX or Windows)."""
    return re.split(r"[\\/]", filename or "")[-1] or "label"


def label_format(filename: str, data: bytes) -> str:
    """The format of an upload ("nrrd" or "nifti"), from its magic bytes, else its suffix; InvalidInput otherwise."""
    name = base_name(filename)
    head = bytes(data[:8])
    if head.startswith(NRRD_MAGIC):
        return "nrrd"
    lower = name.lower()
    if head[:2] == bounded.GZIP_MAGIC or lower.endswith((".nii", ".nii.gz")):
        return "nifti"
    if lower.endswith(".nrrd"):
        raise InvalidInput(f"{name}: not an NRRD file (no NRRD magic)", file=name)
    raise InvalidInput(
        f"{name}: unsupported label file; send a .nii.gz combined label map or a 3D Slicer .seg.nrrd", file=name
    )


def read_label_upload(
    filename: str,
    data: bytes,
    *,
    shape: Sequence[int],
    affine: np.ndarray,
    label_info: Sequence[tuple[str, int]] | None,
    schema_indices: Mapping[str, int],
    parents: Mapping[str, str],
) -> dict[str, np.ndarray]:
    """Bool masks per structure name from an uploaded .nii.gz combined map or .seg.nrrd, on the scan's grid."""
    name = base_name(filename)
    if not isinstance(data, bytes | bytearray | memoryview) or len(data) == 0:
        raise InvalidInput(f"{name}: the label file is empty", file=name)
    expected = nifti.Geometry.from_affine(tuple(int(s) for s in shape), np.asarray(affine, dtype=np.float64))
    indices = _index_names(label_info, schema_indices, name)
    if label_format(name, data) == "nifti":
        labels = nifti.load_label_map_bytes(bytes(data), expected, name)
        masks = _split_combined(labels, indices, name)
    else:
        masks = _read_seg_nrrd(bytes(data), expected, name, indices, schema_indices)
    return apply_parents(masks, parents)


def read_combined_upload(
    filename: str,
    data: bytes,
    *,
    shape: Sequence[int],
    affine: np.ndarray,
    label_info: Sequence[tuple[str, int]] | None,
    schema_indices: Mapping[str, int],
) -> tuple[np.ndarray, dict[int, str]]:
    """A combined .nii.gz map on the scan's grid, as decoded, and the structure each value names."""
    name = base_name(filename)
    expected = nifti.Geometry.from_affine(tuple(int(s) for s in shape), np.asarray(affine, dtype=np.float64))
    indices = _index_names(label_info, schema_indices, name)
    return nifti.load_label_map_bytes(bytes(data), expected, name), indices


def _index_names(
    label_info: Sequence[tuple[str, int]] | None, schema_indices: Mapping[str, int], name: str
) -> dict[int, str]:
    """Label value -> structure name, from the client's label_info (else the schema's own indices)."""
    if label_info is None:
        return {int(idx): struct for struct, idx in schema_indices.items()}
    lower = {s.lower(): s for s in schema_indices}
    out: dict[int, str] = {}
    unknown: list[str] = []
    for given, raw_idx in label_info:
        try:
            idx = int(raw_idx)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"{name}: label_info index {raw_idx!r} of {given!r} is not an integer") from exc
        if idx == 0 or str(given).lower() == "background":
            continue
        struct = given if given in schema_indices else lower.get(given.lower(), "")
        if not struct:
            unknown.append(given)
            continue
        if int(idx) <= 0:
            raise InvalidInput(f"{name}: label_info gives {struct!r} the index {idx}; indices start at 1", file=name)
        if int(idx) in out and out[int(idx)] != struct:
            raise InvalidInput(
                f"{name}: label_info gives index {idx} to both {out[int(idx)]!r} and {struct!r}", file=name
            )
        out[int(idx)] = struct
    if unknown:
        raise InvalidInput(
            f"{name}: label_info names structure(s) the project's schema lacks: {', '.join(sorted(unknown))} "
            f"(known: {', '.join(schema_indices)})",
            file=name,
            unknown=sorted(unknown),
        )
    return out


def _split_combined(
    labels: np.ndarray, indices: Mapping[int, str], name: str, *, strict: bool = True
) -> dict[str, np.ndarray]:
    """Bool masks per structure of a combined label map; values that name no structure are refused.

    Work is proportional to the labelled voxels: one pass finds them, a sort groups them by value, and each mask
    is a zeroed array (pages untouched by a structure cost no memory) with only its voxels set.
    """
    flat = labels.reshape(-1, order="F")
    where = np.flatnonzero(flat)
    values = flat[where]
    order = np.argsort(values, kind="stable")
    values, where = values[order], where[order]
    cuts = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate(([0], cuts)) if values.size else np.array([], dtype=np.int64)
    ends = np.concatenate((cuts, [values.size])) if values.size else np.array([], dtype=np.int64)
    runs = {int(values[a]): (int(a), int(b)) for a, b in zip(starts, ends, strict=True)}
    stray = sorted(v for v in runs if v not in indices)
    if stray and strict:
        raise InvalidInput(
            f"{name}: label value(s) {', '.join(map(str, stray[:10]))} name no structure "
            f"(label_info or the schema maps {sorted(indices)})",
            file=name,
            values=stray[:10],
        )
    out: dict[str, np.ndarray] = {}
    for idx, struct in indices.items():
        if struct not in out:
            out[struct] = np.zeros(labels.shape, dtype=bool, order="F")
        if idx in runs:
            a, b = runs[idx]
            out[struct].reshape(-1, order="F")[where[a:b]] = True
    return out


def apply_parents(masks: dict[str, np.ndarray], parents: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Let every voxel of a part also count for its `inside` parent (transitively), where the parent is present."""
    for part in list(masks):
        seen = {part}
        parent = parents.get(part)
        while parent is not None and parent not in seen:
            if parent in masks:
                masks[parent] = masks[parent] | masks[part]
            seen.add(parent)
            parent = parents.get(parent)
    return masks


def _split_header(data: bytes, name: str) -> tuple[list[str], int]:
    """The NRRD header lines and the offset of the data after the blank line that ends it."""
    end = data.find(b"\n\n", 0, _MAX_NRRD_HEADER)
    skip = 2
    crlf = data.find(b"\r\n\r\n", 0, _MAX_NRRD_HEADER)
    if crlf != -1 and (end == -1 or crlf < end):
        end, skip = crlf, 4
    if end == -1:
        raise InvalidInput(f"{name}: no end of the NRRD header (a blank line) within 1 MiB", file=name)
    return [line + "\n" for line in data[:end].decode("latin-1").splitlines()], end + skip


def _nrrd_header(data: bytes, name: str) -> tuple[dict[str, Any], int]:
    """Parse and check an NRRD header (attached data, raw or gzip encoding); the header and data offset."""
    lines, offset = _split_header(data, name)
    try:
        header = dict(nrrd.read_header(lines))
    except Exception as exc:  # pynrrd raises NRRDError, ValueError, KeyError, ...
        raise InvalidInput(f"{name}: invalid NRRD header ({exc})", file=name) from exc
    if "data file" in header or "datafile" in header:
        raise InvalidInput(f"{name}: a detached NRRD header; send the data in the same file (.seg.nrrd)", file=name)
    if int(header.get("line skip", 0) or 0) or int(header.get("byte skip", 0) or 0):
        raise InvalidInput(f"{name}: NRRD 'line skip'/'byte skip' are not supported", file=name)
    return header, offset


def _nrrd_dtype(header: Mapping[str, Any], name: str) -> np.dtype[Any]:
    """The numpy type of an NRRD header's integer voxel type."""
    code = _NRRD_TYPES.get(str(header.get("type", "")).strip().lower())
    if code is None:
        raise InvalidInput(f"{name}: unsupported NRRD voxel type {header.get('type')!r} (need integers)", file=name)
    order = ">" if str(header.get("endian", "little")).lower() == "big" else "<"
    return np.dtype(order + code if code[1] != "1" else code)


def _nrrd_affine(header: Mapping[str, Any], name: str, spatial: list[int]) -> np.ndarray:
    """The RAS+ affine of an NRRD header's spatial axes (from its LPS or RAS space directions and origin)."""
    space = str(header.get("space", "")).strip().lower()
    if space not in _SPACES_LPS | _SPACES_RAS:
        raise InvalidInput(
            f"{name}: NRRD space {header.get('space')!r} is not supported (need left-posterior-superior or "
            "right-anterior-superior)",
            file=name,
        )
    try:
        dirs = np.asarray(header["space directions"], dtype=np.float64)
        origin = np.asarray(header.get("space origin", [0.0, 0.0, 0.0]), dtype=np.float64).reshape(3)
        cols = dirs[spatial].reshape(3, 3)
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise InvalidInput(f"{name}: NRRD header lacks usable 'space directions'/'space origin'", file=name) from exc
    aff = np.eye(4)
    aff[:3, :3] = cols.T
    aff[:3, 3] = origin
    if not np.all(np.isfinite(aff)):
        raise InvalidInput(f"{name}: NRRD space directions or origin are not finite", file=name)
    return _LPS @ aff if space in _SPACES_LPS else aff


def _placement(
    got_shape: tuple[int, int, int], got_affine: np.ndarray, expected: nifti.Geometry, name: str
) -> tuple[int, int, int]:
    """Where a (possibly cropped, as Slicer may save) grid lies in the scan's grid; refuse any other grid."""
    if not np.allclose(got_affine[:3, :3], expected.affine[:3, :3], rtol=0.0, atol=_ATOL_MM):
        diff = float(np.max(np.abs(got_affine[:3, :3] - expected.affine[:3, :3])))
        got_o, exp_o = nifti.orientation_code(got_affine), expected.orientation
        hint = f"; label orientation {got_o}, scan orientation {exp_o}" if got_o != exp_o else ""
        raise InvalidInput(
            f"{name}: label affine (voxel axes) differs from the scan affine by up to {diff:.4g} mm{hint}",
            file=name,
            label_affine=got_affine.tolist(),
            scan_affine=expected.affine.tolist(),
        )
    voxel = np.linalg.solve(expected.affine, np.append(got_affine[:3, 3], 1.0))[:3]
    offset = np.rint(voxel)
    shift_mm = float(np.max(np.abs(expected.affine[:3, :3] @ (voxel - offset))))
    if shift_mm > _ATOL_MM:
        raise InvalidInput(
            f"{name}: label origin is off the scan's voxel grid by {shift_mm:.4g} mm (label affine differs from "
            "the scan affine)",
            file=name,
            label_affine=got_affine.tolist(),
            scan_affine=expected.affine.tolist(),
        )
    start = tuple(int(v) for v in offset)
    if any(s < 0 or s + n > e for s, n, e in zip(start, got_shape, expected.shape, strict=True)):
        raise InvalidInput(
            f"{name}: label shape {got_shape} at voxel offset {start} does not fit the scan shape {expected.shape}",
            file=name,
            label_shape=list(got_shape),
            scan_shape=list(expected.shape),
            offset=list(start),
        )
    return start[0], start[1], start[2]


def _segments(header: Mapping[str, Any]) -> dict[int, dict[str, str]]:
    """Slicer's per-segment fields (SegmentN_Name, _LabelValue, _Layer, ...) grouped by N."""
    out: dict[int, dict[str, str]] = {}
    for key, value in header.items():
        match = _SEGMENT_FIELD.match(str(key))
        if match:
            out.setdefault(int(match.group(1)), {})[match.group(2)] = str(value).strip()
    return out


def _read_seg_nrrd(
    data: bytes,
    expected: nifti.Geometry,
    name: str,
    indices: Mapping[int, str],
    schema_indices: Mapping[str, int],
) -> dict[str, np.ndarray]:
    """Masks per structure of a .seg.nrrd (layered, possibly overlapping segments) or a plain NRRD label map."""
    header, offset = _nrrd_header(data, name)
    sizes = [int(s) for s in np.atleast_1d(header.get("sizes", []))]
    if len(sizes) not in (3, 4) or any(s < 1 for s in sizes):
        raise InvalidInput(f"{name}: expected a 3D label map or 4D layered segmentation, got sizes {sizes}", file=name)
    kinds = [str(k).lower() for k in header.get("kinds", ["domain"] * len(sizes))]
    if len(sizes) == 4:
        nonspatial = [i for i, k in enumerate(kinds) if k not in ("domain", "space")]
        layer_axis = nonspatial[0] if len(nonspatial) == 1 else 0
    else:
        layer_axis = -1
    spatial = [i for i in range(len(sizes)) if i != layer_axis]
    shape3 = (sizes[spatial[0]], sizes[spatial[1]], sizes[spatial[2]])
    got_affine = _nrrd_affine(header, name, spatial)
    start = _placement(shape3, got_affine, expected, name)

    dtype = _nrrd_dtype(header, name)
    count = math.prod(sizes)
    bounded.check_declared(name, count * dtype.itemsize, decode_limits.current().max_decoded_bytes, f"{sizes} voxels")
    encoding = str(header.get("encoding", "raw")).lower()
    body = memoryview(data)[offset:]
    if encoding in ("gzip", "gz"):
        if body[:2].tobytes() != bounded.GZIP_MAGIC:
            raise InvalidInput(f"{name}: NRRD encoding is gzip but the data is not gzip", file=name)
        stream: bounded.ByteStream = bounded.GzipStream(body, name)
    elif encoding == "raw":
        stream = bounded.PlainStream(body, name)
    else:
        raise InvalidInput(f"{name}: NRRD encoding {encoding!r} is not supported (use gzip or raw)", file=name)
    with decode_limits.heavy_decode(name):
        flat = bounded.read_array(stream, dtype, count)
    if not dtype.isnative:
        flat = flat.byteswap().view(dtype.newbyteorder("="))
    values = flat.reshape(sizes, order="F")
    values = np.moveaxis(values, layer_axis, 0) if layer_axis >= 0 else values[np.newaxis]
    if int(values.min(initial=0)) < 0:
        raise InvalidInput(f"{name}: negative label value {int(values.min())}", file=name)

    segments = _segments(header)
    if not segments:
        if values.shape[0] != 1:
            raise InvalidInput(f"{name}: a layered NRRD without Slicer segment fields (SegmentN_Name)", file=name)
        return _pad(_split_combined(values[0], indices, name), start, expected.shape)
    return _pad(_seg_masks(values, segments, name, schema_indices), start, expected.shape)


def _seg_masks(
    layers: np.ndarray, segments: Mapping[int, Mapping[str, str]], name: str, schema_indices: Mapping[str, int]
) -> dict[str, np.ndarray]:
    """One mask per Slicer segment (matched to structures by name), read from its layer and label value."""
    lower = {s.lower(): s for s in schema_indices}
    per_layer: dict[int, dict[int, str]] = {}
    unknown: list[str] = []
    for n in sorted(segments):
        fields = segments[n]
        seg_name = fields.get("Name") or fields.get("ID") or f"Segment_{n}"
        struct = seg_name if seg_name in schema_indices else lower.get(seg_name.lower())
        if struct is None:
            unknown.append(seg_name)
            continue
        try:
            layer = int(fields.get("Layer", "0" if layers.shape[0] == 1 else str(n)))
            value = int(fields.get("LabelValue", "1"))
        except ValueError as exc:
            raise InvalidInput(
                f"{name}: segment {seg_name!r} has a non-integer layer or label value", file=name
            ) from exc
        if not 0 <= layer < layers.shape[0] or value <= 0:
            raise InvalidInput(
                f"{name}: segment {seg_name!r} points at layer {layer}, value {value}; the file holds "
                f"{layers.shape[0]} layer(s)",
                file=name,
            )
        if per_layer.setdefault(layer, {}).setdefault(value, struct) != struct:
            raise InvalidInput(f"{name}: two segments share layer {layer}, label value {value}", file=name)
    if unknown:
        raise InvalidInput(
            f"{name}: segment(s) name structure(s) the project's schema lacks: {', '.join(unknown)} "
            f"(known: {', '.join(schema_indices)})",
            file=name,
            unknown=unknown,
        )
    out: dict[str, np.ndarray] = {}
    for layer, values in per_layer.items():
        for struct, mask in _split_combined(layers[layer], values, name, strict=False).items():
            out[struct] = out[struct] | mask if struct in out else mask
    return out


def _pad(
    masks: dict[str, np.ndarray], start: tuple[int, int, int], shape: tuple[int, int, int]
) -> dict[str, np.ndarray]:
    """Place masks of a cropped grid into the scan's full grid (a no-op when they already cover it)."""
    for struct, mask in masks.items():
        if mask.shape != shape:
            masks[struct] = np.zeros(shape, dtype=bool)
            box = tuple(slice(a, a + n) for a, n in zip(start, mask.shape, strict=True))
            masks[struct][box] = mask
    return masks
