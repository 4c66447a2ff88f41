"""Editor operations on the client's current masks, answered as a preview box (nothing is saved here).

One module per operation family: `morphology` (margin, smoothing, fill holes, the sphere brush's element),
`islands`, `interpolation`, `logical`, `scissors`, `statistics`; `boxes` holds the box arithmetic and
`operations` checks the request's inputs, picks each operation's work region and describes the change.
"""

from backend.editing.service.boxes import Box, Change, Region, nonzero_bounds
from backend.editing.service.morphology import ellipsoid, sphere_offsets
from backend.editing.service.operations import Outcome, run
from backend.editing.service.statistics import Measures

__all__ = ["Box", "Change", "Measures", "Outcome", "Region", "ellipsoid", "nonzero_bounds", "run", "sphere_offsets"]
