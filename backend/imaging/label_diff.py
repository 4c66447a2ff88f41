"""What a re-uploaded combined label map changed, per structure, against the map the client was given.

A MONAI Label client (3D Slicer, OHIF) edits the combined map it received and sends all of it back. Re-deriving
every structure's whole mask from it would rewrite 28 structures for one brush stroke, and the map is lossy
(overlaps are hidden under the structure painted last). So only the voxels whose value differs count: a structure
changes at a voxel when its membership there (its own value, or a part's value that lies `inside` it) differs
between the two maps. Everything else keeps the base version's exact masks, hidden overlaps included.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np

from backend.core.errors import InvalidInput


@dataclass(frozen=True)
class StructureChange:
    """The voxels of one structure that changed: a box (origin, size), their indices inside it, their new value."""

    origin: tuple[int, int, int]
    size: tuple[int, int, int]
    local: tuple[np.ndarray, np.ndarray, np.ndarray]
    value: np.ndarray


def families(values: Mapping[str, int], parents: Mapping[str, str]) -> dict[str, frozenset[int]]:
    """Per structure, the label values that count as it: its own and those of every part inside it (transitively)."""
    out = {name: {int(value)} for name, value in values.items()}
    for part, value in values.items():
        seen = {part}
        parent = parents.get(part)
        while parent is not None and parent not in seen:
            if parent in out:
                out[parent].add(int(value))
            seen.add(parent)
            parent = parents.get(parent)
    return {name: frozenset(members) for name, members in out.items()}


def changed_structures(
    uploaded: np.ndarray,
    given: np.ndarray,
    families_by_name: Mapping[str, frozenset[int]],
    *,
    allowed: frozenset[int],
    name: str,
) -> dict[str, StructureChange]:
    """Per structure of `families_by_name`, the voxels where the uploaded map changed its membership.

    Both maps hold schema label values on the scan's grid; a changed voxel whose new value is not `allowed` (the
    values of the structures the client named) is refused; an unchanged one may carry a structure the client did
    not name, and it is kept.
    """
    if uploaded.shape != given.shape:
        raise InvalidInput(f"{name}: label map has shape {list(uploaded.shape)}, the scan has {list(given.shape)}")
    # Same memory layout for both, so the comparison and the index search are single linear passes.
    layout: Literal["C", "F"] = "F" if uploaded.flags.f_contiguous and not uploaded.flags.c_contiguous else "C"
    given = np.asarray(given, order=layout)
    flat = np.flatnonzero((uploaded != given).ravel(order="K"))
    if flat.size == 0:
        return {}
    old = given.ravel(order="K")[flat].astype(np.int64)
    new = uploaded.ravel(order="K")[flat].astype(np.int64)
    stray = sorted({int(v) for v in np.unique(new)} - allowed - {0})
    if stray:
        raise InvalidInput(
            f"{name}: label value(s) {', '.join(map(str, stray[:10]))} name no structure of label_info",
            file=name,
            values=stray[:10],
        )
    coords = np.unravel_index(flat, tuple(uploaded.shape), order=layout)
    out: dict[str, StructureChange] = {}
    for structure, members in families_by_name.items():
        member_values = np.fromiter(members, dtype=np.int64)
        was = np.isin(old, member_values)
        now = np.isin(new, member_values)
        moved = np.flatnonzero(was != now)
        if moved.size == 0:
            continue
        where = [axis[moved] for axis in coords]
        lo = tuple(int(axis.min()) for axis in where)
        hi = tuple(int(axis.max()) + 1 for axis in where)
        out[structure] = StructureChange(
            origin=(lo[0], lo[1], lo[2]),
            size=(hi[0] - lo[0], hi[1] - lo[1], hi[2] - lo[2]),
            local=(where[0] - lo[0], where[1] - lo[1], where[2] - lo[2]),
            value=now[moved],
        )
    return out


def to_schema_values(label_map: np.ndarray, names: Mapping[int, str], schema_values: Mapping[str, int]) -> np.ndarray:
    """The map with every value the client named replaced by its structure's schema value (as is when they agree).

    A value the client left unnamed stays as it is, unless it is the schema value of a structure the client did
    name under another value: then it becomes a value no structure has, so a voxel carrying it is refused if it
    changed.
    """
    moves = {idx: schema_values[struct] for idx, struct in names.items() if schema_values[struct] != idx}
    if not moves:
        return label_map
    top = max(int(label_map.max(initial=0)), *moves.values(), *schema_values.values())
    unnamed_value = top + 1
    claimed = {schema_values[struct] for struct in names.values()}
    lut = np.arange(top + 1, dtype=np.int64)
    for value in claimed - set(names):
        lut[value] = unnamed_value
    for idx, value in moves.items():
        if idx <= top:
            lut[idx] = value
    dtype = np.uint8 if unnamed_value <= 255 else np.uint16 if unnamed_value <= 65535 else np.uint32
    order: Literal["C", "F"] = "F" if label_map.flags.f_contiguous and not label_map.flags.c_contiguous else "C"
    return np.asarray(lut.astype(dtype)[label_map], order=order)
