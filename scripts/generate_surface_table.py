"""Generate `backend/evaluation/surface_tables.py`: marching-cubes surfel normals of every 2x2x2 neighbourhood.

For each of the 256 binary configurations of a 2x2x2 neighbourhood (bit weights as in
`ENCODE_NEIGHBOURHOOD_3D_KERNEL` below: bit 128 is voxel (0, 0, 0), bit 1 is voxel (1, 1, 1)), run scikit-image's
marching cubes with Lorensen's classic triangulation (`skimage.measure.marching_cubes(..., method="lorensen")`) on
the configuration embedded in a zero-padded 4x4x4 volume, keep the triangles whose three vertices all lie in the
central cell, and write, per triangle, its normal vector scaled to the triangle's area at unit spacing (half the
cross product of two edges), oriented out of the mask (from voxels set to 1 toward voxels set to 0).
`backend/evaluation/metrics.py` sums the norms of these normals after scaling component i by the product of the
other two axes' spacings, which is how a triangle's area-weighted normal transforms under an axis-aligned scaling.

The backend only imports the generated table; scikit-image is a dev dependency of this script alone.

Usage (from the repository root):

    .venv/bin/python scripts/generate_surface_table.py          # (re)write the table, then ruff-format it
    .venv/bin/python scripts/generate_surface_table.py --check  # exit 1 if the committed table is out of date
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import skimage
from skimage import measure

ROOT = Path(__file__).resolve().parents[1]
TARGET = ROOT / "backend" / "evaluation" / "surface_tables.py"
RUFF = ROOT / ".venv" / "bin" / "ruff"

# Bit weight of each voxel of the 2x2x2 neighbourhood; metrics.py correlates each mask with this kernel.
KERNEL = np.array([[[128, 64], [32, 16]], [[8, 4], [2, 1]]], dtype=np.uint8)
PAD = 1  # the cell occupies [PAD, PAD + 1] on every axis of the padded volume
LEVEL = 0.5


def configuration(code: int) -> np.ndarray:
    """The 2x2x2 binary neighbourhood whose code (sum of the kernel weights of its set voxels) is `code`."""
    return (np.bitwise_and(KERNEL, code) != 0).astype(np.float32)


def _outward(volume: np.ndarray, triangle: np.ndarray) -> np.ndarray:
    """Sum over a triangle's vertices of the unit step along its cube edge from the set voxel to the unset one.

    Every marching-cubes vertex lies on an edge between a voxel set to 1 and one set to 0; the sum points out of
    the mask across the triangle.
    """
    out = np.zeros(3)
    for vertex in triangle:
        lo, hi = np.floor(vertex).astype(int), np.ceil(vertex).astype(int)
        a, b = volume[tuple(lo)], volume[tuple(hi)]
        if a == b or np.count_nonzero(hi - lo) != 1:
            raise RuntimeError(f"vertex {vertex} is not on an edge between a set and an unset voxel")
        out += (hi - lo) if a > b else (lo - hi)
    return out


def surfel_normals(code: int) -> list[list[float]]:
    """Area-weighted, outward normals of the marching-cubes triangles of one neighbourhood code, at unit spacing."""
    if code in (0, 255):
        return []  # uniform neighbourhood: the iso-surface does not cross the cell
    volume = np.zeros((2 + 2 * PAD,) * 3, dtype=np.float32)
    volume[PAD : PAD + 2, PAD : PAD + 2, PAD : PAD + 2] = configuration(code)
    verts, faces, _, _ = measure.marching_cubes(volume, LEVEL, method="lorensen", allow_degenerate=False)
    triangles = verts[faces].astype(np.float64)  # (T, 3 vertices, 3 axes)
    # Triangles of the padded neighbours touch the pad; only the central cell's own triangles are kept.
    in_cell = np.all((triangles >= PAD) & (triangles <= PAD + 1), axis=(1, 2))
    normals: list[list[float]] = []
    for tri in triangles[in_cell]:
        normal = 0.5 * np.cross(tri[1] - tri[0], tri[2] - tri[0])
        area = float(np.linalg.norm(normal))
        if area == 0.0:
            continue
        # Orient out of the mask (skimage's winding points the other way; the sign does not change any area).
        direction = float(np.dot(normal, _outward(volume, tri)))
        if direction == 0.0:
            raise RuntimeError(f"code {code}: cannot orient triangle {tri.tolist()}")
        if direction < 0.0:
            normal = -normal
        normals.append([float(v) + 0.0 for v in normal])  # + 0.0 turns -0.0 into 0.0
    if not normals:
        raise RuntimeError(f"code {code}: marching cubes found no triangle in the cell")
    return normals


def _format_table(table: list[list[list[float]]]) -> str:
    lines = []
    for code, normals in enumerate(table):
        bits = format(code, "08b")
        body = ", ".join("[" + ", ".join(repr(v) for v in n) + "]" for n in normals)
        lines.append(f"    [{body}],  # {code:3d} = 0b{bits}")
    return "\n".join(lines)


def render(table: list[list[list[float]]]) -> str:
    """Source text of `backend/evaluation/surface_tables.py` (before ruff format)."""
    kernel = repr(KERNEL.tolist())
    return f'''"""Marching-cubes surfel normals of every 2x2x2 neighbourhood code.

