"""Response bodies of the lead dashboard (`GET /api/projects/{pid}/dashboard/...`).

Every endpoint answers one of the models below (validated from the service's dataclass of the same shape,
`backend.dashboard.service.results`); the charts page is built from these shapes. Conventions:

* counts by workflow state are objects keyed by every state of `backend.models.workflow.TASK_STATES`
  (`new`, `pre_annotated`, `annotating`, `submitted`, `in_review`, `changes_requested`, `approved`,
  `adjudication`), zeros included, so a stacked bar chart needs no gap filling;
* durations are seconds (float); volumes are millilitres; days are ISO dates (`YYYY-MM-DD`), weeks are the
  ISO Monday that starts them;
* a statistic over no values (a median of nothing) is `null`, never 0;
* scans without a site or phase are grouped under `null`.
"""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, Field


class StateCounts(BaseModel):
    """Number of scans in each workflow state (every state present, zeros included)."""

    new: int = 0
    pre_annotated: int = 0
    annotating: int = 0
    submitted: int = 0
    in_review: int = 0
    changes_requested: int = 0
    approved: int = 0
    adjudication: int = 0


class ReviewLevelCount(BaseModel):
    """Scans in review at one level (1 = first configured level, e.g. 'junior')."""

    level: int
    name: str | None = Field(description="the configured name of the level, when the project names it")
    scans: int


class SummaryOut(BaseModel):
    """`GET .../dashboard/summary`: where the whole project stands right now."""

    project_id: int
    total_scans: int
    by_state: StateCounts
    in_review_by_level: list[ReviewLevelCount] = Field(description="scans in_review per level, levels ascending")
    approved_fraction: float = Field(description="approved / total scans, 0 when the project is empty")
    assigned: int = Field(description="scans with an annotator assigned")
    unassigned_open: int = Field(description="scans not approved and without an assignee")
    live_leases: int = Field(description="scans whose edit lease has not expired (someone is editing now)")
    open_findings: int = Field(description="open QA findings over the project")
    scans_with_open_findings: int
    active_seconds: float = Field(description="editing time recorded over every scan")
    generated_at: datetime


class GroupStates(BaseModel):
    """Counts by state for one site or contrast phase."""

    key: str | None = Field(description="the site or phase; null for scans without one")
    total: int
    by_state: StateCounts
    approved_fraction: float


class GroupsOut(BaseModel):
    """`GET .../dashboard/sites` and `.../dashboard/phases`: counts by state per site or per phase."""

    project_id: int
    group_by: str = Field(description="'site' or 'phase'")
    groups: list[GroupStates] = Field(description="largest group first")


class StructureStats(BaseModel):
    """One structure of the schema across the project's scans."""

    structure_id: int
    name: str
    label_value: int
    group: str
    scans_present: int = Field(description="scans whose chosen version has this structure present and non-empty")
    scans_with_version: int = Field(description="scans that have a chosen version at all (the denominator)")
    mean_volume_ml: float | None
    median_volume_ml: float | None
    open_findings: int = Field(description="open QA findings on this structure")


class StructuresOut(BaseModel):
    """`GET .../dashboard/structures?basis=head|approved`: per-structure coverage and volumes."""

    project_id: int
    basis: str = Field(description="'head' (each scan's current version) or 'approved' (its approved version)")
    structures: list[StructureStats] = Field(description="in schema order")
    computed_at: datetime = Field(
        description="when the volume statistics last changed (recomputed on every new version)"
    )
    cached: bool = Field(
        description="true when this API process had answered before and re-read only the structures whose shared "
        "aggregates changed since"
    )


class PersonDay(BaseModel):
    """What one person did on one day."""

    day: date
    versions_saved: int = Field(description="label versions saved (from the daily activity counters)")
    submissions: int
    reviews: int = Field(description="review decisions of any kind")
    approvals: int = Field(description="approve decisions")
    changes_requested: int
    active_seconds: float


class PersonThroughput(BaseModel):
    """One person's work per day over the window, with totals."""

    user_id: int
    name: str
    role: str | None = Field(description="project role, null for someone no longer a member")
    days: list[PersonDay] = Field(description="only days with any activity, oldest first")
    totals: PersonDay = Field(description="sums over the window (its `day` is the window's last day)")


class ThroughputOut(BaseModel):
    """`GET .../dashboard/throughput?days=30`: per person per day over the last `days` days (UTC)."""

    project_id: int
    since: date
    until: date
    people: list[PersonThroughput] = Field(description="most active seconds first")


