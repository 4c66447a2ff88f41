"""Lead dashboard services: project-wide progress, structures, throughput, turnaround, agreement, model rounds
and QA, read-only; each answers a dataclass of `results` (the router turns it into the API body).

One module per view. The costly figures come from aggregates the database keeps current in the writing
transaction (`backend/models/dashboard.py`), shared by every API process; see ARCHITECTURE.md.
"""

from __future__ import annotations

from backend.dashboard.service import structures as _structures
from backend.dashboard.service import turnaround as _turnaround
from backend.dashboard.service.agreement import agreement
from backend.dashboard.service.common import duration_stats
from backend.dashboard.service.findings import qa
from backend.dashboard.service.people import editing_time, throughput
from backend.dashboard.service.progress import groups, summary
from backend.dashboard.service.rounds import model_rounds
from backend.dashboard.service.structures import structures
from backend.dashboard.service.turnaround import turnaround, turnaround_from_transitions


def clear_structure_cache() -> None:
    """Forget what this process remembered (medians, turnaround windows); answers are then re-read from the
    shared aggregates (tests, or to measure a cold process)."""
    _structures.clear_memo()
    _turnaround.clear_memo()


__all__ = [
    "agreement",
    "clear_structure_cache",
    "duration_stats",
    "editing_time",
    "groups",
    "model_rounds",
    "qa",
    "structures",
    "summary",
    "throughput",
    "turnaround",
    "turnaround_from_transitions",
]
