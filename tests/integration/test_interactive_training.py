"""Fine-tuning the click-guided model as a training job (issue 15 item 1): approved scans only, the simulated
clicker, both versions measured by Dice after three clicks on the held-out scans, the round and the gate recorded;
an interactive model is refused for pre-annotation up front.

The network is the tiny configuration of the serving tests (random init, a handful of steps): these tests check
the job's plumbing and records, not the model's quality (that is `test_interactive_model` and the bench).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest

from backend.core.errors import InvalidInput
from backend.jobs import service as jobs
from backend.models import Job, Project, Scan, ScanTask, TrainingRound
from backend.registry import service as registry
from tests.factories import small_phantom, upload_masks, upload_scan
from tests.integration.test_interactive_api import STRUCTURES, register_model
from tests.integration.worker_stack import Stack, build_stack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """PostgreSQL + Redis and three approved phantom scans (the job runs in this process)."""
    with build_stack(tmp_path_factory.mktemp("interactive-training")) as built:
        lead = built.headers["lead"]
        for seed in range(3):
            phantom = small_phantom(seed=40 + seed, lesion=False)
            scan = upload_scan(built.client, lead, built.project.id, phantom, f"refine-train-{seed}")
            masks = {name: phantom.masks[name] for name in STRUCTURES}
            version = upload_masks(built.client, lead, scan["id"], masks, phantom.affine)
            with built.factory() as db:
                task = db.get(ScanTask, scan["id"]) or ScanTask(scan_id=scan["id"], project_id=built.project.id)
                db.add(task)
                task.state, task.approved_version_id, task.approved_at = "approved", version["id"], datetime.now(UTC)
                db.commit()
        yield built


def test_a_training_job_fine_tunes_the_interactive_model_and_measures_it_with_clicks(stack: Stack) -> None:
    from worker.pipelines import training

    with stack.factory() as db:
        promoted_id = register_model(db, stack.blobs, stack.project.id, name="refine-ft")
        promoted = registry.get_model_version(db, promoted_id)
        model = registry.get_model(db, promoted.model_id)
        assert registry.is_trainable(model.architecture)
        project = db.get(Project, stack.project.id)
        assert project is not None
        job = jobs.launch_training(
            db, project, None, model=model, label_version_ids=None, epochs=1, heldout_fraction=0.34
        )
        db.commit()
        job_id, old_digest = job.id, promoted.weights_digest
    training.run(job_id)
    with stack.factory() as db:
        done = db.get(Job, job_id)
        assert done is not None and done.status == "succeeded", (done.status, done.error) if done else None
        result: dict[str, Any] = dict(done.result)
        new = registry.get_model_version(db, int(result["model_version_id"]))
        assert new.weights_digest != old_digest  # trained from the promoted weights, and changed
        assert new.provenance["base_model_version_id"] == promoted_id
        assert len(new.provenance["train_label_version_ids"]) == 2
        assert len(new.provenance["heldout_label_version_ids"]) == 1
        # Both versions measured the same way: per structure, Dice after three simulated clicks.
        for figures in (result["heldout_new"], result["heldout_previous"]):
            assert figures["clicks"] == 3 and set(figures["per_structure"]) == set(STRUCTURES)
            assert all(0.0 <= d <= 1.0 for d in figures["per_structure"].values())
            assert len(figures["clicker"]["per_structure"]["liver"]["curve"]) == 3
        round_ = db.query(TrainingRound).filter(TrainingRound.job_id == job_id).one()
        assert round_.new_model_version_id == new.id and round_.previous_model_version_id == promoted_id
        # One held-out scan is under the gate's minimum: recorded, not promoted.
        assert round_.promoted is False and "held-out" in round_.decision
        stored = stack.blobs.get_bytes(new.weights_digest)
        assert hashlib.sha256(stored).hexdigest() == new.weights_digest


def test_an_interactive_model_is_refused_for_pre_annotation(stack: Stack) -> None:
    with stack.factory() as db:
        version_id = register_model(db, stack.blobs, stack.project.id, name="refine-pre")
        version = registry.get_model_version(db, version_id)
        model = registry.get_model(db, version.model_id)
        project = db.get(Project, stack.project.id)
        scan_id = db.query(Scan.id).filter(Scan.project_id == stack.project.id).first()
        assert project is not None and scan_id is not None
        with pytest.raises(InvalidInput, match="does not pre-annotate"):
            jobs.launch_preannotation(db, project, None, model=model, version=version, scan_ids=[scan_id[0]])  # type: ignore[arg-type]
