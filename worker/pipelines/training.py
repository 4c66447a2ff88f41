"""Training: fine-tune a model on approved label versions with a held-out split; promote only through the gate.

The versions are checked again when the job runs (a scan may have been reopened since the launch): only each
scan's approved version trains. The round records the promotion gate (held-out size, each structure's old/new Dice
against the project's margin, the means); under the auto policy a candidate that passes it is promoted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from backend.core.blobstore import BlobStore, get_blob_store
from backend.core.db import session_scope
from backend.core.errors import InvalidInput
from backend.imaging import chunks, nifti
from backend.jobs import service as jobs
from backend.labels import service as labels
from backend.models import LabelVersion, ModelVersion, TrainingRound
from backend.registry import service as registry
from backend.scans import service as scans
from worker.models.networks import build_network
from worker.models.preprocessing import Preprocessing
from worker.models.training import (
    TrainingConfig,
    TrainingSample,
    dice_per_channel,
    load_weights,
    save_weights,
    train,
)
from worker.pipelines import common, interactive_training
from worker.pipelines.predictors import ModelSpec, predict, spec_of


def run(job_id: int) -> None:
    """Train, evaluate on the held-out split against the promoted version, record the round."""
    common.run_claimed(job_id, _run)


@dataclass(frozen=True)
class _Item:
    version_id: int
    scan_id: int
    image_digest: str
    case_id: str
    manifests: tuple[str | None, ...]


# Fine-tuning promoted weights warms the learning rate up over this share of the steps unless the model's config
# says otherwise (``training.warmup_fraction``): see ``TrainingConfig``.
FINE_TUNE_WARMUP = 0.2


def training_config(model_config: dict[str, object], epochs: int, seed: int, fine_tune: bool = False) -> TrainingConfig:
    """Training hyper-parameters: the model config's "training" section over the defaults (``fine_tune``: starting
    from trained weights, which warms the learning rate up by default)."""
    raw = dict(model_config.get("training", {}) or {})  # type: ignore[call-overload]
    fields: dict[str, object] = {"epochs": epochs, "seed": seed}
    if fine_tune:
        fields["warmup_fraction"] = FINE_TUNE_WARMUP
    if "patch_size" in raw:
        fields["patch_size"] = tuple(int(v) for v in raw["patch_size"])
    for key, cast in (
        ("batch_size", int),
        ("samples_per_volume", int),
        ("learning_rate", float),
        ("warmup_fraction", float),
    ):
        if key in raw:
            fields[key] = cast(raw[key])
    return TrainingConfig(**fields)  # type: ignore[arg-type]


def split_heldout(version_ids: list[int], fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic train/held-out split of version ids (at least one in each part)."""
    order = sorted(version_ids)
    rng = np.random.default_rng(seed)
    rng.shuffle(order)
    n_val = min(len(order) - 1, max(1, round(fraction * len(order))))
    return sorted(order[n_val:]), sorted(order[:n_val])


def _items(db: Session, version_ids: list[int], structures: tuple[str, ...]) -> list[_Item]:
    out = []
    for version_id in version_ids:
        version = labels.get_version(db, version_id)
        scan = scans.get_scan(db, version.scan_id)
        manifests = []
        for name in structures:
            _structure, entry = labels.structure_entry(db, version, name)
            if entry.status != "present":
                raise InvalidInput(f"label version {version_id} ({scan.case_id}) has no {name!r} mask to train on")
            manifests.append(entry.manifest_digest)
        out.append(_Item(version_id, scan.id, scan.image_digest, scan.case_id, tuple(manifests)))
    return out


def _clicked_items(
    db: Session, version_ids: list[int], structures: tuple[str, ...]
) -> list[interactive_training.InteractiveItem]:
    """A click-guided model learns from whatever structures a version holds (a missing one is not drawn)."""
    out = []
    for version_id in version_ids:
        version = labels.get_version(db, version_id)
        scan = scans.get_scan(db, version.scan_id)
        manifests = {}
        for name in structures:
            _structure, entry = labels.structure_entry(db, version, name)
            if entry.status == "present" and entry.manifest_digest is not None:
                manifests[name] = entry.manifest_digest
        if not manifests:
            raise InvalidInput(f"label version {version_id} ({scan.case_id}) holds none of the model's structures")
        out.append(interactive_training.InteractiveItem(version_id, scan.case_id, scan.image_digest, manifests))
    return out