class DurationStats(BaseModel):
    """Count, mean, median and 90th percentile of durations in seconds (null when count is 0)."""

    count: int
    mean_s: float | None
    median_s: float | None
    p90_s: float | None


class PersonEditing(BaseModel):
    """One person's editing time per scan they worked on."""

    user_id: int
    name: str
    scans: int
    total_active_seconds: float
    per_scan: DurationStats


class EditingTimeOut(BaseModel):
    """`GET .../dashboard/editing-time?days=`: active editing seconds per scan, overall and per person.

    `overall` is over scans with any recorded time (ScanTask.active_seconds); `approved` only over approved scans;
    `people` from the daily activity rows (per person per scan sums), limited to the last `days` days when given.
    """

    project_id: int
    since: date | None
    overall: DurationStats
    approved: DurationStats
    people: list[PersonEditing]


class TurnaroundWeek(BaseModel):
    """Turnaround of the work finished in one ISO week (bucketed by when the decision/approval happened)."""

    week: date
    first_review: DurationStats
    approval: DurationStats


class TurnaroundOut(BaseModel):
    """`GET .../dashboard/turnaround?weeks=12`: review turnaround in seconds.

    `first_review`: from a submission to the first review decision after it (approve or request changes).
    `approval`: from the first submission of a review cycle (after the previous approval, if any) to the
    approval that closed it. Both over decisions/approvals in the window and per week.
    """

    project_id: int
    since: date
    first_review: DurationStats
    approval: DurationStats
    weeks: list[TurnaroundWeek] = Field(description="oldest first; only weeks with any decision")


class HistogramBin(BaseModel):
    """One bin [lo, hi) of agreement (the last bin includes 1.0)."""

    lo: float
    hi: float
    count: int


class StructureAgreement(BaseModel):
    """The agreement distribution of one structure over the reader sets that measured it."""

    name: str
    sets: int
    mean_dice: float | None
    below_threshold: int = Field(description="sets where this structure fell below the project threshold")
    histogram: list[HistogramBin]


class AgreementOut(BaseModel):
    """`GET .../dashboard/agreement?bins=10`: histogram of per-structure mean pairwise Dice of reader sets."""

    project_id: int
    reader_sets: int = Field(description="reader sets with any agreement measured")
    sets_by_status: dict[str, int] = Field(description="reader sets per status (open/complete/adjudication/fused)")
    in_adjudication: int = Field(description="scans whose task is in the adjudication state")
    histogram: list[HistogramBin] = Field(description="all structures of all sets pooled")
    structures: list[StructureAgreement] = Field(description="by name")


class RoundDice(BaseModel):
    """One training round of a model: AI-vs-final Dice per structure and held-out means."""

    round_id: int
    created_at: datetime
    new_model_version_id: int | None
    previous_model_version_id: int | None
    train_versions: int
    heldout_versions: int
    scans_revised: int
    promoted: bool
    ai_vs_final_dice: dict[str, float] = Field(description="structure name -> mean Dice of the AI draft vs final")
    ai_vs_final_mean: float | None
    heldout_new_mean: float | None
    heldout_previous_mean: float | None


class VersionDice(BaseModel):
    """A model version's drafts against the approved versions, recorded at each approval (AI-vs-final Dice)."""

    model_version_id: int
    number: int
    scans: int = Field(description="approved scans this version pre-annotated")
    ai_vs_final_dice: dict[str, float] = Field(
        description="structure name -> mean Dice of the version's draft vs the approved version, over those scans "
        "(only the structures the version predicted)"
    )
    ai_vs_final_mean: float | None


class ModelRounds(BaseModel):
    """A model of the project, its training rounds, oldest first, and its versions' AI-vs-final Dice at approval."""

    model_id: int
    name: str
    architecture: str
    rounds: list[RoundDice]
    versions: list[VersionDice] = Field(
        description="one entry per version that pre-annotated an approved scan, oldest first; fills at every approval"
    )


class ModelRoundsOut(BaseModel):
    """`GET .../dashboard/model-rounds`: the learning curve of every model of the project."""

    project_id: int
    models: list[ModelRounds]


class CountBy(BaseModel):
    """A count of open findings for one key (a rule id, structure name or severity; null = no structure)."""

    key: str | None
    count: int


class QaOut(BaseModel):
    """`GET .../dashboard/qa`: open QA findings by rule, by structure and by severity (largest first)."""

    project_id: int
    open_findings: int
    scans_with_open_findings: int
    by_rule: list[CountBy]
    by_structure: list[CountBy]
    by_severity: list[CountBy]
    by_status: dict[str, int] = Field(description="all findings per status (open/resolved/dismissed)")
