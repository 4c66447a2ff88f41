"""Click-guided ("AI refine") segmentation: one class-agnostic binary network for any structure it knows.

The contract serving builds on
------------------------------
``model = load_interactive_model(path)`` — once per process: the ``.pt`` weights and their ``.json`` sidecar
(``load_interactive_model_bytes(weights, config, structures)`` does the same from registry data: the version's
blob, ``Model.config``, ``Model.structures``). The model is warm (one dummy pass at load), in eval mode, torch
threads set (``threads=`` or ``MASKLOOP_TORCH_THREADS`` or min(4, CPUs)); calls on it are serialised by a lock.
No file, no weights, a corrupt or foreign file → ``WeightsMissing``.

``answer = refine(model, InteractiveRequest(...))`` — pure: no I/O, no state kept between calls.

- ``image``: the scan in HU, any real dtype (only the region is converted to float32), storage order (i, j, k).
- ``spacing``: voxel size in mm per storage axis; must agree (1 %) with ``affine``, the 4×4 voxel→RAS-mm matrix.
- ``structure``: a name in ``model.structures`` (else ``UnknownStructure``).
- ``positive`` / ``negative``: clicks as voxel indices (i, j, k) in storage order, every click of the session so
  far (the newest last); outside the volume → ``ClicksOutOfVolume``; more than ``model.config.max_clicks`` in
  all → ``TooManyClicks``. ``world_to_voxel(points_mm, affine, frame="RAS"|"LPS")`` converts mm points (NIfTI
  RAS, or DICOM/Slicer LPS) to these indices.
- ``previous``: the structure's current mask (bool), the whole volume or a box placed at ``previous_origin``;
  ``None`` for an empty one. At least one positive click, or a previous mask, is required (``InvalidRequest``).

The answer is ``InteractiveAnswer(origin, mask, structure, timings)``: the structure's new mask for the box
``origin … origin + mask.shape`` (storage order); the caller replaces its mask inside that box only.

How: the region is the bounding box of the clicks and the previous mask plus ``margin_mm``, at least
``min_extent_mm`` and at most ``max_size`` model voxels per axis (centred on the clicks when they and the mask
need more). Its crop is reordered to RAS by the affine's closest axes (oblique scans are read along their own
axes), resized to the model's isotropic ``spacing_mm`` and HU-windowed; positive and negative clicks become the
Gaussian maps of MONAI DeepGrow's ``AddGuidanceSignald`` and, DeepIGeoS-style, geodesic distance maps over the
image (``geodesic``); with the previous mask, a MONAI UNet (seeded from the bundled phantom UNet) predicts one
logit map; components holding no positive click are dropped; the probabilities are resized back and thresholded;
with a previous mask, only the parts of the change that honour a click are taken (FocalClick's progressive merge,
``merge``), so a correction does not move the mask's edge elsewhere.
Clicks outside the region (only when the clicks and the mask span more than ``max_size`` model voxels) do not
guide that answer. Every error is a ``ValueError`` subclass of ``InteractiveError``.

Training (``python -m worker.models.interactive.phantom_training``, ``maskloop train --interactive --phantom``)
and the held-out clicks-to-Dice evaluation live in ``training``, ``evaluation`` and ``phantoms``.
"""

from worker.models.interactive.errors import (
    ClicksOutOfVolume,
    InteractiveError,
    InvalidRequest,
    TooManyClicks,
    UnknownStructure,
    WeightsMissing,
)
from worker.models.interactive.geometry import voxel_to_world, world_to_voxel
from worker.models.interactive.model import (
    ARCHITECTURE,
    InteractiveConfig,
    LoadedInteractiveModel,
    load_interactive_model,
    load_interactive_model_bytes,
)
from worker.models.interactive.refine import InteractiveAnswer, InteractiveRequest, refine

__all__ = [
    "ARCHITECTURE",
    "ClicksOutOfVolume",
    "InteractiveAnswer",
    "InteractiveConfig",
    "InteractiveError",
    "InteractiveRequest",
    "InvalidRequest",
    "LoadedInteractiveModel",
    "TooManyClicks",
    "UnknownStructure",
    "WeightsMissing",
    "load_interactive_model",
    "load_interactive_model_bytes",
    "refine",
    "voxel_to_world",
    "world_to_voxel",
]
