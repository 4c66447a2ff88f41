"""Progressive merge: a correction click changes the mask only where it asks to (later clicks no longer fight
the previous mask), in ``progressive_merge`` itself and through ``refine`` with a network that grows everywhere."""

from __future__ import annotations

import numpy as np
import torch

from worker.models.interactive import InteractiveConfig, InteractiveRequest, LoadedInteractiveModel, refine
from worker.models.interactive.merge import progressive_merge


def _ball(shape: tuple[int, int, int], centre: tuple[float, float, float], radius: float) -> np.ndarray:
    grid = np.indices(shape, dtype=np.float32)
    return ((grid - np.asarray(centre, np.float32)[:, None, None, None]) ** 2).sum(axis=0) <= radius**2


def test_only_the_change_that_honours_a_click_is_taken() -> None:
    """A positive click adds its blob; the answer's bite out of another side of the mask is ignored."""
    shape = (40, 40, 40)
    previous = _ball(shape, (20, 20, 20), 8)
    blob = _ball(shape, (20, 20, 31), 4) & ~previous
    new = (previous | blob) & ~_ball(shape, (20, 11, 20), 3)
    merged = progressive_merge(new, previous, positive=[(20, 20, 20), (20, 20, 32)], negative=[])
    assert np.array_equal(merged, previous | blob)


def test_a_negative_click_removes_only_its_own_part() -> None:
    """A negative click in a leak removes the leak; the answer's shrinking elsewhere is ignored (with opening,
    since the shrunk edge touches the leak)."""
    shape = (40, 40, 40)
    organ = _ball(shape, (20, 20, 15), 8)
    leak = _ball(shape, (20, 20, 27), 5) & ~organ
    previous = organ | leak
    new = _ball(shape, (20, 20, 15), 6.5)  # the leak gone, but the organ's edge moved in too
    merged = progressive_merge(new, previous, positive=[(20, 20, 15)], negative=[(20, 20, 29)], opening=2)
    assert not (merged & leak).any()
    assert (merged & organ).sum() > 0.9 * organ.sum()
    assert np.array_equal(merged & ~_ball(shape, (20, 20, 27), 9), organ & ~_ball(shape, (20, 20, 27), 9))


def test_an_answer_that_honours_no_new_click_is_taken_whole_or_refused() -> None:
    """Nothing honours a click: the whole answer by default, the previous mask with ``fallback_to_new=False``."""
    shape = (24, 24, 24)
    previous = _ball(shape, (12, 12, 12), 5)
    new = _ball(shape, (12, 12, 12), 7)
    assert np.array_equal(progressive_merge(new, previous, [(12, 12, 12)], []), new)
    assert np.array_equal(progressive_merge(new, previous, [(12, 12, 12)], [], fallback_to_new=False), previous)


def test_opening_keeps_a_shell_shift_from_joining_the_clicked_part() -> None:
    """The answer's edge moved out by a voxel all round touches the clicked blob: opening keeps the two apart."""
    shape = (40, 40, 40)
    previous = _ball(shape, (20, 20, 16), 8)
    blob = _ball(shape, (20, 20, 28), 4) & ~previous
    new = _ball(shape, (20, 20, 16), 9) | blob
    click = (20, 20, 29)
    far = ~_ball(shape, (20, 20, 28), 7)
    assert ((progressive_merge(new, previous, [click], []) ^ previous) & far).any()  # the shell joins, unopened
    merged = progressive_merge(new, previous, [click], [], opening=2)
    assert (merged & blob).sum() > 0.9 * blob.sum()
    changed = merged ^ previous
    assert not (changed & far).any()  # nothing changed away from the blob


class GrowEverywhere(torch.nn.Module):
    """Answers with the previous mask dilated by a voxel, plus the neighbourhood of the positive clicks."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits +/-10."""
        grown = torch.nn.functional.max_pool3d(x[:, 3:4], kernel_size=3, stride=1, padding=1)
        return (torch.maximum(grown, (x[:, 1:2] > 0.3).float()) - 0.5) * 20.0


def test_refine_keeps_the_previous_mask_away_from_the_new_click() -> None:
    """Through refine: a click that adds a missed part leaves the rest of the previous mask as it was."""
    shape, spacing = (64, 64, 48), (3.0, 3.0, 3.0)
    affine = np.diag([*spacing, 1.0])
    image = np.zeros(shape, dtype=np.float32)
    previous = _ball(shape, (32, 32, 24), 8)
    click = (32, 32, 38)  # outside the previous mask: a missed part
    cfg = InteractiveConfig(keep_clicked_components=False, geodesic=False)
    model = LoadedInteractiveModel(network=GrowEverywhere(), config=cfg, structures=("liver",), weights_sha256="x")
    req = InteractiveRequest(image, spacing, affine, "liver", [(32, 32, 24), click], previous=previous)
    answer = refine(model, req)
    full = np.zeros(shape, dtype=bool)
    o, m = answer.origin, answer.mask
    full[o[0] : o[0] + m.shape[0], o[1] : o[1] + m.shape[1], o[2] : o[2] + m.shape[2]] = m
    assert full[click]  # the click is honoured
    far = ~_ball(shape, click, 8)
    assert np.array_equal(full & far, previous & far)  # and nothing changed away from it
    # Without the merge the same network grows the whole mask: the defect this guards against.
    unmerged = LoadedInteractiveModel(
        network=GrowEverywhere(),
        config=InteractiveConfig(keep_clicked_components=False, geodesic=False, progressive_merge=False),
        structures=("liver",),
        weights_sha256="x",
    )
    grown = refine(unmerged, req).mask
    assert grown.sum() > full[o[0] : o[0] + m.shape[0], o[1] : o[1] + m.shape[1], o[2] : o[2] + m.shape[2]].sum()