GENERATED by `scripts/generate_surface_table.py` -- do not edit by hand; rerun the script instead. The numbers are
our own output of scikit-image's marching cubes with Lorensen's classic triangulation
(`skimage.measure.marching_cubes(..., method="lorensen")`, scikit-image {skimage.__version__}); no third-party
table is copied.

For each of the 256 binary configurations of a 2x2x2 neighbourhood (bit weights in
`ENCODE_NEIGHBOURHOOD_3D_KERNEL`), the normals of the marching-cubes triangles ("surfels") of the iso-surface at
level 0.5 inside that cell, one per triangle, oriented out of the mask; the length of a normal is the triangle's
area at unit spacing. Codes 0 and 255 (uniform neighbourhoods) have no surfels.
"""

from __future__ import annotations

import numpy as np

# In the neighbourhood, bit 128 is voxel (0, 0, 0) and bit 1 is voxel (1, 1, 1).
ENCODE_NEIGHBOURHOOD_3D_KERNEL = np.array({kernel}, dtype=np.uint8)

NEIGHBOUR_CODE_TO_NORMALS: list[list[list[float]]] = [
{_format_table(table)}
]


def neighbour_code_to_surface_area(spacing_mm: tuple[float, float, float]) -> np.ndarray:
    """Surface area in mm² of the surfels of each of the 256 neighbourhood codes at the given voxel spacing.

    Scaling axis i by s_i multiplies component i of a triangle's area-weighted normal by the product of the other
    two spacings; the triangle's area is the norm of the scaled normal.
    """
    s0, s1, s2 = (float(v) for v in spacing_mm)
    scale = np.array([s1 * s2, s0 * s2, s0 * s1])
    table = np.zeros(256, dtype=np.float64)
    for code, normals in enumerate(NEIGHBOUR_CODE_TO_NORMALS):
        scaled = np.asarray(normals, dtype=np.float64).reshape(-1, 3) * scale
        table[code] = float(np.linalg.norm(scaled, axis=1).sum())
    return table
'''


def generate() -> str:
    """The formatted source text of the table module."""
    table = [surfel_normals(code) for code in range(256)]
    source = render(table)
    formatted = subprocess.run(
        [str(RUFF), "format", "--stdin-filename", str(TARGET), "-"],
        input=source,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return formatted.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the committed table is up to date")
    args = parser.parse_args()
    source = generate()
    if args.check:
        current = TARGET.read_text() if TARGET.exists() else ""
        if current != source:
            print(f"{TARGET.relative_to(ROOT)} is out of date; rerun scripts/generate_surface_table.py")
            return 1
        print(f"{TARGET.relative_to(ROOT)} is up to date")
        return 0
    TARGET.write_text(source)
    print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