def _sample(blobs: BlobStore, item: _Item) -> TrainingSample:
    loaded = nifti.load_nifti_bytes(blobs.get_bytes(item.image_digest), f"{item.case_id}.nii.gz")
    masks = []
    for digest in item.manifests:
        assert digest is not None
        masks.append(chunks.assemble_mask(labels.load_manifest(blobs, digest), blobs.get_bytes))
    return TrainingSample(volume=loaded.data, affine=loaded.geometry.affine, masks=np.stack(masks))


def _heldout_metrics(
    spec: ModelSpec, blobs: BlobStore, samples: list[TrainingSample], structures: tuple[str, ...]
) -> dict[str, object]:
    """Mean and per-structure Dice of a model version on held-out samples (PanTS empty-mask policy)."""
    per_case = []
    for sample in samples:
        probs = predict(spec, blobs, sample.volume, sample.affine)
        per_case.append(dice_per_channel(probs > 0.5, sample.masks))
    per_structure = {name: float(np.mean([case[i] for case in per_case])) for i, name in enumerate(structures)}
    return {"mean_dice": float(np.mean(list(per_structure.values()))), "per_structure": per_structure}


def _human_revised(db: Session, version: LabelVersion) -> bool:
    """Whether a human edited this lineage after a model drafted it."""
    chain = labels.lineage(db, version)
    kinds = [v.kind for v in reversed(chain)]
    return "model" in kinds and "human" in kinds[kinds.index("model") :]


def _ai_vs_final(db: Session, blobs: BlobStore, previous_id: int | None, version_ids: list[int]) -> dict[str, float]:
    """Mean Dice per structure between the previous model's prediction and the final label version (only the
    structures the prediction predicted, not those its label version inherited from its parent)."""
    if previous_id is None:
        return {}
    scores: dict[str, list[float]] = {}
    for version_id in version_ids:
        final = labels.get_version(db, version_id)
        drafts = registry.latest_predictions(db, final.scan_id, [previous_id])
        if not drafts:
            continue
        draft = labels.get_version(db, drafts[0].label_version_id)
        predicted = set(registry.predicted_structures(db, draft) or [])
        for row in labels.diff_versions(db, blobs, draft, final):
            if row.dice is not None and row.structure in predicted:
                scores.setdefault(row.structure, []).append(row.dice)
    return {name: float(np.mean(values)) for name, values in scores.items()}


def _cut(text: str, limit: int = 500) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _decide(
    db: Session, policy: str, version: ModelVersion, actor_user_id: int | None
) -> tuple[bool, str, dict[str, object]]:
    """Promote a freshly trained version only under the auto policy and when it passes the promotion gate;
    returns (promoted, the decision line, the gate as evaluated)."""
    check = registry.promotion_check(db, version)
    if not check.allowed:
        return False, _cut(f"not promoted: {check.reason}"), check.gate
    if policy != "auto":
        return False, _cut(f"not promoted (manual policy; a lead may promote it): {check.reason}"), check.gate
    registry.promote(db, version, actor_user_id, reason=f"auto policy: {check.reason}")
    return True, _cut(f"promoted automatically (auto policy): {check.reason}"), check.gate


