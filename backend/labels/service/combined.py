"""A re-uploaded combined label map as box patches on its base: only what the client changed is rewritten."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore
from backend.imaging import chunks, label_diff
from backend.labels.service.masks import combined_map, entries_by_structure, load_manifest, scan_shape
from backend.labels.service.saves import BoxPatch
from backend.models import LabelVersion, Scan
from backend.projects import service as projects


def patches_from_label_map(
    db: Session,
    blobs: BlobStore,
    scan: Scan,
    base: LabelVersion | None,
    label_map: np.ndarray,
    names: Mapping[int, str],
    *,
    filename: str,
    declared: bool = True,
    given: np.ndarray | None = None,
) -> list[BoxPatch]:
    """Box patches that turn `base` into what the uploaded combined map shows, for the structures it names.

    `base` is the version whose combined map the client was given (None: the scan had none); `given` is that map
    when the caller has it (Fortran order, as combined_map paints it), else it is composed here. When the client
    `declared` the names (label_info), a named structure the base lacks (missing) becomes present even where the
    upload leaves it empty; without label_info an empty structure stays as the base had it.
    """
    structures = projects.structures_of(db, scan.project_id)
    schema_values = {s.name: s.label_value for s in structures}
    uploaded = label_diff.to_schema_values(label_map, names, schema_values)
    if given is None and base is not None:
        given, _ = combined_map(db, blobs, base, memory_order="F")
    elif given is None:
        given = np.zeros(scan_shape(scan), dtype=uploaded.dtype, order="F")
    named = set(names.values())
    parents = {s.name: s.inside for s in structures if s.inside}
    families = {k: v for k, v in label_diff.families(schema_values, parents).items() if k in named}
    allowed = frozenset(schema_values[s] for s in named)
    changes = label_diff.changed_structures(uploaded, given, families, allowed=allowed, name=filename)
    by_id = entries_by_structure(base)
    entries = {s.name: by_id[s.id] for s in structures if s.id in by_id}
    patches: list[BoxPatch] = []
    for structure in sorted(named):
        entry = entries.get(structure)
        present = entry is not None and entry.status == "present" and bool(entry.manifest_digest)
        change = changes.get(structure)
        if change is None:
            if declared and not present:
                patches.append(BoxPatch(structure, (0, 0, 0), np.zeros((1, 1, 1), dtype=bool)))
            continue
        if present and entry is not None and entry.manifest_digest:
            manifest = load_manifest(blobs, entry.manifest_digest)
            box = chunks.read_region(manifest, change.origin, change.size, blobs.get_bytes)
        else:
            box = np.zeros(change.size, dtype=bool)
        box[change.local] = change.value
        patches.append(BoxPatch(structure, change.origin, box))
    return patches
