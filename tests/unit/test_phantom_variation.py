"""Opt-in shape variation of the phantom (and the optional pancreatic duct); the default phantom is unchanged."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from backend.imaging.phantom import PHANTOM_STRUCTURES, generate_phantom

SHAPE = (64, 64, 40)
SPACING = (5.6, 5.6, 6.5)

# sha256 over volume, affine and every mask of four default phantoms, computed before variation existed.
DEFAULT_DIGEST = "29cbbb6089a4ab919614d224cd871abe10282c6402acbe5392ddba37d8be3963"


def test_default_phantoms_are_byte_identical_to_before_variation() -> None:
    """variation=0 (the default) draws exactly what the generator drew before the option existed."""
    digest = hashlib.sha256()
    for shape, spacing, seed, lesion, orientation in (
        ((48, 48, 24), (3, 3, 4), 0, True, "RAS"),
        ((64, 56, 40), (2, 2.5, 3), 5, False, "LPS"),
        ((40, 64, 48), (3, 2, 2.5), 9, True, "IPL"),
        ((128, 128, 64), (1.5, 1.5, 2.5), 123, True, "RAS"),
    ):
        ph = generate_phantom(shape, spacing, seed=seed, lesion=lesion, orientation=orientation)
        digest.update(ph.volume.tobytes())
        digest.update(ph.affine.tobytes())
        for name in PHANTOM_STRUCTURES:
            digest.update(ph.masks[name].tobytes())
    assert digest.hexdigest() == DEFAULT_DIGEST


def test_variation_is_deterministic_and_changes_the_anatomy() -> None:
    """Same seed and strength → same phantom; organ sizes and the lesion differ from the default anatomy."""
    base = generate_phantom(SHAPE, SPACING, seed=4, noise_hu=0.0)
    a = generate_phantom(SHAPE, SPACING, seed=4, noise_hu=0.0, variation=1.0)
    b = generate_phantom(SHAPE, SPACING, seed=4, noise_hu=0.0, variation=1.0)
    assert np.array_equal(a.volume, b.volume)
    assert all(np.array_equal(a.masks[n], b.masks[n]) for n in PHANTOM_STRUCTURES)
    changed = [n for n in ("liver", "spleen", "kidney_left", "stomach") if a.masks[n].sum() != base.masks[n].sum()]
    assert len(changed) == 4
    sizes = [generate_phantom(SHAPE, SPACING, seed=s, variation=1.0).masks["pancreatic_lesion"].sum() for s in range(6)]
    assert max(sizes) > 2 * max(1, min(sizes))  # lesion sizes vary widely


@pytest.mark.parametrize("orientation", ["RAS", "LPS"])
def test_varied_masks_keep_the_phantom_rules(orientation: str) -> None:
    """Every structure is drawn; the pancreas is its parts and the lesion; the duct lies inside the pancreas."""
    ph = generate_phantom(SHAPE, SPACING, seed=11, variation=1.5, duct=True, orientation=orientation)
    m = ph.masks
    assert set(m) == {*PHANTOM_STRUCTURES, "pancreatic_duct"}
    assert all(m[n].any() for n in m), [n for n in m if not m[n].any()]
    assert np.array_equal(
        m["pancreas"], m["pancreas_head"] | m["pancreas_body"] | m["pancreas_tail"] | m["pancreatic_lesion"]
    )
    assert not (m["pancreatic_duct"] & ~m["pancreas"]).any()
    assert not (m["pancreatic_duct"] & m["pancreatic_lesion"]).any()
    assert not (m["liver"] & m["spleen"]).any()
    assert (ph.volume[m["pancreatic_duct"]] < 30).mean() > 0.9  # fluid-filled
    assert "pancreatic_duct" not in generate_phantom(SHAPE, SPACING, seed=11, variation=1.5).masks


def test_variation_bounds() -> None:
    """The strength must be within (0, 2]."""
    for bad in (-0.5, 2.5):
        with pytest.raises(ValueError):
            generate_phantom(SHAPE, SPACING, variation=bad)
