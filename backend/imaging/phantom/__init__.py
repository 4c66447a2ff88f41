"""Deterministic synthetic abdominal CT phantoms with PanTS-named ground-truth masks.

Geometry
--------
The anatomy is described in millimetres of a fixed *template* field of view (``TEMPLATE_FOV_MM``,
x/y/z in RAS+ patient space, origin at the volume centre). It is stretched per axis onto the real field of
view (``shape * spacing``), so any shape/spacing draws the same anatomy and the body ellipse always fills
most of the axial FOV. Because of this the drawn anatomy depends on the array shape only; the spacing only
sets the affine.

The template's x axis points to the patient's LEFT (template +y anterior, +z superior), so the anatomy is
rasterised into an LAS-ordered array: in RAS+ world coordinates (nibabel's convention, +x = patient right)
the liver lies at +x, the spleen and the left kidney and lung at -x, the lungs at the top (+z).

Orientation
-----------
The anatomy is always rasterised in RAS order and then stored with the requested axis codes (``"LPS"``,
``"IPL"``, ...). ``shape`` and ``spacing`` are given in the *output* axis order, so an ``"IPL"`` phantom of
shape ``(Z, Y, X)`` is, after ``nibabel.as_closest_canonical``, identical (voxels, masks and affine) to the
``"RAS"`` phantom of shape ``(X, Y, Z)`` with the permuted spacing and the same seed.

Masks
-----
``Phantom.masks`` holds every name of ``PHANTOM_STRUCTURES``; ``pancreatic_lesion`` is all-False when the
phantom has no lesion. Organs are mutually exclusive (drawn by priority), except: ``pancreas`` is the union
of ``pancreas_head``/``pancreas_body``/``pancreas_tail`` (disjoint, split along x) and
``pancreatic_lesion`` (which replaces pancreas tissue inside one part); ``veins`` (portal and splenic vein)
may overlap the liver, as PanTS veins overlap organs. The same seed draws the same anatomy with or without a
lesion.

Dataset writer
--------------
``write_pants_dataset`` takes ``shape``/``spacing`` of the RAS-canonical volume; a case stored in another
orientation has its array axes (and spacing) permuted accordingly, so every case holds the same anatomy.
Each case uses its own seed derived from ``(seed, case index)``.
"""

from backend.imaging.phantom.anatomy import PHANTOM_STRUCTURES
from backend.imaging.phantom.dataset import METADATA_COLUMNS, write_pants_dataset
from backend.imaging.phantom.generate import Phantom, generate_phantom
from backend.imaging.phantom.geometry import TEMPLATE_FOV_MM

__all__ = [
    "METADATA_COLUMNS",
    "PHANTOM_STRUCTURES",
    "TEMPLATE_FOV_MM",
    "Phantom",
    "generate_phantom",
    "write_pants_dataset",
]
