"""Label versions: immutable per-structure masks with lineage, O(edit) storage and optimistic concurrency."""

from backend.labels.service.combined import patches_from_label_map
from backend.labels.service.drafts import MAX_DRAFT_BYTES, delete_draft, get_draft, save_draft
from backend.labels.service.map_cache import (
    clear_combined_maps,
    keep_after_save,
    keep_combined_map,
    take_combined_map,
)
from backend.labels.service.masks import (
    combined_map,
    default_paint_order,
    entries_by_structure,
    load_manifest,
    read_mask,
    volume_ml,
)
from backend.labels.service.saves import (
    Author,
    BoxPatch,
    MaskBuilder,
    PrebuiltMasks,
    create_version,
    create_version_from_label_map,
    mask_threads,
    prebuild_manifests,
    prebuild_masks,
    save_patch,
)
from backend.labels.service.versions import (
    StructureDiff,
    authors_of,
    diff_versions,
    get_version,
    lineage,
    list_versions,
    structure_entry,
)

__all__ = [
    "MAX_DRAFT_BYTES",
    "Author",
    "BoxPatch",
    "MaskBuilder",
    "PrebuiltMasks",
    "StructureDiff",
    "authors_of",
    "clear_combined_maps",
    "combined_map",
    "create_version",
    "create_version_from_label_map",
    "default_paint_order",
    "delete_draft",
    "diff_versions",
    "entries_by_structure",
    "get_draft",
    "get_version",
    "keep_after_save",
    "keep_combined_map",
    "lineage",
    "list_versions",
    "load_manifest",
    "mask_threads",
    "patches_from_label_map",
    "prebuild_manifests",
    "prebuild_masks",
    "read_mask",
    "save_draft",
    "save_patch",
    "structure_entry",
    "take_combined_map",
    "volume_ml",
]