def _run(claimed: common.Claimed) -> None:
    blobs = get_blob_store()
    reporter = common.Reporter(claimed)
    with session_scope() as db:
        job = common.owned_job(db, claimed)
        done = db.scalar(select(TrainingRound).where(TrainingRound.job_id == job.id))
        if done is not None:  # a previous attempt committed its round but died before finishing the job
            jobs.succeed(db, job, {"training_round_id": done.id, "model_version_id": done.new_model_version_id})
            return
        params = job.params
        model = registry.get_model(db, int(params["model_id"]))
        # Launched on approved versions; one that is no longer its scan's approved version fails the job, named.
        registry.check_training_versions(db, model.project_id, list(params["label_version_ids"]))
        previous = registry.get_model_version(db, job.model_version_id) if job.model_version_id else None
        structures = tuple(model.structures)
        train_ids, val_ids = split_heldout(
            list(params["label_version_ids"]), float(params["heldout_fraction"]), int(params.get("seed", 0))
        )
        architecture, config, prep = model.architecture, dict(model.config), dict(model.preprocessing)
        if architecture == interactive_training.ARCHITECTURE:
            clicks = (_clicked_items(db, train_ids, structures), _clicked_items(db, val_ids, structures))
        else:
            train_items, val_items = _items(db, train_ids, structures), _items(db, val_ids, structures)
        new_spec_base = spec_of(model, previous) if previous else None
        previous_digest = previous.weights_digest if previous is not None else None
        model_id = model.id
    if architecture == interactive_training.ARCHITECTURE:
        # A click-guided model: trained with the simulated clicker and measured by Dice after three clicks.
        initial = previous_digest if params.get("init", "promoted") == "promoted" else None
        outcome = interactive_training.train_and_measure(
            blobs,
            config=config,
            structures=structures,
            train_items=clicks[0],
            val_items=clicks[1],
            initial=blobs.get_bytes(initial) if initial else None,
            previous_weights=blobs.get_bytes(previous_digest) if previous_digest else None,
            epochs=int(params["epochs"]),
            seed=int(params.get("seed", 0)),
            progress=lambda percent, message: reporter.update(percent, message),
            should_stop=reporter.should_stop,
        )
        _record(
            claimed,
            blobs,
            model_id,
            previous,
            train_ids,
            val_ids,
            outcome.weights,
            outcome.heldout_new,
            outcome.heldout_previous,
            int(params["epochs"]),
        )
        return
    reporter.update(2, f"loading {len(train_items) + len(val_items)} scans", force=True)
    train_samples = [_sample(blobs, item) for item in train_items]
    val_samples = [_sample(blobs, item) for item in val_items]
    network = build_network(architecture, config, len(structures))
    fine_tune = params.get("init", "promoted") == "promoted" and previous is not None and bool(previous.weights_digest)
    if fine_tune:
        assert previous is not None and previous.weights_digest is not None
        load_weights(network, blobs.get_bytes(previous.weights_digest))
    epochs = int(params["epochs"])
    result = train(
        network,
        train_samples,
        val_samples,
        Preprocessing.from_json(prep),
        training_config(config, epochs, int(params.get("seed", 0)), fine_tune=fine_tune),
        progress=lambda epoch, loss: reporter.update(
            5 + 80 * epoch / epochs, f"epoch {epoch}/{epochs} loss {loss:.4f}"
        ),
        should_stop=reporter.should_stop,
    )
    heldout_new = {
        "mean_dice": float(result.mean_val_dice),
        "per_structure": {name: float(result.val_dice[i]) for i, name in enumerate(structures)},
    }
    reporter.update(88, "evaluating the promoted version on the same held-out scans", force=True)
    heldout_previous = _heldout_metrics(new_spec_base, blobs, val_samples, structures) if new_spec_base else {}
    _record(
        claimed,
        blobs,
        model_id,
        previous,
        train_ids,
        val_ids,
        save_weights(network),
        heldout_new,
        heldout_previous,
        result.epochs_run,
    )


def _record(
    claimed: common.Claimed,
    blobs: BlobStore,
    model_id: int,
    previous: ModelVersion | None,
    train_ids: list[int],
    val_ids: list[int],
    weights: bytes,
    heldout_new: dict[str, object],
    heldout_previous: dict[str, object],
    epochs_run: int,
) -> None:
    """Store the new version, the training round and the gate's decision; finish the job."""
    with session_scope() as db:
        job = common.closing_job(db, claimed)
        model = registry.get_model(db, model_id)
        revised = sum(_human_revised(db, labels.get_version(db, vid)) for vid in train_ids + val_ids)
        new_version = registry.add_version(
            db,
            blobs,
            model,
            weights=weights,
            provenance={
                "job_id": job.id,
                "train_label_version_ids": train_ids,
                "heldout_label_version_ids": val_ids,
                "epochs": epochs_run,
                "base_model_version_id": previous.id if previous else None,
            },
            validation=heldout_new,
            actor_user_id=job.created_by,
        )
        round_ = registry.record_training_round(
            db,
            model_id=model.id,
            job_id=job.id,
            new_model_version_id=new_version.id,
            previous_model_version_id=previous.id if previous else None,
            train_versions=len(train_ids),
            heldout_versions=len(val_ids),
            scans_revised=revised,
            ai_vs_final_dice=_ai_vs_final(db, blobs, previous.id if previous else None, train_ids + val_ids),
            heldout_new=heldout_new,
            heldout_previous=heldout_previous,
        )
        round_.promoted, round_.decision, round_.gate = _decide(db, model.promotion_policy, new_version, job.created_by)
        jobs.succeed(
            db,
            job,
            {
                "model_version_id": new_version.id,
                "training_round_id": round_.id,
                "heldout_new": heldout_new,
                "heldout_previous": heldout_previous,
                "promoted": round_.promoted,
                "decision": round_.decision,
                "gate": round_.gate,
            },
            message=round_.decision,
        )
