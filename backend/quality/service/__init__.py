"""Quality: multi-reader sets (blinding, agreement, adjudication, fusion) and QA rules on label versions.

One module per concern: `settings` (the effective quality settings; workflow's settings module validates
them), `readers` (reader sets and submissions), `agreement` (pairwise agreement, adjudication), `blinding` (who
may see whose reading), `fusion` (majority vote / STAPLE into a new head), `qa` (running the rules),
`findings` (reading and resolving what the rules found) and `expected` (which structures QA expects). The names
below are the domain's public surface.
"""

from backend.quality.service.agreement import below_threshold, compute_agreement
from backend.quality.service.blinding import BLINDED_STATUSES, hidden_version_ids, is_blinded, visible_member_version
from backend.quality.service.expected import (
    configured_expected_structures,
    expected_structures,
    labelled_structures,
    resolve_expected_structures,
)
from backend.quality.service.findings import (
    case_ids,
    get_finding,
    list_findings,
    refresh_open_findings,
    scan_task,
    set_finding_status,
)
from backend.quality.service.fusion import (
    FUSION_METHODS,
    FusionPlan,
    FusionResult,
    check_fusion,
    compute_fusion,
    fuse,
    fusion_inputs,
    fusion_version_for_key,
    plan_fusion,
    store_fusion,
)
from backend.quality.service.qa import qa_input, run_qa, run_qa_head
from backend.quality.service.readers import (
    READER_ROLES,
    create_reader_sets,
    get_reader_set,
    is_lead,
    members_of,
    reader_sets_of_scan,
    require_lead,
    submit,
    users_by_id,
)
from backend.quality.service.settings import (
    DEFAULT_AGREEMENT_THRESHOLD,
    DEFAULT_STRUCTURE_THRESHOLDS,
    agreement_threshold,
    qa_config,
)

# One home each, in workflow (below quality): the settings validation and the structure-name map.
from backend.workflow.service import structure_names, validate_settings

__all__ = [
    "BLINDED_STATUSES",
    "DEFAULT_AGREEMENT_THRESHOLD",
    "DEFAULT_STRUCTURE_THRESHOLDS",
    "FUSION_METHODS",
    "READER_ROLES",
    "FusionPlan",
    "FusionResult",
    "agreement_threshold",
    "below_threshold",
    "case_ids",
    "check_fusion",
    "compute_agreement",
    "compute_fusion",
    "configured_expected_structures",
    "create_reader_sets",
    "expected_structures",
    "fuse",
    "fusion_inputs",
    "fusion_version_for_key",
    "get_finding",
    "get_reader_set",
    "hidden_version_ids",
    "is_blinded",
    "is_lead",
    "labelled_structures",
    "list_findings",
    "members_of",
    "plan_fusion",
    "qa_config",
    "qa_input",
    "reader_sets_of_scan",
    "refresh_open_findings",
    "require_lead",
    "resolve_expected_structures",
    "run_qa",
    "run_qa_head",
    "scan_task",
    "set_finding_status",
    "store_fusion",
    "structure_names",
    "submit",
    "users_by_id",
    "validate_settings",
    "visible_member_version",
]
