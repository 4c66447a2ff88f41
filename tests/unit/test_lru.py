"""The bounded LRU behind the API's label-map cache and the interactive worker's model and volume caches."""

from __future__ import annotations

from backend.core.lru import BoundedLru


def test_least_recent_goes_first_past_the_entry_bound() -> None:
    lru: BoundedLru[str] = BoundedLru(2)
    lru.put("a", "A")
    lru.put("b", "B")
    assert lru.get("a") == "A"  # now the most recent
    lru.put("c", "C")
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == ("A", None, "C")


def test_the_byte_bound_counts_sizes_and_refuses_an_oversized_value() -> None:
    lru: BoundedLru[str] = BoundedLru(10, max_bytes=100)
    lru.put("a", "A", 60)
    lru.put("b", "B", 30)
    lru.put("c", "C", 30)  # 120 > 100: the oldest goes
    assert (lru.get("a"), lru.get("b"), lru.get("c")) == (None, "B", "C")
    lru.put("huge", "H", 101)
    assert lru.get("huge") is None and len(lru) == 2
    lru.put("b", "B2", 90)  # replacing a value counts its new size only: c (30) must go
    assert (lru.get("b"), lru.get("c")) == ("B2", None)


def test_take_removes_the_value_and_frees_its_bytes() -> None:
    lru: BoundedLru[str] = BoundedLru(10, max_bytes=100)
    lru.put("a", "A", 80)
    assert lru.take("a") == "A"
    assert lru.take("a") is None and lru.get("a") is None
    lru.put("b", "B", 90)  # fits: a's 80 bytes were freed
    assert lru.get("b") == "B"
