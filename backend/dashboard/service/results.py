"""What the dashboard services answer: plain dataclasses, one per body of `backend.dashboard.schemas` (the router
validates them into those pydantic models; field names and meanings are the same)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import date, datetime


@dataclass(frozen=True)
class StateCounts:
    """Number of scans in each workflow state (every state present, zeros included)."""

    new: int = 0
    pre_annotated: int = 0
    annotating: int = 0
    submitted: int = 0
    in_review: int = 0
    changes_requested: int = 0
    approved: int = 0
    adjudication: int = 0

    def model_dump(self) -> dict[str, int]:
        """The counts keyed by state, as the API body's `model_dump()` gives them (callers use either)."""
        return asdict(self)


@dataclass(frozen=True)
class ReviewLevelCount:
    """Scans in review at one level (1 = first configured level), with the level's configured name."""

    level: int
    name: str | None
    scans: int


@dataclass(frozen=True)
class Summary:
    """Where the whole project stands right now."""

    project_id: int
    total_scans: int
    by_state: StateCounts
    in_review_by_level: list[ReviewLevelCount]
    approved_fraction: float
    assigned: int
    unassigned_open: int
    live_leases: int
    open_findings: int
    scans_with_open_findings: int
    active_seconds: float
    generated_at: datetime


@dataclass(frozen=True)
class GroupStates:
    """Counts by state for one site or contrast phase (key None: scans without one)."""

    key: str | None
    total: int
    by_state: StateCounts
    approved_fraction: float


@dataclass(frozen=True)
class Groups:
    """Counts by state per site or per phase, largest group first."""

    project_id: int
    group_by: str
    groups: list[GroupStates]


@dataclass(frozen=True)
class StructureStats:
    """One structure of the schema across the project's chosen versions (volumes in mL)."""

    structure_id: int
    name: str
    label_value: int
    group: str
    scans_present: int
    scans_with_version: int
    mean_volume_ml: float | None
    median_volume_ml: float | None
    open_findings: int


@dataclass(frozen=True)
class Structures:
    """Per-structure coverage and volumes in schema order; `cached`: only changed structures were re-read."""

    project_id: int
    basis: str
    structures: list[StructureStats]
    computed_at: datetime
    cached: bool


@dataclass(frozen=True)
class PersonDay:
    """What one person did on one day."""

    day: date
    versions_saved: int
    submissions: int
    reviews: int
    approvals: int
    changes_requested: int
    active_seconds: float


@dataclass(frozen=True)
class PersonThroughput:
    """One person's work per day over the window, with totals (dated the window's last day)."""

    user_id: int
    name: str
    role: str | None
    days: list[PersonDay]
    totals: PersonDay


@dataclass(frozen=True)
class Throughput:
    """Per person per day over a window of UTC days, most active first."""

    project_id: int
    since: date
    until: date
    people: list[PersonThroughput]


@dataclass(frozen=True)
class DurationStats:
    """Count, mean, median and 90th percentile of durations in seconds (None when count is 0)."""

    count: int
    mean_s: float | None
    median_s: float | None
    p90_s: float | None


@dataclass(frozen=True)
class PersonEditing:
    """One person's editing time per scan they worked on."""

    user_id: int
    name: str
    scans: int
    total_active_seconds: float
    per_scan: DurationStats


@dataclass(frozen=True)
class EditingTime:
    """Active editing seconds per scan: overall, over approved scans and per person."""

    project_id: int
    since: date | None
    overall: DurationStats
    approved: DurationStats
    people: list[PersonEditing]


@dataclass(frozen=True)
class TurnaroundWeek:
    """Turnaround of the work finished in one ISO week."""

    week: date
    first_review: DurationStats
    approval: DurationStats


@dataclass(frozen=True)
class Turnaround:
    """Submission to first decision, and review-cycle start to approval, over the window and per week."""

    project_id: int
    since: date
    first_review: DurationStats
    approval: DurationStats
    weeks: list[TurnaroundWeek]


@dataclass(frozen=True)
class HistogramBin:
    """One bin [lo, hi) of agreement (the last bin includes 1.0)."""

    lo: float
    hi: float
    count: int


@dataclass(frozen=True)
class StructureAgreement:
    """The agreement distribution of one structure over the reader sets that measured it."""

    name: str
    sets: int
    mean_dice: float | None
    below_threshold: int
    histogram: list[HistogramBin]


@dataclass(frozen=True)
class Agreement:
    """Histogram of per-structure mean pairwise Dice over the project's reader sets."""

    project_id: int
    reader_sets: int
    sets_by_status: dict[str, int]
    in_adjudication: int
    histogram: list[HistogramBin]
    structures: list[StructureAgreement]


@dataclass(frozen=True)
class RoundDice:
    """One training round of a model: AI-vs-final Dice per structure and held-out means."""

    round_id: int
    created_at: datetime
    new_model_version_id: int | None
    previous_model_version_id: int | None
    train_versions: int
    heldout_versions: int
    scans_revised: int
    promoted: bool
    ai_vs_final_dice: dict[str, float]
    ai_vs_final_mean: float | None
    heldout_new_mean: float | None
    heldout_previous_mean: float | None


@dataclass(frozen=True)
class VersionDice:
    """A model version's drafts against the approved versions, recorded at each approval (AI-vs-final Dice)."""

    model_version_id: int
    number: int
    scans: int
    ai_vs_final_dice: dict[str, float]
    ai_vs_final_mean: float | None


@dataclass(frozen=True)
class ModelRounds:
    """A model of the project, its training rounds, oldest first, and its versions' AI-vs-final Dice at approval."""

    model_id: int
    name: str
    architecture: str
    rounds: list[RoundDice]
    versions: list[VersionDice]


@dataclass(frozen=True)
class ProjectModelRounds:
    """The learning curve of every model of the project."""

    project_id: int
    models: list[ModelRounds]


@dataclass(frozen=True)
class CountBy:
    """A count of open findings for one key (a rule id, structure name or severity; None = no structure)."""

    key: str | None
    count: int


@dataclass(frozen=True)
class Qa:
    """Open QA findings by rule, structure and severity (largest first), and all findings by status."""

    project_id: int
    open_findings: int
    scans_with_open_findings: int
    by_rule: list[CountBy]
    by_structure: list[CountBy]
    by_severity: list[CountBy]
    by_status: dict[str, int]
