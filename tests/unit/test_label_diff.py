"""What a re-uploaded combined map changed: membership per structure, parts counting for their parent."""

from __future__ import annotations

import numpy as np
import pytest

from backend.core.errors import InvalidInput
from backend.imaging import label_diff

VALUES = {"pancreas": 1, "pancreas_head": 2, "pancreas_body": 3, "liver": 4}
PARENTS = {"pancreas_head": "pancreas", "pancreas_body": "pancreas"}
FAMILIES = label_diff.families(VALUES, PARENTS)
ALLOWED = frozenset(VALUES.values())


def _maps() -> tuple[np.ndarray, np.ndarray]:
    given = np.zeros((8, 8, 4), dtype=np.uint8, order="F")
    given[1:4, 1:4, :] = 2
    given[4:6, 1:4, :] = 3
    given[6:8, 6:8, :] = 4
    return given, np.array(given, order="F")


def test_families_hold_parts_transitively() -> None:
    assert FAMILIES["pancreas"] == {1, 2, 3}
    assert FAMILIES["pancreas_head"] == {2}
    assert label_diff.families({"a": 1, "b": 2, "c": 3}, {"c": "b", "b": "a"})["a"] == {1, 2, 3}


def test_a_part_repainted_as_another_part_leaves_the_parent_alone() -> None:
    given, uploaded = _maps()
    uploaded[1, 1, 0] = 3
    changes = label_diff.changed_structures(uploaded, given, FAMILIES, allowed=ALLOWED, name="x")
    assert sorted(changes) == ["pancreas_body", "pancreas_head"]
    head = changes["pancreas_head"]
    assert head.origin == (1, 1, 0) and head.size == (1, 1, 1)
    assert head.value.tolist() == [False]
    assert changes["pancreas_body"].value.tolist() == [True]


def test_erasing_a_part_erases_it_from_the_parent_and_the_box_is_tight() -> None:
    given, uploaded = _maps()
    uploaded[2, 2, 1] = 0
    uploaded[3, 1, 3] = 0
    changes = label_diff.changed_structures(uploaded, given, FAMILIES, allowed=ALLOWED, name="x")
    assert sorted(changes) == ["pancreas", "pancreas_head"]
    assert changes["pancreas"].origin == (2, 1, 1) and changes["pancreas"].size == (2, 2, 3)
    box = np.ones(changes["pancreas"].size, dtype=bool)
    box[changes["pancreas"].local] = changes["pancreas"].value
    assert int(np.count_nonzero(~box)) == 2


def test_unchanged_maps_and_c_order_uploads() -> None:
    given, uploaded = _maps()
    assert label_diff.changed_structures(uploaded, given, FAMILIES, allowed=ALLOWED, name="x") == {}
    c_order = np.ascontiguousarray(uploaded)
    c_order[7, 7, 3] = 0
    changes = label_diff.changed_structures(c_order, given, FAMILIES, allowed=ALLOWED, name="x")
    assert list(changes) == ["liver"] and changes["liver"].origin == (7, 7, 3)


def test_a_changed_voxel_of_an_unnamed_value_is_refused_an_unchanged_one_kept() -> None:
    given, uploaded = _maps()
    named = {k: v for k, v in FAMILIES.items() if k == "liver"}
    # The head/body voxels are unchanged although the client does not name them: no error, no change.
    assert label_diff.changed_structures(uploaded, given, named, allowed=frozenset({4}), name="x") == {}
    uploaded[0, 0, 0] = 9
    with pytest.raises(InvalidInput, match="9"):
        label_diff.changed_structures(uploaded, given, named, allowed=frozenset({4}), name="x")
    with pytest.raises(InvalidInput, match="shape"):
        label_diff.changed_structures(uploaded[:4], given, named, allowed=frozenset({4}), name="x")


def test_client_indices_become_schema_values() -> None:
    label_map = np.array([[[0, 7, 4, 2]]], dtype=np.uint8)
    # The client calls the liver 7; its 4 (the liver's schema value) is then nobody's; 2 it leaves unnamed.
    out = label_diff.to_schema_values(label_map, {7: "liver"}, VALUES)
    assert out[0, 0, 1] == 4 and out[0, 0, 3] == 2
    assert out[0, 0, 2] not in VALUES.values()
    same = label_diff.to_schema_values(label_map, {4: "liver", 2: "pancreas_head"}, VALUES)
    assert same is label_map
