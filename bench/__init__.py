"""maskloop benchmarks: each module measures figures end to end and returns rows; `python -m bench` runs them all.

A benchmark is a function taking no arguments and returning a list of `Row`. `bench/__main__.py` keeps the
registry (`BENCHMARKS`), prints every row in one table and merges the keyed rows into `bench/results.json`,
one key per figure: {"value": x, "unit": "...", "goal": "..."}. Keys written by other benchmarks are kept.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULTS_PATH = Path(__file__).resolve().parent / "results.json"
NO_GOAL = "—"


@dataclass(frozen=True)
class Row:
    """One measured figure: results.json key, label, value, unit, goal text and whether the goal is met."""

    key: str
    figure: str
    value: float
    unit: str
    goal: str = NO_GOAL
    met: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The results.json entry of this figure."""
        value: float | None = None if math.isnan(self.value) else self.value
        return {"value": value, "unit": self.unit, "goal": self.goal}


Benchmark = Callable[[], list[Row]]


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of values, linearly interpolated; NaN when there are none."""
    if not values:
        return math.nan
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def merge_results(rows: Sequence[Row], path: Path = RESULTS_PATH) -> dict[str, Any]:
    """Merge rows into the results file (existing keys of other benchmarks are kept) and return its content."""
    results: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            loaded = {}
        if isinstance(loaded, dict):
            results = loaded
    for row in rows:
        results[row.key] = row.to_json()
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return results
